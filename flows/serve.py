"""Serve the flows from one long-running process (no work pool, no worker): the single-machine schedule.

    python -m flows.serve                    # nightly retrain at 02:00 UTC + an on-demand incremental
    python -m flows.serve --cron "*/30 * * * *"

Needs a Prefect API (`prefect server start --host 127.0.0.1`, then
`export PREFECT_API_URL=http://127.0.0.1:4200/api`). Runs triggered from the UI or with
`prefect deployment run retrain/nightly-serve` execute in this process's machine, in `--repo`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve

from flows.incremental import incremental
from flows.retrain import retrain


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=".")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cron", default="0 2 * * *", help="schedule of the retrain flow (UTC)")
    args = ap.parse_args(argv)
    repo = str(Path(args.repo).resolve())
    nightly = retrain.to_deployment(name="nightly-serve", cron=args.cron, parameters={"repo": repo,
                                    "params": args.params}, tags=["gensar", "retrain"], concurrency_limit=1)
    on_batch = incremental.to_deployment(name="on-batch-serve", parameters={"repo": repo, "params": args.params},
                                         tags=["gensar", "incremental"], concurrency_limit=1)
    serve(nightly, on_batch)


if __name__ == "__main__":
    main()
