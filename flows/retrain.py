"""Flow `retrain`: snapshot -> every dvc.yaml stage -> quality gate -> publish.

    python -m flows.retrain                      # this repository, params.yaml
    python -m flows.retrain --repo /path --no-publish

Stages run in dvc.yaml order (ingest, validate, embed, collab, identifiers, train, export, evaluate);
each is skipped when DVC says it is up to date, so a run with nothing new only checks hashes. The run
ends Failed when a stage fails or the quality gate rejects the candidate; then published/ is unchanged.
A run killed during training resumes from the train stage's last checkpoint when it is run again
(models/t5 is a `persist` output, the train stage picks up its checkpoints).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from gensar.config import set_params
from tasks.data import snapshot
from tasks.release import publish, quality_gate, report
from tasks.stages import read_pipeline, task_for
from tasks.versioning import dvc_add


def _run_name() -> str:
    params = flow_run.parameters or {}
    repo = Path(params.get("repo", ".")).resolve().name
    return f"retrain-{repo}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"


def run_stages(repo: str, params: str, force: bool = False, after=None) -> list[dict]:
    """Every dvc.yaml stage in order, each as its own task (skipped when up to date). Each task waits
    for the one before (`wait_for`), so the run page draws the pipeline: ingest -> ... -> evaluate."""
    runs, previous = [], after
    for stage in read_pipeline(repo):
        state = task_for(stage)(repo, stage, params, force, wait_for=[previous] if previous else None,
                                return_state=True)
        runs.append(state.result())      # a failed stage raises here and fails the flow
        previous = state
    return runs


@flow(name="retrain", flow_run_name=_run_name, log_prints=True)
def retrain(repo: str = ".", params: str = "params.yaml", refresh_snapshot: bool = True,
            publish_model: bool = True, force: bool = False, note: str = "") -> dict:
    """Full pipeline on the repository `repo` (its params.yaml, dvc.yaml and DVC remote)."""
    log = get_run_logger()
    repo = str(Path(repo).resolve())
    log.info("retrain: repository %s, params %s", repo, params)
    snapshot(repo, params, refresh_snapshot)
    if set_params(Path(repo) / params, {"incremental.enabled": False}):   # a retrain starts from scratch
        log.info("retrain: incremental.enabled set to false in %s (recorded with the version)", params)
    dvc_add(repo, "data")
    runs = run_stages(repo, params, force=force)
    report(repo, runs)
    ran = [r["stage"] for r in runs if not r["skipped"]]
    log.info("retrain: stages run: %s; skipped: %s", ", ".join(ran) or "none",
             ", ".join(r["stage"] for r in runs if r["skipped"]) or "none")
    result = {"stages": runs, "published": None}
    if not publish_model:
        return result
    if not ran and (Path(repo) / "published" / "version.json").exists():
        log.info("retrain: nothing changed since the published version, nothing to publish")
        return result
    gate_result = quality_gate(repo, params)
    result["published"] = publish(repo, gate_result, "retrain", flow_run.name or "local", note)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="GenSAR retrain flow (Prefect)")
    ap.add_argument("--repo", default=".")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--keep-snapshot", action="store_true", help="do not refresh data/ from data.source")
    ap.add_argument("--no-publish", action="store_true", help="stop after the stages (no gate, no publish)")
    ap.add_argument("--force", action="store_true", help="run every stage even when DVC says up to date")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = retrain(repo=args.repo, params=args.params, refresh_snapshot=not args.keep_snapshot,
                  publish_model=not args.no_publish, force=args.force)
    print(json.dumps({"stages": [(r["stage"], "skipped" if r["skipped"] else f"{r['seconds']} s")
                                 for r in out["stages"]],
                      "published": out["published"]}, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
