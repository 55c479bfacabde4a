"""Tasks around the raw snapshot in `data/`: refresh it, check a new batch in a scratch copy, append it."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from gensar.config import load_params
from gensar.data.snapshot import BatchError, add_batch, make_snapshot
from gensar.stages.validate import data_docs_path, rejected_report_path
from tasks import notify, run_logger
from tasks.stages import call_stage_main, stage_argv


class InvalidBatch(ValueError):
    """A new batch does not pass ingestion + validation; nothing was changed."""


@task(name="snapshot", retries=2, retry_delay_seconds=[5, 30], cache_policy=NONE)
def snapshot(repo: str, params: str = "params.yaml", refresh: bool = True) -> dict:
    """(Re)make `data/` from `data.source`, keeping incremental batches already appended to it.

    The new snapshot is built beside the old one and swapped in whole. When the source did not change
    the content is identical, `dvc add data` finds the same hash and every stage is skipped.
    """
    log = run_logger(__name__)
    repo = Path(repo)
    data = repo / "data"
    if data.exists() and not refresh:
        log.info("snapshot: keeping %s as it is (refresh=False)", data)
        return {"refreshed": False}
    cfg = load_params(repo / params).data
    source = cfg.source
    if source != "synthetic" and not Path(source).is_absolute():
        cfg = type(cfg)(**{**cfg.__dict__, "source": str((repo / source).resolve())})
    make_snapshot(cfg, data, keep_batches=True)
    n_batches = len(list((data / "batches").iterdir())) if (data / "batches").is_dir() else 0
    log.info("snapshot: %s refreshed from %s (%d incremental batches kept)", data, source, n_batches)
    return {"refreshed": True, "source": source, "batches": n_batches}


@task(name="validate-batch", cache_policy=NONE, timeout_seconds=3600)
def validate_batch(repo: str, batch: str, name: str, params: str = "params.yaml") -> dict:
    """Ingest + validate snapshot + batch in a scratch directory; raise InvalidBatch if it fails.

    Runs the same `ingest` and `validate` stage commands as dvc.yaml, from a scratch copy of the repo's
    data, so an invalid batch leaves `data/`, the workspace and everything published untouched. The
    validation report is attached to the flow run as a markdown artifact either way.
    """
    log = run_logger(__name__)
    repo, batch = Path(repo).resolve(), Path(batch).resolve()
    if not batch.exists():
        raise FileNotFoundError(f"incremental: batch {batch} does not exist")
    scratch = Path(tempfile.mkdtemp(prefix="gensar-batch-"))
    t0 = time.perf_counter()
    try:
        shutil.copytree(repo / "data", scratch / "data")
        shutil.copy2(repo / params, scratch / params)
        try:
            add_batch(batch, scratch / "data", name=name)
        except BatchError as e:
            notify("gensar.batch.rejected", repo, {"batch": str(batch), "name": name, "error": str(e)})
            raise InvalidBatch(f"{e}; data/ and the published model are unchanged") from None
        error = None
        summaries = {}
        for stage in ("ingest", "validate"):
            argv = stage_argv(repo, stage) + (["--params", params] if params != "params.yaml" else [])
            log.info("validate-batch: %s of snapshot + batch '%s' in %s", stage, name, scratch)
            try:
                summaries[stage] = call_stage_main(scratch, stage, argv)
            except Exception as e:  # noqa: BLE001 - any failure rejects the batch; the message names file/field/row
                error = f"{stage}: {type(e).__name__}: {e}"
                break
        # a failed validation writes its reasons and examples to a report of its own
        report = _read_json(scratch / "reports" / "validation.json") \
            or _read_json(rejected_report_path(scratch / "reports" / "validation.json"))
        if error is None and isinstance(report, dict) and report.get("success") is False:
            error = f"validate: {report.get('error') or 'the validation report says success=false'}"
        if error is None:
            error, summaries["batch_rows"] = _batch_bad_rows(repo, scratch, name, params)
        validation = scratch / "reports" / "validation.json"
        docs = data_docs_path(rejected_report_path(validation))        # a failed validation's docs
        docs = docs if docs.is_dir() else data_docs_path(validation)
        kept = repo / "reports" / "batch-validation" / name
        if docs.is_dir():                      # the scratch copy goes away: keep its data docs
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(docs, kept)
        create_markdown_artifact(
            _batch_markdown(batch, name, error, report, summaries)
            + (f"\nGreat Expectations data docs: file://{kept / 'index.html'}\n" if docs.is_dir() else ""),
            key="batch-validation", description=f"validation of batch {name}")
        if error:
            log.error("validate-batch: batch %s is INVALID, nothing changed: %s", batch, error)
            notify("gensar.batch.rejected", repo, {"batch": str(batch), "name": name, "error": error[:2000]})
            raise InvalidBatch(f"batch {batch} is invalid and was not added (data/ and the published "
                               f"model are unchanged): {error}")
        log.info("validate-batch: batch %s is valid (%.1f s)", batch, time.perf_counter() - t0)
        return {"batch": str(batch), "name": name, "summaries": summaries}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@task(name="add-batch", retries=2, retry_delay_seconds=[2, 10], cache_policy=NONE)
def append_batch(repo: str, batch: str, name: str) -> str:
    target = add_batch(batch, Path(repo) / "data", name=name)
    run_logger(__name__).info("add-batch: %s appended to the snapshot as %s", batch, target)
    return str(target)


def _batch_bad_rows(repo: Path, scratch: Path, name: str, params: str) -> tuple[str | None, dict]:
    """The validate stage bounds the share of bad rows over the whole snapshot, where a small bad batch
    disappears; here the batch alone must stay within `validate.max_bad_row_share`: the events it added
    to the quarantine, per interaction of the batch (paper-mode twin events make this at most 2x strict)."""
    ingest = _read_json(scratch / "reports" / "ingest.json") or {}
    rows = next((b.get("interactions") for b in ingest.get("batches", []) if b.get("name") == name), None)
    after = (_read_json(scratch / "metrics" / "data.json") or {}).get("quarantined_rows")
    before = (_read_json(repo / "metrics" / "data.json") or {}).get("quarantined_rows", 0)
    if not rows or after is None:
        return None, {"interactions": rows}
    bad = max(0, int(after) - int(before))
    limit = load_params(repo / params).validate.max_bad_row_share
    info = {"interactions": rows, "quarantined_events": bad, "share": round(bad / rows, 4), "limit": limit}
    if bad / rows <= limit:
        return None, info
    reasons = {}
    q = scratch / "prepared" / "quarantine.parquet"
    if q.exists():
        import pandas as pd

        reasons = pd.read_parquet(q)["reason"].value_counts().head(5).to_dict()
    return (f"validate: {bad} events of batch '{name}' ({rows} interactions) were quarantined, "
            f"{bad / rows:.1%} > validate.max_bad_row_share {limit:.1%}; reasons: {reasons}"), info


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _batch_markdown(batch, name, error, report, summaries) -> str:
    lines = [f"# Batch `{name}`: {'INVALID' if error else 'valid'}", "", f"Source: `{batch}`", ""]
    if error:
        lines += ["**Rejected; data/ and the published model are unchanged.**", "", "```", error, "```", ""]
    for stage, summary in summaries.items():
        lines += [f"- {stage}: `{json.dumps(summary, default=str)[:800]}`"]
    if isinstance(report, dict) and report.get("success") is False:
        q = report.get("quarantine") or {}
        if q.get("reasons"):
            lines += ["", "## Why", "", "| reason | rows |", "| --- | --- |"]
            lines += [f"| {k} | {v:,} |" for k, v in q["reasons"].items()]
        for reason, rows in (report.get("examples") or {}).items():
            lines += ["", f"Examples of `{reason}`:", "", "| " + " | ".join(rows[0]) + " |",
                      "|" + " --- |" * len(rows[0])] + ["| " + " | ".join(map(str, r.values())) + " |" for r in rows]
        for k, d in (report.get("drop_vs_previous") or {}).items():
            if isinstance(d, dict):
                lines.append(f"- {k}: {d['before']:,} -> {d['after']:,} (-{100 * d['drop']:.1f}%)")
    if report is not None:
        text = json.dumps(report, indent=1, default=str)
        lines += ["", "## Validation report", "", "```json", text[:20000], "```"]
    return "\n".join(lines) + "\n"
