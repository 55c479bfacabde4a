"""Stage `ingest`: raw snapshot folder -> prepared/ingested/{items,interactions,queries}.parquet.

Reads the snapshot with the adapter of its format (`gensar.data.sources`), cleans item text and
derives Amazon queries. Outputs are written atomically and only after the whole read succeeded,
so a failing run leaves the previous outputs untouched.
"""
from __future__ import annotations

import argparse
import logging
import time

from gensar.config import Params, load_params
from gensar.data.contract import DataError
from gensar.data.sources import read_source
from gensar.io import atomic_path, write_json
from gensar.logs import setup_logging

logger = logging.getLogger(__name__)


def run(params: Params, snapshot: str, out: str,
        report: str) -> dict:
    """Ingest `snapshot` into the canonical tables (no split yet); returns the ingestion summary."""
    t0 = time.perf_counter()
    tables = read_source(snapshot, params.data, params.queries)
    with atomic_path(out) as tmp:
        tables.write(tmp)
    summary = {
        **tables.info,
        "items": len(tables.items), "interactions": len(tables.interactions), "queries": len(tables.queries),
        "out": str(out),
    }
    write_json(summary, report)   # no wall time in a DVC-tracked output: the same input, the same bytes
    seconds = round(time.perf_counter() - t0, 2)
    logger.info("ingested %s in %.1f s: %d items, %d events, %d queries -> %s", snapshot, seconds, summary["items"],
                summary["interactions"], summary["queries"], out)
    return {**summary, "seconds": seconds}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--snapshot", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", required=True)
    args = ap.parse_args(argv)
    setup_logging()
    try:
        return run(load_params(args.params), args.snapshot, args.out, args.report)
    except DataError as e:  # a data problem: show the message, not a traceback
        raise SystemExit(f"ingest failed: {e}") from None


if __name__ == "__main__":
    main()
