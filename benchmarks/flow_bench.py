"""Wall time of the flows on real data, and what a user sees when a run is refused.

    .venv/bin/python benchmarks/flow_bench.py --source ../shared/data/office --workdir /tmp/gensar_flow_bench

In a throw-away git + DVC copy of the pipeline (never this checkout), with `--frac` (5%) of the users
held out as the new batch:

1. retrain, full (every stage runs; publishes gensar-onnx@v1.0.0)
2. retrain, nothing new (every stage should be skipped)
3. incremental with the held-out batch (identifiers for new items only, warm-start training)
4. retrain with an impossible gate (tolerance -1) after re-evaluation: Failed, published model stays
5. incremental with an invalid batch (interactions with unknown items): Failed before training

Params: params.yaml with the CPU overrides below (a CPU smoke configuration, not a quality run) and any
`--set section.key=value`. Prints a markdown table; the first flow call's temporary Prefect server
start is timed separately.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from flows_support import deep_update, make_repo, snapshot_hashes, split_batch

# CPU smoke configuration on office: every stage runs for real, with few epochs and a user sample
CPU = {
    "collab": {"epochs": 3, "patience": 1, "device": "cpu", "cpu_threads": 1},
    "ids": {"epochs": 30, "device": "cpu", "cpu_threads": 1},
    "embed": {"device": "cpu", "cpu_threads": 1},
    # each example drawn with these weights per epoch: ~1.5k examples/epoch on office; a full run trains
    # 5 epochs from scratch, the incremental run warm-starts for --train-epochs (1)
    "train": {"epochs": 5, "patience": 5, "eval_users": 50, "eval_beams": 10, "device": "cpu", "cpu_threads": 1,
              "precision": "fp32",
              "tasks": {"rec": 0.005, "search": 0.005, "query": 0.002, "adhoc": 0.002, "align": 0.002}},
    "evaluate": {"max_users": 100, "beams": 20, "baselines": ["popularity", "sasrec"], "device": "cpu"},
}


def parse_set(items: list[str]) -> dict:
    out: dict = {}
    for kv in items:
        key, _, value = kv.partition("=")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def timed(fn, **kw):
    t0 = time.perf_counter()
    state = fn(**kw, return_state=True)
    seconds = time.perf_counter() - t0
    result = state.result(raise_on_failure=False)
    return seconds, state, result


def describe(state, result) -> tuple[str, str]:
    if state.is_completed():
        ran = [s["stage"] for s in result["stages"] if not s["skipped"]]
        pub = result.get("published")
        return (", ".join(ran) or "none (all skipped)",
                f"Completed; {'published ' + pub['tag'] if pub else 'nothing published'}")
    return "-", f"{state.type.value}: {state.message or result}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "office"))
    ap.add_argument("--workdir", default="/tmp/gensar_flow_bench")
    ap.add_argument("--frac", type=float, default=0.05, help="share of users held out as the new batch")
    ap.add_argument("--train-epochs", type=int, default=1, help="warm-start epochs of the incremental run")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)   # a busy shared 2-core machine: 1 thread is faster
    from prefect import flow

    from flows.incremental import incremental
    from flows.retrain import retrain

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = Path(args.source).resolve()
    base, batch = split_batch(src, work / "base" / src.name, work / "batch" / f"new{int(args.frac * 100)}pct",
                              args.frac)
    overrides = deep_update(json.loads(json.dumps(CPU)), parse_set(args.set))
    repo = make_repo(work, base, overrides)
    n_batch = len(json.loads(next(batch.glob("*.inter.json")).read_text()))
    n_base = len(json.loads(next(base.glob("*.inter.json")).read_text()))

    @flow(name="warmup")
    def warmup():
        return 1

    t0 = time.perf_counter()
    warmup()
    rows = [("(temporary Prefect server start)", time.perf_counter() - t0, "-", "-")]

    def record(label, fn, **kw):
        seconds, state, result = timed(fn, **kw)
        ran, outcome = describe(state, result)
        rows.append((label, seconds, ran, outcome))
        print(f"{label}: {seconds:.1f} s; {outcome}", flush=True)
        return seconds, state, result

    full, _, _ = record("retrain, full", retrain, repo=str(repo))
    record("retrain, nothing new", retrain, repo=str(repo))
    inc, _, _ = record(f"incremental, {args.frac:.0%} new users ({n_batch} of {n_base + n_batch})",
                       incremental, batch=str(batch), repo=str(repo), train_epochs=args.train_epochs)

    published = snapshot_hashes(repo)["published"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    saved = (repo / "params.yaml").read_text()
    params["gate"]["tolerance"] = -1.0
    params["evaluate"]["seed"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    record("retrain, gate fails (tolerance -1)", retrain, repo=str(repo))
    (repo / "params.yaml").write_text(saved)
    if snapshot_hashes(repo)["published"] != published:
        rows[-1] = (*rows[-1][:3], rows[-1][3] + " **published/ CHANGED**")

    bad = work / "bad_batch"
    bad.mkdir()
    name = src.name
    (bad / f"{name}.inter.json").write_text(json.dumps({f"new_user_{u}": [f"ghost_{u}_{i}" for i in range(6)]
                                                        for u in range(50)}))
    (bad / f"{name}.item.json").write_text("{}")
    before = snapshot_hashes(repo)
    record("incremental, invalid batch (50 new users, unknown items)", incremental, batch=str(bad),
           repo=str(repo))
    if snapshot_hashes(repo) != before:
        rows[-1] = (*rows[-1][:3], rows[-1][3] + " **workspace CHANGED**")

    print(f"\nflows on {src} (CPU, torch threads 1), workdir {work}; overrides {json.dumps(overrides)}\n")
    print("| run | wall s | stages run | outcome |\n| --- | --- | --- | --- |")
    for label, seconds, ran, outcome in rows:
        print(f"| {label} | {seconds:.1f} | {ran} | {outcome.replace('|', '/')[:400]} |")
    print(f"\nincremental / full: {inc / full:.1%} (goal < 40%)")


if __name__ == "__main__":
    main()
