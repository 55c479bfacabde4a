"""Flow `incremental`: a new batch of interactions and items -> validated -> appended -> stages -> gate -> publish.

    python -m flows.incremental --batch /path/to/batch_folder_or_file [--name week47]

1. validate-batch: ingest + validate of snapshot + batch in a scratch directory. An invalid batch fails
   the flow here, before any training, with the validation report as an artifact; data/, the workspace
   and published/ are untouched.
2. add-batch: the batch is appended to the snapshot as data/batches/<name>/ and `dvc add data`.
3. `incremental.enabled: true` (and `incremental.train_epochs`) written into params.yaml, then the
   dvc.yaml stages, each skipped when DVC says it is up to date. Two stages run incrementally:
   identifiers keeps every existing item's identifiers and assigns codes to new items only, train
   warm-starts from the current model; embed only encodes texts missing from its cache. The flags
   are params, not command-line overrides, so dvc.lock and the published tag record what ran.
4. quality gate against the published model, then publish a new version.
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

from flows.retrain import run_stages
from gensar.config import set_params
from gensar.data.snapshot import find_batch
from tasks.data import append_batch, validate_batch
from tasks.release import publish, quality_gate, report
from tasks.versioning import dvc_add


def _run_name() -> str:
    params = flow_run.parameters or {}
    name = params.get("name") or Path(str(params.get("batch", "batch"))).stem
    return f"incremental-{name}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"


@flow(name="incremental", flow_run_name=_run_name, log_prints=True)
def incremental(batch: str, repo: str = ".", params: str = "params.yaml", name: str = "",
                train_epochs: int = 0, publish_model: bool = True, note: str = "") -> dict:
    """Validate and append `batch` (a file or folder in the snapshot's format), retrain incrementally.

    train_epochs: epochs of the warm-started training (0: train.epochs of params.yaml); a warm start
    needs far fewer epochs than training from scratch.
    """
    log = get_run_logger()
    repo_path = Path(repo).resolve()
    repo = str(repo_path)
    name = name or Path(batch).stem
    if not (repo_path / "data").is_dir():
        raise FileNotFoundError(f"incremental: {repo_path / 'data'} does not exist; run the retrain flow first")
    same = find_batch(batch, repo_path / "data") if Path(batch).exists() else None
    if same is not None:  # a batch is identified by its content: re-sent, it is a no-op
        log.warning("incremental: batch %s has the same content as %s, added before; nothing to do", batch, same)
        return {"stages": [], "published": None, "batch": name, "already_added_as": same.name}
    validate_batch(repo, batch, name, params)
    append_batch(repo, batch, name)
    dvc_add(repo, "data")
    # the warm start is a setting of params.yaml, recorded in dvc.lock and the published version:
    # identifiers keep every existing item's codes, train starts from the current model
    updates = {"incremental.enabled": True, "incremental.train_epochs": max(0, train_epochs)}
    if set_params(repo_path / params, updates):
        log.info("incremental: %s set in %s", updates, params)
    runs = run_stages(repo, params)
    report(repo, runs)
    result = {"stages": runs, "published": None, "batch": name}
    if publish_model:
        gate_result = quality_gate(repo, params)
        result["published"] = publish(repo, gate_result, "incremental", flow_run.name or "local",
                                      note or f"batch {name}")
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="GenSAR incremental flow (Prefect)")
    ap.add_argument("--batch", required=True, help="a file or folder in the snapshot's format")
    ap.add_argument("--name", default="", help="batch name (default: the file/folder name)")
    ap.add_argument("--repo", default=".")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--train-epochs", type=int, default=0, help="warm-start epochs (0: params.yaml)")
    ap.add_argument("--no-publish", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = incremental(batch=args.batch, repo=args.repo, params=args.params, name=args.name,
                      train_epochs=args.train_epochs, publish_model=not args.no_publish)
    print(json.dumps({"stages": [(r["stage"], "skipped" if r["skipped"] else f"{r['seconds']} s")
                                 for r in out["stages"]], "published": out["published"]}, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
