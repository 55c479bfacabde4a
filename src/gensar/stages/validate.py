"""Stage `validate`: prepared/ingested -> prepared/canonical (+ quarantine, GX report, statistics).

Structural problems stop the stage (DataError naming file, column and examples); bad rows are
quarantined with a reason, and the stage fails when their share exceeds
`validate.max_bad_row_share`; exact duplicate events are collapsed (quarantined, counted apart). The
stage also fails on empty interactions and when users, items or events drop by more than
`validate.max_drop_share` against the canonical tables it would replace (kept by DVC: `persist`).
A failed validation writes its reasons and examples to `reports/validation.rejected.json`; every
validation renders its Great Expectations suites as data docs in `reports/validation-docs/`. Every output is written only after all checks passed, each one
atomically, so a failing run leaves the previous outputs untouched.
"""
from __future__ import annotations

import argparse
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from gensar.config import Params, load_params
from gensar.data.contract import TABLES, DataError, Tables
from gensar.data.stats import dataset_stats
from gensar.data.validate import (
    check_no_large_drop,
    collect_data_docs,
    table_counts,
    validate_tables,
    write_data_docs,
)
from gensar.io import atomic_path, write_json, write_parquet
from gensar.logs import setup_logging

logger = logging.getLogger(__name__)


def run(params: Params, ingested: str, out: str,
        quarantine: str, report: str,
        stats: str) -> dict:
    """Validate the ingested tables, split them, write canonical tables; returns the statistics."""
    t0 = time.perf_counter()
    rejected = rejected_report_path(report)
    docs = data_docs_path(report)
    with collect_data_docs() as pages:
        try:
            tables = Tables.read(ingested)
            files = {name: str(Path(ingested) / f"{name}.parquet") for name in TABLES}
            canonical, bad_rows, result = validate_tables(tables, params.validate, files)
            if (Path(out) / "interactions.parquet").exists():  # the tables this run would replace
                result["drop_vs_previous"] = check_no_large_drop(
                    table_counts(canonical), table_counts(Tables.read(out)), params.validate.max_drop_share,
                    files["interactions"])
        except DataError as e:  # the previous outputs stay; the reasons go to a report of their own
            write_json({"success": False, "error": str(e), "ingested": str(ingested), **e.details,
                        "data_docs": str(write_data_docs(pages, data_docs_path(rejected))) if pages else None,
                        "rejected_at": datetime.now(UTC).isoformat(timespec="seconds")}, rejected)
            raise
        write_data_docs(pages, docs)      # browsable beside the report (not a DVC output)
    rejected.unlink(missing_ok=True)
    data_stats = dataset_stats(canonical)
    data_stats["quarantined_rows"] = len(bad_rows)
    data_stats["duplicate_events"] = result["quarantine"]["duplicate_events"]
    with atomic_path(out) as tmp:
        canonical.write(tmp)
    write_parquet(bad_rows, quarantine)
    write_json(result, report)
    write_json(data_stats, stats)
    logger.info("validated %s in %.1fs: %d users, %d items, %d events (%d rows quarantined) -> %s",
                ingested, time.perf_counter() - t0, data_stats["users"], data_stats["items"],
                data_stats["events"], len(bad_rows), out)
    return data_stats


def data_docs_path(report: str | Path) -> Path:
    """Where the Great Expectations data docs of a validation go: `reports/validation.json` ->
    `reports/validation-docs/` (index.html)."""
    report = Path(report)
    return report.with_name(f"{report.stem}-docs")


def rejected_report_path(report: str | Path) -> Path:
    """Where a failed validation writes its report: `reports/validation.json` -> `validation.rejected.json`."""
    report = Path(report)
    return report.with_name(f"{report.stem}.rejected{report.suffix}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--ingested", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quarantine", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--stats", required=True)
    args = ap.parse_args(argv)
    setup_logging()
    try:
        return run(load_params(args.params), args.ingested, args.out, args.quarantine, args.report, args.stats)
    except DataError as e:  # a data problem: show the message, not a traceback
        raise SystemExit(f"validate failed: {e}") from None


if __name__ == "__main__":
    main()
