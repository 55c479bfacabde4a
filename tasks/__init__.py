"""Prefect tasks around the core library: thin wrappers, one module per concern."""
from __future__ import annotations

import logging


def notify(event: str, repo, payload: dict) -> None:
    """Emit a Prefect event (`gensar.gate.failed`, `gensar.batch.rejected`) about the repository `repo`:
    an automation routes it to Slack, e-mail or a webhook (docs/orchestration.md, "Being told")."""
    from pathlib import Path

    from prefect.events import emit_event

    repo = Path(repo).resolve()
    emit_event(event=event, resource={"prefect.resource.id": f"gensar.repo.{repo.name}",
                                      "prefect.resource.name": str(repo)}, payload=payload)


def run_logger(name: str):
    """The Prefect run logger inside a flow or task run (its lines show in the UI), else the module's
    standard logger (plain Python, tests of the helpers)."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)
