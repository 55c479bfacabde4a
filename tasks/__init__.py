"""Prefect tasks around the core library: thin wrappers, one module per concern."""
from __future__ import annotations

import logging


def run_logger(name: str):
    """The Prefect run logger inside a flow or task run (its lines show in the UI), else the module's
    standard logger (plain Python, tests of the helpers)."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)
