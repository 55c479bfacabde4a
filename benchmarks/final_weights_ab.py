"""A/B of training-recipe variants judged on their final weights, at a fixed number of epochs.

`recipe_sweep.py` gives every variant the same wall-clock budget on the 2-core machine and reads
validations of 300-1,000 users along the way; single validations there move by about +-.005 NDCG@10,
as much as the levers it compares. This script trains each (variant, seed) for the same number of
epochs (e.g. the steps a CPU budget gives: office rec-only, 36 CPU minutes = 945 steps = 24 epochs)
with cheap validations along the way (`--watch-users`), then scores its *last* weights on many
validation users (`--users`, the same users for every run) with the constrained beam search the
trainer validates with. Runs go as parallel processes (`--jobs`): meant for a GPU machine, where one
tiny T5 leaves the device mostly idle. Variants are `recipe_sweep.VARIANTS`.

    python benchmarks/final_weights_ab.py --work OFFICE_WORK --out runs/ab --epochs 24 \
        --variants rec,rec-cool2,rec-cool5 --seeds 0,1 --users 2000 --jobs 6

Writes `<out>/<variant>-s<seed>/` (model, result.json with the per-epoch curve, train.log) and
`<out>/ab.md` (one row per variant: final rec/search NDCG@10 and Recall@10 per seed and their mean).

Size runs by the beam search, not by training: on the H200, eight runs at once, office rec-only trained
24 epochs in 1.6 minutes each, while one validation of 50 users took 10-13 s (HF `generate`, 20 beams):
2,000 final users need minutes per run (`docs/results.md`, 2026-11-30 fifth session).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lanes import Job, run_in_lanes
from recipe_sweep import VARIANTS


def run_one(args) -> None:
    """Train one (variant, seed), then validate its last weights; writes <out>/result.json."""
    import pandas as pd
    import torch

    from gensar.config import load_params
    from gensar.logs import setup_logging
    from gensar.model.examples import user_events, validation_requests
    from gensar.model.generate import GenSARModel
    from gensar.model.prompts import IdentifierMap
    from gensar.model.t5 import load_model
    from gensar.model.train import pick_device, validate
    from gensar.stages.train import run, validated_behaviors

    setup_logging()
    work, out = Path(args.work), Path(args.out)
    overrides = {**VARIANTS[args.variant], "train.epochs": args.epochs, "train.seed": args.seed,
                 "train.eval_users": args.watch_users, "train.patience": 10_000, "train.max_minutes": 0,
                 "train.eval_every_minutes": 0, "train.eval_every_steps": 0, "train.cpu_threads": args.threads}
    params = load_params(args.params, overrides)
    t0 = time.time()
    summary = run(params, work / "prepared/canonical", work / "ids/gensar", out / "t5", out / "metrics.json",
                  teacher=work / "models/sasrec/model.pt")
    train_s = time.time() - t0
    history = json.loads((out / "t5/history.json").read_text())
    result = {"variant": args.variant, "seed": args.seed, "steps": summary["steps"], "epochs": args.epochs,
              "train_seconds": round(train_s, 1), "overrides": VARIANTS[args.variant],
              "curve": [{k: row.get(k) for k in ("epoch", "step", "train/loss", "lr", "valid/rec/ndcg@10",
                                                 "valid/search/ndcg@10")} for row in history]}
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))   # kept if scoring is cut short
    device = pick_device(params.train.device)
    model, tok, _ = load_model(out / "t5", device)
    last = torch.load(out / "t5/checkpoints/last.pt", map_location=device, weights_only=False)
    model.load_state_dict(last["model"])
    idmap = IdentifierMap.for_training(work / "ids/gensar", params.train)
    tables = work / "prepared/canonical"
    events = user_events(pd.read_parquet(tables / "interactions.parquet"), pd.read_parquet(tables / "queries.parquet"))
    requests = validation_requests(events, args.users, 0, validated_behaviors(params.train.tasks))
    gm = GenSARModel(model, tok, idmap, params.train, beams=params.train.eval_beams, device=device)
    t1 = time.time()
    metrics = validate(gm, requests, 10, params.train.eval_beams, batch=64, show=False)
    result.update({"device": str(device), "requests": len(requests), "score_seconds": round(time.time() - t1, 1),
                   **{f"final/{k}": v for k, v in metrics.items()}})
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))


def table(results: list[dict]) -> str:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["variant"], []).append(r)
    cols = [f"{t}/{m}" for t in ("rec", "search") for m in ("ndcg@10", "recall@10")]
    lines = ["| variant | seeds | steps | " + " | ".join(f"final {c} (per seed; mean)" for c in cols) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    for name, rs in by.items():
        rs = sorted((r for r in rs if any(k.startswith("final/") for k in r)), key=lambda r: r["seed"])
        if not rs:
            continue
        cells = []
        for c in cols:
            vals = [r.get(f"final/{c}") for r in rs]
            vals = [v for v in vals if v is not None]
            cells.append(" / ".join(f"{v:.4f}" for v in vals) + (f"; **{sum(vals) / len(vals):.4f}**" if vals else "-"))
        lines.append(f"| {name} | {','.join(str(r['seed']) for r in rs)} | {rs[0]['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="prepared work dir: prepared/canonical, ids/gensar, models/sasrec")
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--variants", required=True)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--users", type=int, default=2000, help="validation users the final weights are scored on")
    ap.add_argument("--watch-users", type=int, default=50, help="validation users of the per-epoch rows")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    ap.add_argument("--one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        args.variant, args.seed = args.one[0], int(args.one[1])
        return run_one(args)
    names = [v for v in args.variants.split(",") if v]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    out = Path(args.out)
    jobs = []
    for name in names:
        for seed in (int(s) for s in args.seeds.split(",")):
            run_dir = out / f"{name}-s{seed}"
            cmd = [sys.executable, __file__, "--work", args.work, "--out", str(run_dir), "--params", args.params,
                   "--variants", name, "--epochs", str(args.epochs), "--users", str(args.users),
                   "--watch-users", str(args.watch_users), "--threads", str(args.threads), "--one", name, str(seed)]
            jobs.append(Job(f"{name}-s{seed}", cmd, run_dir / "train.log", {"OMP_NUM_THREADS": str(args.threads)}))

    def on_exit(job: Job, code: int, load0: float) -> None:
        results = [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]
        (out / "ab.md").write_text(table(results))

    run_in_lanes(jobs, args.jobs, on_exit, poll_s=2.0)
    print((out / "ab.md").read_text() if (out / "ab.md").exists() else "nothing finished")


if __name__ == "__main__":
    main()
