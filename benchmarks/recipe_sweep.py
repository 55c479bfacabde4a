"""Training-recipe ablation: the same data and identifiers, one variant of `train.*` per run, each
trained for the same wall-clock budget, validated at the same minutes; a table and learning curves.

    python benchmarks/recipe_sweep.py --work OFFICE_WORK --ids OFFICE_WORK/ids/gensar --out runs/sweep \
        --minutes 5 --variants today,level,clicks,constant,combined [--lanes 2]

`--work` is a prepared work dir (the benchmark's: `prepared/canonical`); every variant is a dict of
params overrides on top of `--params` and `--base` (VARIANTS below). `--lanes 2` runs two variants at a
time, each on one thread (two single-thread jobs on two cores; never more jobs than cores). Writes
`<out>/<variant>/` (model, metrics, history), `<out>/sweep.json`, `<out>/sweep.md` (best validation
NDCG@10 of rec and search and the diagnostics at the end, per variant) and `<out>/curves.csv`
(variant, train minutes, validation NDCG@10 rec/search: the learning curves as a DVC plot source).
Variants whose `metrics.json` exists are not rerun.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lanes import Job, run_in_lanes

CLICKS = {"train.history_twins": "rec"}
LEVEL = {"train.id_loss": "level"}
CONSTANT = {"train.schedule": "constant", "train.lr": 2e-3, "train.warmup_steps": 50}
COMBINED = {**LEVEL, **CLICKS, "train.history_len": 10, **CONSTANT}

# "today": the recipe before issue 14: every event of a click shown (paper-mode twins), ~5 events
# (3 clicks = 6 events), full-vocabulary loss, cosine over 10 epochs at lr 1e-3
TODAY = {"train.history_twins": "both", "train.history_len": 3, "train.id_loss": "full",
         "train.schedule": "cosine", "train.lr": 1e-3, "train.warmup_steps": 0, "train.init_codes": False,
         "train.drop_constant_codes": False, "train.batch_size": 256}
REC_ONLY = {"rec": 1.0, "search": 0.0, "query": 0.0, "adhoc": 0.0, "align": 0.3}
TEXT1 = {"rec": 1.0, "search": 1.0, "query": 0.1, "adhoc": 0.1, "align": 0.3}  # params.yaml's tasks since d1a3a66
REC2 = {"rec": 2.0, "search": 1.0, "query": 0.3, "adhoc": 0.3, "align": 0.3}   # params.yaml's tasks before d1a3a66, rec drawn twice
VARIANTS = {
    "today": TODAY,
    "level": {**TODAY, **LEVEL},
    "clicks10": {**TODAY, **CLICKS, "train.history_len": 10},
    "constant": {**TODAY, **CONSTANT},
    "combined": {**TODAY, **COMBINED},
    "combined-h5": {**TODAY, **COMBINED, "train.history_len": 5},
    "combined-h20": {**TODAY, **COMBINED, "train.history_len": 20},
    "combined-codes": {**TODAY, **COMBINED, "train.init_codes": True},
    "combined-codes-drop-d": {**TODAY, **COMBINED, "train.init_codes": True, "train.drop_constant_codes": True},
    "combined-lr5e-3": {**TODAY, **COMBINED, "train.lr": 5e-3},
    "combined-lr1e-3": {**TODAY, **COMBINED, "train.lr": 1e-3},
    "combined-b128": {**TODAY, **COMBINED, "train.batch_size": 128},
    "combined-b512": {**TODAY, **COMBINED, "train.batch_size": 512},
    "combined-isqrt": {**TODAY, **COMBINED, "train.schedule": "inverse_sqrt", "train.lr": 5e-3,
                       "train.warmup_steps": 100},
    "combined-search-twins": {**TODAY, **COMBINED, "train.history_twins": "search"},
    # params.yaml as committed (the recipe of issue 14's first sessions), and with a causal encoder whose
    # rec examples train every click of a history in one pass
    "params": {},
    "causal": {"train.causal": True},
    "causal-rec2": {"train.causal": True, "train.tasks": REC2},
    "causal-rec2-h20": {"train.causal": True, "train.history_len": 20, "train.max_input_tokens": 256,
                        "train.tasks": REC2},
    # recommendation alone (+ item-identifier alignment, as the benchmark's gensar-rec): what limits it once
    # compute does not (issue 14: rec-only flat from minute 21 while its loss falls)
    "dropout1": {"model.dropout": 0.1},   # the joint model as before the default became 0.0 (compare: params)
    "rec": {"train.tasks": REC_ONLY},
    "rec-d0": {"train.tasks": REC_ONLY, "model.dropout": 0.0},
    "rec-d3": {"train.tasks": REC_ONLY, "model.dropout": 0.3},
    "rec-d5": {"train.tasks": REC_ONLY, "model.dropout": 0.5},
    "rec-ls1": {"train.tasks": REC_ONLY, "train.label_smoothing": 0.1},
    "rec-h20": {"train.tasks": REC_ONLY, "train.history_len": 20, "train.max_input_tokens": 256},
    # distillation from SASRec-CE (gensar.model.distill): the teacher's code distribution at each CID position
    "rec-kd5": {"train.tasks": REC_ONLY, "model.dropout": 0.0, "train.distill": 0.5},
    "rec-kd9": {"train.tasks": REC_ONLY, "model.dropout": 0.0, "train.distill": 0.9},
    "rec-kd10": {"train.tasks": REC_ONLY, "train.distill": 1.0},   # the teacher alone at CID positions
    "kd5": {"train.distill": 0.5},
    "kd9": {"train.distill": 0.9},
    "kd10": {"train.distill": 1.0},   # the joint model with the teacher alone at CID positions
    # stronger weight decay (AdamW; params.yaml 0.01): rec-only's validation flattens while its loss still falls
    "rec-wd1": {"train.tasks": REC_ONLY, "train.weight_decay": 0.1},
    # the joint model without the text tasks (next query, ad-hoc query): which task costs joint rec?
    "no-text": {"train.tasks": {**TEXT1, "query": 0.0, "adhoc": 0.0}},
    # lower text rates: the query suggestions kept, fewer of the joint model's passes on them
    "text1": {"train.tasks": TEXT1},
    # which text task costs joint rec at the default rates: each alone at .1 (compare: params)
    "text-query": {"train.tasks": {**TEXT1, "adhoc": 0.0}},
    "text-adhoc": {"train.tasks": {**TEXT1, "query": 0.0}},
    # train.ema with train.eval_raw: every row scores the average and the last step's weights (valid/raw/*),
    # so one lane measures the recipe (raw) and its average, paired
    "ema998": {"train.ema": 0.998, "train.eval_raw": True},
    "text1-ema995": {"train.tasks": TEXT1, "train.ema": 0.995, "train.eval_raw": True},
    # train.cooldown: the constant rate decays linearly to 0 over the last share of the --minutes budget
    "rec-cool2": {"train.tasks": REC_ONLY, "train.cooldown": 0.2},
    "rec-cool5": {"train.tasks": REC_ONLY, "train.cooldown": 0.5},
    "cool2": {"train.cooldown": 0.2},
    "cool5": {"train.cooldown": 0.5},
    "rec2-cool5": {"train.cooldown": 0.5, "train.tasks": REC2},
    # identifiers of another ids.mode: read from <--ids parent>/<mode> (built by the identifiers stage)
    # `independent`: the CID is a 4-level RQ-VAE over the collaborative embedding alone (no shared codes)
    "rec-indep-ids": {"train.tasks": REC_ONLY, "ids.mode": "independent"},
    "indep-ids": {"ids.mode": "independent"},
    # train.item_tokens: history entries also show the item's own token (an input-only embedding per item,
    # the codes being shared by many items); its rows start from SASRec-CE's item vectors, or random
    "items-sasrec": {"train.item_tokens": "sasrec"},
    # with room for the extra token per click: 20 clicks at ~7 tokens pass 128, and the causal rec targets
    # past it are dropped (office: 1,682)
    "items-sasrec-t160": {"train.item_tokens": "sasrec", "train.max_input_tokens": 160},
    "items-random": {"train.item_tokens": "random"},
    # train.history_codes false: a click shows its item token alone (2 tokens instead of 7): cheaper steps,
    # room for longer histories
    "items-only": {"train.item_tokens": "sasrec", "train.history_codes": False},
    "items-only-h20": {"train.item_tokens": "sasrec", "train.history_codes": False, "train.history_len": 20},
    "rec-items-sasrec": {"train.tasks": REC_ONLY, "train.item_tokens": "sasrec"},
    # a deeper model: 4 + 4 layers at the tiny width (each step costs more on the CPU: equal minutes)
    "deep4": {"model.size": "custom", "model.num_layers": 4, "model.num_decoder_layers": 4},
    "combined-rec-search-only": {**TODAY, **COMBINED,
                                 "train.tasks": {"rec": 1.0, "search": 1.0, "query": 0.0, "adhoc": 0.0,
                                                 "align": 0.0}},
}


def variant_job(name: str, overrides: dict, args) -> Job:
    """The training command of one variant: its budget, validations and threads from the sweep's args."""
    out = Path(args.out) / name
    sets = {**overrides, "train.max_minutes": args.minutes, "train.eval_every_minutes": args.eval_minutes,
            "train.epochs": args.epochs, "train.patience": 1000, "train.eval_users": args.eval_users,
            "train.cpu_threads": args.threads, "train.device": "cpu"}
    ids = Path(args.ids).parent / overrides["ids.mode"] if "ids.mode" in overrides else Path(args.ids)
    if not (ids / "identifiers.parquet").exists():
        raise SystemExit(f"{name}: no identifier map at {ids} (build it: python -m gensar.stages.identifiers "
                         f"--set ids.mode=... --out {ids} ...)")
    cmd = [sys.executable, "-m", "gensar.stages.train", "--params", args.params,
           "--canonical", str(Path(args.work) / "prepared/canonical"), "--ids", str(ids),
           "--out", str(out / "t5"), "--metrics", str(out / "metrics.json"), "--live", "",
           "--teacher", str(Path(args.work) / "models/sasrec/model.pt")]
    for k, v in {**json.loads(args.base), **sets}.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    return Job(name, cmd, out / "train.log", {"OMP_NUM_THREADS": str(args.threads),
                                             "MKL_NUM_THREADS": str(args.threads)})


def collect(names: list[str], out: Path) -> dict:
    results = {}
    for name in names:
        path = out / name / "metrics.json"
        if not path.exists():
            continue
        metrics = json.loads(path.read_text())
        history = json.loads((out / name / "t5" / "history.json").read_text())
        results[name] = {"overrides": VARIANTS[name], "metrics": metrics, "history": history,
                         "load": json.loads((out / name / "load.json").read_text())
                         if (out / name / "load.json").exists() else None}
    return results


def to_markdown(results: dict, minutes: float) -> str:
    lines = [f"# Recipe sweep: {minutes:g} training minutes per variant", "",
             ("Best validation row (selection: mean NDCG@10 of rec and search); full ranking over all items. "
              "`acc l0..` = teacher-forced accuracy per identifier depth, `first` = share of targets whose first "
              "code survives the beam, at the last validation."), "",
             ("| variant | steps | ex/s | rec N@10 | rec R@10 | search N@10 | search R@10 | rec acc l0/l1/l2/l3 | "
              "search acc l0/l1/l2/l3 | rec first | search first | load |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m, last = r["metrics"], r["history"][-1]

        def acc(task, last=last):
            return "/".join(f"{last.get(f'valid/{task}/acc/l{t}', float('nan')):.2f}" for t in range(4))
        load = r.get("load") or {}
        lines.append(
            f"| {name} | {m.get('steps')} | {m.get('examples_per_s', 0):.0f} | {m.get('valid/rec/ndcg@10', 0):.4f} | "
            f"{m.get('valid/rec/recall@10', 0):.4f} | {m.get('valid/search/ndcg@10', 0):.4f} | "
            f"{m.get('valid/search/recall@10', 0):.4f} | {acc('rec')} | {acc('search')} | "
            f"{last.get('valid/rec/first_code_in_beam', float('nan')):.3f} | "
            f"{last.get('valid/search/first_code_in_beam', float('nan')):.3f} | "
            f"{load.get('start', float('nan')):.2f}-{load.get('end', float('nan')):.2f} |")
    lines += ["", "Learning curves (validation NDCG@10 rec / search at each validation, by training minutes):", ""]
    for name, r in results.items():
        pts = ", ".join(f"{h['train_minutes']:.1f}: {h.get('valid/rec/ndcg@10', 0):.4f}/"
                        f"{h.get('valid/search/ndcg@10', 0):.4f}" for h in r["history"])
        lines.append(f"- {name}: {pts}")
    return "\n".join(lines) + "\n"


def write_curves(results: dict, path: Path) -> None:
    """`path`: every variant's validations in one CSV; `<path stem>/<variant>.csv`: one file per
    variant (a DVC plot draws one line per file)."""
    head = ["train_minutes", "step", "rec_ndcg10", "search_ndcg10", "loss"]
    rows = {name: [[round(h["train_minutes"], 3), h["step"], round(h.get("valid/rec/ndcg@10", 0), 5),
                    round(h.get("valid/search/ndcg@10", 0), 5), round(h["train/loss"], 5)] for h in r["history"]]
            for name, r in results.items()}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", *head])
        w.writerows([name, *row] for name, rs in rows.items() for row in rs)
    folder = path.with_suffix("")
    folder.mkdir(exist_ok=True)
    for name, rs in rows.items():
        with open(folder / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(head)
            w.writerows(rs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="prepared work dir (prepared/canonical)")
    ap.add_argument("--ids", required=True, help="identifier map folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", default="{}", help="JSON overrides applied to every variant")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per variant")
    ap.add_argument("--eval-minutes", type=float, default=1.67, help="validate every N training minutes")
    ap.add_argument("--eval-users", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=10, help="train.epochs (the cosine's horizon; the budget ends runs first)")
    ap.add_argument("--lanes", type=int, default=1, help="variants trained at once (one thread each when > 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default 2 // lanes)")
    args = ap.parse_args(argv)
    args.threads = args.threads or max(1, 2 // args.lanes)
    out = Path(args.out)
    names = [v for v in args.variants.split(",") if v]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    todo = [n for n in names if not (out / n / "metrics.json").exists()]

    def on_exit(job: Job, code: int, load0: float) -> None:
        (out / job.name / "load.json").write_text(json.dumps({"start": load0, "end": os.getloadavg()[0]}))
        results = collect(names, out)
        (out / "sweep.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "sweep.md").write_text(to_markdown(results, args.minutes))
        write_curves(results, out / "curves.csv")

    run_in_lanes([variant_job(n, VARIANTS[n], args) for n in todo], args.lanes, on_exit)
    print((out / "sweep.md").read_text() if (out / "sweep.md").exists() else "nothing ran")


if __name__ == "__main__":
    main()
