"""Benchmark: GenSAR against the baselines and the published numbers, side by side in one run.

    python benchmarks/benchmark.py --source ../shared/data/office --out benchmarks/out/office [--quick]

In a work dir (default `<out>/work`) it runs the pipeline's own stage functions once for the shared
parts (ingest -> validate -> embed -> collab), builds the candidate lists once, then trains every
generative variant with params overrides (identifiers per `ids.mode`, train per variant) and scores
every model with the same evaluation code (gensar.eval.evaluate) on both protocols:

    sampled  100 candidates (target + 99 negatives): HR@1/5/10, NDCG@5/10  (GenSAR paper protocol)
    full     all items: Recall@5/10, NDCG@5/10                              (TIGER / LC-Rec protocol)

Writes `<out>/benchmark.json` (all metrics, training seconds, sizes, params used) and
`<out>/benchmark.md` (the tables, with the published Beauty full-ranking references beside ours).
Stages whose outputs exist in the work dir are not rerun (delete the work dir to start over), so an
interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
from pathlib import Path

from gensar.config import load_params
from gensar.eval.baselines import HYBRIDS, GenSARRanker, build_baselines
from gensar.eval.evaluate import evaluate_model, prepare_eval_data
from gensar.io import write_json, write_text

logger = logging.getLogger(__name__)

# Generative variants: the same training code, different params. `tasks`: what each is scored on.
NO_TASKS = {"rec": 0.0, "search": 0.0, "query": 0.0, "adhoc": 0.0, "align": 0.0}
VARIANTS = {
    "gensar-joint": {"overrides": {}, "tasks": ("rec", "search")},
    "gensar-rec": {  # GenSAR identifiers, trained on recommendation (+ item-identifier alignment)
        "overrides": {"train.tasks": {**NO_TASKS, "rec": 1.0, "align": 0.3}}, "tasks": ("rec",)},
    "gensar-search": {  # GenSAR identifiers, trained on search data only (+ alignment)
        "overrides": {"train.tasks": {**NO_TASKS, "search": 1.0, "query": 0.1, "adhoc": 0.1, "align": 0.3}},
        "tasks": ("search",)},
    "tiger": {  # TIGER-style: semantic IDs only, next-item recommendation only
        "overrides": {"ids.mode": "semantic", "train.tasks": {**NO_TASKS, "rec": 1.0}},
        "tasks": ("rec",)},
    "gensar-semantic-ids": {  # ablation: one semantic ID serves both tasks
        "overrides": {"ids.mode": "semantic"}, "tasks": ("rec", "search")},
    "gensar-independent-ids": {  # ablation: no shared levels, independent semantic and collaborative codes
        "overrides": {"ids.mode": "independent"}, "tasks": ("rec", "search")},
}
BASELINES = ("popularity", "bm25", "dense", "sasrec", "bm25+sasrec", "bm25>sasrec")

# A CI-size run: few epochs, a user sample for evaluation, a quarter of the training examples per
# epoch (QUICK_TRAIN_SCALE multiplies every train.tasks rate). Real runs use params.yaml as is.
QUICK = {"collab.epochs": 3, "collab.patience": 2, "ids.epochs": 20, "train.epochs": 1, "train.eval_users": 100,
         "evaluate.max_users": 200, "evaluate.beams": 20}
QUICK_TRAIN_SCALE = 0.25

# Published full-ranking numbers on Amazon Beauty (leave-one-out, all items ranked).
PUBLISHED = {
    "dataset": "beauty",
    "protocol": "full ranking over all items, leave-one-out (TIGER/LC-Rec protocol)",
    "models": {
        "TIGER (Rajput et al. 2023, published)": {
            "rec/full/recall@5": 0.0454, "rec/full/ndcg@5": 0.0321,
            "rec/full/recall@10": 0.0648, "rec/full/ndcg@10": 0.0384},
        "SASRec-CE (cross-entropy SASRec, published)": {
            "rec/full/recall@5": 0.0543, "rec/full/ndcg@5": 0.0315,
            "rec/full/recall@10": 0.0821, "rec/full/ndcg@10": 0.0405},
    },
}

FULL_COLS = ["recall@5", "ndcg@5", "recall@10", "ndcg@10"]
SAMPLED_COLS = ["hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10"]


def _stage(name: str):
    return importlib.import_module(f"gensar.stages.{name}")


def _done(*paths: Path) -> bool:
    return all(Path(p).exists() for p in paths)


def dir_mb(path: Path, skip=("checkpoints",)) -> float:
    """Size on disk of a model file or folder in MB (training checkpoints excluded)."""
    path = Path(path)
    if path.is_file():
        return round(path.stat().st_size / 2**20, 2)
    files = [p for p in path.rglob("*") if p.is_file() and not (set(p.relative_to(path).parts) & set(skip))]
    return round(sum(p.stat().st_size for p in files) / 2**20, 2)


def count_params(obj) -> int | None:
    """Parameters of a torch module, or of the first module found on common attribute names."""
    for cand in (obj, getattr(obj, "model", None), getattr(obj, "t5", None)):
        if cand is not None and hasattr(cand, "parameters"):
            return int(sum(p.numel() for p in cand.parameters()))
    return None


def prepare(source: str, work: Path, params, need_embed: bool = True, need_collab: bool = True) -> dict:
    """Shared stages: ingest, validate, embed, collab (SASRec-CE). Returns seconds per stage.

    embed is skipped when nothing needs item embeddings (no variants, no dense baseline), collab
    when nothing needs SASRec (no variants, no sasrec baseline).
    """
    seconds = {}
    p = {"canonical": work / "prepared/canonical", "emb": work / "models/embeddings",
         "sasrec": work / "models/sasrec"}
    steps = [
        ("ingest", [p["canonical"] / "interactions.parquet"],   # ingested tables only feed validate
         {"snapshot": source, "out": work / "prepared/ingested", "report": work / "reports/ingest.json"}),
        ("validate", [p["canonical"] / "interactions.parquet"],
         {"ingested": work / "prepared/ingested", "out": p["canonical"],
          "quarantine": work / "prepared/quarantine.parquet", "report": work / "reports/validation.json",
          "stats": work / "metrics/data.json"}),
        ("embed", [p["emb"] / "semantic.npy"], {"canonical": p["canonical"], "out": p["emb"]}),
        ("collab", [p["sasrec"] / "model.pt"],
         {"canonical": p["canonical"], "out": p["sasrec"], "metrics": work / "metrics/sasrec.json"}),
    ]
    skip = {"embed": not need_embed, "collab": not need_collab}
    for name, outs, kwargs in steps:
        if skip.get(name):
            logger.info("benchmark: %s not needed by this selection, skipped", name)
            continue
        if _done(*outs):
            logger.info("benchmark: %s done already (%s)", name, outs[0])
            continue
        logger.info("benchmark: stage %s", name)
        t0 = time.perf_counter()
        _stage(name).run(params, **kwargs)
        seconds[name] = round(time.perf_counter() - t0, 1)
    return seconds


def train_variant(name: str, spec: dict, work: Path, base_params: str, overrides: dict,
                  train_scale: float = 1.0) -> dict:
    """Identifiers (one per ids.mode, shared between variants) and T5 training for one variant.

    train_scale multiplies every `train.tasks` rate (the expected draws per example and epoch).
    """
    params = load_params(base_params, {**overrides, **spec["overrides"]})
    if train_scale != 1.0:
        scaled = {t: w * train_scale for t, w in params.train.tasks.items()}
        params = load_params(base_params, {**overrides, **spec["overrides"], "train.tasks": scaled})
    ids_dir = work / "ids" / params.ids.mode
    model_dir = work / "variants" / name / "t5"
    info = {"ids_mode": params.ids.mode, "train_tasks": params.train.tasks, "ids_dir": str(ids_dir),
            "model_dir": str(model_dir)}
    meta_path = work / "variants" / name / "timing.json"
    timing = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if not _done(ids_dir / "identifiers.parquet"):
        t0 = time.perf_counter()
        _stage("identifiers").run(params, embeddings=work / "models/embeddings", collab=work / "models/sasrec",
                                  canonical=work / "prepared/canonical", out=ids_dir,
                                  metrics=work / "metrics" / f"ids-{params.ids.mode}.json")
        write_json({"seconds": round(time.perf_counter() - t0, 1)}, ids_dir.parent / f"{params.ids.mode}.time.json")
    ids_time = ids_dir.parent / f"{params.ids.mode}.time.json"
    timing["ids_seconds"] = json.loads(ids_time.read_text())["seconds"] if ids_time.exists() else None
    if not _done(model_dir / "gensar.json"):
        t0 = time.perf_counter()
        _stage("train").run(params, canonical=work / "prepared/canonical", ids=ids_dir, out=model_dir,
                            metrics=work / "metrics" / f"train-{name}.json", live=work / "dvclive" / name,
                            teacher=work / "models/sasrec/model.pt")
        timing["train_seconds"] = round(time.perf_counter() - t0, 1)
        write_json(timing, meta_path)
    return {**info, **timing}


def served_model(name: str, spec: dict, info: dict, work: Path, base_params: str, overrides: dict, beams: int):
    """The variant as it would be served: exported by the export stage, decoded by the onnxruntime
    runtime (5-10x faster than HF `generate` here, same top-10; gensar.serve.runtime)."""
    from gensar.model.t5 import load_model
    from gensar.serve.runtime import Runtime

    params = load_params(base_params, {**overrides, **spec["overrides"]})
    onnx_dir = Path(info["model_dir"]).parent / "onnx"
    if not _done(onnx_dir / "meta.json"):
        _stage("export").run(params, model=info["model_dir"], ids=info["ids_dir"],
                             canonical=work / "prepared/canonical", out=onnx_dir)
    info["params"] = count_params(load_model(info["model_dir"])[0])
    return Runtime.load(onnx_dir, beams=beams, threads=params.serve.threads)


def to_markdown(results: dict, source: str, quick: bool) -> str:
    """The benchmark tables: full ranking (with published references) and sampled 100 candidates."""
    models = results["models"]

    def fmt(v):
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    def fmt_params(n):
        return "" if n is None else f"{n / 1e6:.2f}M" if n >= 1e5 else str(n)

    lines = [f"# Benchmark on `{source}`{' (quick preset)' if quick else ''}", "",
             (f"Split `{results['split']}`, {results['n_cases']} (rec, search cases; "
              f"max_users={results['max_users']}). Same cases, candidates and metric code for every model."),
             (f"Params overrides: `{json.dumps(results.get('overrides', {}))}`; train.tasks rates x "
              f"{results.get('train_scale', 1.0)}. `train s`: identifiers + T5 training for generative rows, "
              "SASRec training for sasrec."), ""]
    for protocol, cols, title in (
            ("full", FULL_COLS, "Full ranking over all items (TIGER / LC-Rec protocol)"),
            ("sampled", SAMPLED_COLS, "100 candidates: target + 99 negatives (GenSAR paper protocol)")):
        lines += [f"## {title}", ""]
        head = ["model"] + [f"rec {c}" for c in cols] + [f"search {c}" for c in cols] + \
               ["train s", "params", "MB"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, r in models.items():
            m = r.get("metrics", {})
            row = [name] + [fmt(m.get(f"rec/{protocol}/{c}")) for c in cols] + \
                  [fmt(m.get(f"search/{protocol}/{c}")) for c in cols] + \
                  ["" if r.get("train_seconds") is None else f"{r['train_seconds']:.0f}",
                   fmt_params(r.get("params")), "" if r.get("mb") is None else f"{r['mb']:.2f}"]
            lines.append("| " + " | ".join(row) + " |")
        if protocol == "full":
            for name, m in PUBLISHED["models"].items():
                row = [name] + [fmt(m.get(f"rec/full/{c}")) for c in cols] + [""] * (len(cols) + 3)
                lines.append("| " + " | ".join(row) + " |")
            lines += ["", (f"Published rows: {PUBLISHED['dataset']}, {PUBLISHED['protocol']}; comparable with "
                           "ours only on beauty, full split, full test set.")]
        lines.append("")
    fits = {n: r["fit"] for n, r in models.items() if r.get("fit")}
    if fits:
        lines += ["## Knobs chosen on validation", "",
                  ("Each hybrid baseline's knob is the grid value with the best validation "
                   "search NDCG@10 (full ranking); the test numbers above use it."), ""]
        for n, f in fits.items():
            lines += [f"`{n}`: {f['param']} = {f['chosen']:g} ({f['n_cases']} {f['split']} search cases)", "",
                      "| " + f["param"] + " | " + " | ".join(f"valid search {c}" for c in FULL_COLS) + " |",
                      "|" + "---|" * (len(FULL_COLS) + 1)]
            for v, m in f["grid"].items():
                mark = " (chosen)" if v == f"{f['chosen']:g}" else ""
                lines.append(f"| {v}{mark} | " + " | ".join(fmt(m.get(f"search/full/{c}")) for c in FULL_COLS) + " |")
            lines.append("")
    errors = {n: r["error"] for n, r in models.items() if r.get("error")}
    if errors:
        lines += ["## Not run", ""] + [f"- {n}: {e}" for n, e in errors.items()] + [""]
    return "\n".join(lines)


def run(source: str, out: str | Path, work: str | Path | None = None, params_path: str = "params.yaml",
        quick: bool = False, variants=tuple(VARIANTS), baselines=BASELINES, overrides: dict | None = None,
        train_scale: float | None = None) -> dict:
    """Run the whole benchmark; returns the results dict written to `<out>/benchmark.json`."""
    out = Path(out)
    work = Path(work) if work else out / "work"
    # a private copy of params.yaml: every variant is built from the params the run started with,
    # whatever happens to the checkout's params.yaml meanwhile
    snapshot = work / "params.yaml"
    write_text(Path(params_path).read_text(), snapshot)
    params_path = str(snapshot)
    ov = {**(QUICK if quick else {}), **(overrides or {}), "data.source": str(source)}
    params = load_params(params_path, ov)
    cfg = params.evaluate
    train_scale = train_scale if train_scale is not None else (QUICK_TRAIN_SCALE if quick else 1.0)
    results = {"source": str(source), "quick": quick, "overrides": ov, "train_scale": train_scale,
               "split": cfg.split,
               "max_users": cfg.max_users, "models": {}, "published": PUBLISHED}

    results["prepare_seconds"] = prepare(str(source), work, params,
                                         need_embed=bool(variants) or "dense" in baselines,
                                         need_collab=bool(variants) or "sasrec" in baselines
                                         or any(b in HYBRIDS for b in baselines))
    data, valid, inter = prepare_eval_data(work / "prepared/canonical", work / "prepared/candidates", cfg)
    cases = data.cases
    results["n_cases"] = {t: int((cases["behavior"] == t).sum()) for t in ("rec", "search")}

    from gensar.device import resolve_device

    device = resolve_device(cfg.device)
    sasrec_metrics = work / "metrics/sasrec.json"
    for ranker in build_baselines(baselines, data.item_ids, data.item_texts, inter,
                                  sasrec=str(work / "models/sasrec"), embeddings=str(work / "models/embeddings"),
                                  encoder_model=params.embed.model, device=device, valid=valid,
                                  batch_size=cfg.batch_size):
        res = evaluate_model(ranker, data, batch_size=cfg.batch_size)
        entry = {"kind": "baseline", **res}
        if ranker.name == "sasrec":
            info = json.loads(sasrec_metrics.read_text()) if sasrec_metrics.exists() else {}
            entry.update(train_seconds=info.get("train_seconds"), params=getattr(ranker, "n_params", None),
                         mb=dir_mb(work / "models/sasrec/model.pt"))
        elif ranker.name == "popularity":
            entry.update(train_seconds=0.0, params=0)
        elif ranker.name == "dense":
            entry.update(params=getattr(ranker, "n_params", None), note="pretrained sentence encoder, not trained here")
        elif ranker.name in HYBRIDS:
            entry.update(params=getattr(ranker, "n_params", None), fit=ranker.fit)
        results["models"][ranker.name] = entry
        _write(results, out)

    for name in variants:
        spec = VARIANTS[name]
        try:
            info = train_variant(name, spec, work, params_path, ov, train_scale)
            model = served_model(name, spec, info, work, params_path, ov, cfg.beams)
            res = evaluate_model(GenSARRanker(model, name, spec["tasks"]), data, batch_size=cfg.batch_size)
            total = sum(v for v in (info.get("ids_seconds"), info.get("train_seconds")) if v)
            results["models"][name] = {"kind": "generative", **info, **res, "train_seconds": round(total, 1),
                                       "params": info["params"], "mb": dir_mb(Path(info["model_dir"])),
                                       "engine": "onnxruntime (the exported model, as served)"}
        except Exception as e:  # one failing variant must not lose the others' results
            logger.exception("benchmark: variant %s failed", name)
            results["models"][name] = {"kind": "generative", "error": f"{type(e).__name__}: {e}"}
        _write(results, out)
    logger.info("benchmark: wrote %s", out / "benchmark.md")
    return results


def _write(results: dict, out: Path) -> None:
    write_json(results, out / "benchmark.json")
    write_text(to_markdown(results, results["source"], results["quick"]), out / "benchmark.md")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="dataset folder, e.g. ../shared/data/office")
    ap.add_argument("--out", required=True, help="where benchmark.md and benchmark.json go")
    ap.add_argument("--work", default=None, help="work dir for the stages' outputs (default <out>/work)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--quick", action="store_true", help="CI-size preset: few epochs, 200 users")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated subset of {', '.join(VARIANTS)} (empty: baselines only)")
    ap.add_argument("--baselines", default=",".join(BASELINES))
    ap.add_argument("--train-scale", type=float, default=None,
                    help=f"multiply every train.tasks rate (default 1, {QUICK_TRAIN_SCALE} with --quick)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="params override, e.g. --set train.epochs=3 (YAML value)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)   # very chatty at INFO
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    res = run(args.source, args.out, work=args.work, params_path=args.params, quick=args.quick,
              variants=variants, baselines=[b for b in args.baselines.split(",") if b], overrides=overrides,
              train_scale=args.train_scale)
    print(to_markdown(res, res["source"], res["quick"]))


if __name__ == "__main__":
    main()
