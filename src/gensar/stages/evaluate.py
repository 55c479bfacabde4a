"""Stage `evaluate`: GenSAR and the baselines on the held-out split, both protocols, one metrics file.

    python -m gensar.stages.evaluate --canonical prepared/canonical --onnx models/onnx --ids models/ids \
        --sasrec models/sasrec --candidates prepared/candidates --out metrics/eval.json

GenSAR is scored as it is served: the ONNX export through the onnxruntime runtime (`--onnx`; the
PyTorch model of `--model` without it), every test user, both protocols.

Candidate lists (the sampled protocol) are built once per dataset and seed and saved under
`--candidates`; every model is scored on the same lists. `metrics/eval.json` holds numbers only,
`{model: {"rec/sampled/hr@10": ..., "rec/full/recall@10": ..., ...}}`, so `dvc metrics diff` compares
runs metric by metric.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gensar.config import Params, load_params
from gensar.device import resolve_device
from gensar.eval.baselines import GenSARRanker, build_baselines
from gensar.eval.evaluate import evaluate_model, prepare_eval_data
from gensar.io import write_json
from gensar.logs import setup_logging

logger = logging.getLogger(__name__)


def load_gensar(model_dir: str | Path, ids_dir: str | Path, beams: int, device: str,
                onnx: str | Path | None = None, threads: int = 1):
    """The GenSAR model to score, or None when there is none (logged): the ONNX export in `onnx`
    through the serving runtime when given (what will be served, 5-10x faster than HF `generate`),
    else the PyTorch model of `model_dir`."""
    if onnx:
        from gensar.serve.runtime import Runtime

        if not (Path(onnx) / "meta.json").exists():
            logger.warning("evaluate: no ONNX export in %s (meta.json missing); baselines only", onnx)
            return None
        return Runtime.load(onnx, beams=beams, threads=threads)
    model_dir = Path(model_dir)
    if not (model_dir / "gensar.json").exists():
        logger.warning("evaluate: no trained GenSAR model in %s (gensar.json missing); baselines only", model_dir)
        return None
    from gensar.model.generate import GenSARModel

    return GenSARModel.load(model_dir, ids_dir, device=device, beams=beams)


def run(params: Params, *, canonical: str | Path, candidates: str | Path, out: str | Path,
        model: str | Path | None = None, onnx: str | Path | None = None, ids: str | Path | None = None,
        sasrec: str | Path | None = None, embeddings: str | Path | None = None, models: list | None = None,
        report: str | Path | None = None) -> dict:
    """Evaluate GenSAR (when `model` holds one) and `evaluate.baselines`; write `out`.

    models: extra rankers to evaluate beside them (the benchmark passes its variants this way).
    report: optional JSON with case counts and evaluation seconds per model (and, for the hybrid
    baselines, the knob chosen on the validation split with its grid).
    """
    cfg = params.evaluate
    data, valid, inter = prepare_eval_data(canonical, candidates, cfg)
    cases = data.cases

    device = resolve_device(cfg.device)
    rankers = list(models or [])
    gensar = load_gensar(model, ids, cfg.beams, device, onnx, params.serve.threads) if (model or onnx) else None
    if gensar is not None:
        rankers.insert(0, GenSARRanker(gensar, "gensar"))
    rankers += build_baselines(cfg.baselines, data.item_ids, data.item_texts, inter, sasrec=sasrec and str(sasrec),
                               embeddings=embeddings and str(embeddings), encoder_model=params.embed.model, device=device,
                               valid=valid, batch_size=cfg.batch_size)

    metrics, details = {}, {}
    for ranker in rankers:
        res = evaluate_model(ranker, data, batch_size=cfg.batch_size)
        metrics[ranker.name] = res["metrics"]
        if ranker is rankers[0] and gensar is not None:   # the gated model: how much the test sample alone moves it
            metrics[ranker.name]["se"] = res["se"]
        details[ranker.name] = {"n_cases": res["n_cases"], "eval_seconds": res["eval_seconds"]}
        if getattr(ranker, "fit", None):       # a hybrid's knob and its validation grid
            details[ranker.name]["fit"] = ranker.fit
    write_json(metrics, out)
    if report:
        write_json({"split": cfg.split, "max_users": cfg.max_users, "models": details}, report)
    logger.info("evaluate: wrote %s (%d models, split %s, %d cases)", out, len(metrics), cfg.split, len(cases))
    return {"out": str(out), "metrics": metrics, "details": details, "n_cases": len(cases)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--canonical", required=True)
    ap.add_argument("--model", default=None, help="PyTorch model (when --onnx is not given)")
    ap.add_argument("--onnx", default=None, help="score the ONNX export through the serving runtime")
    ap.add_argument("--ids", required=True)
    ap.add_argument("--sasrec", required=True)
    ap.add_argument("--embeddings", required=True)
    ap.add_argument("--candidates", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", default=None, help="optional JSON with case counts and timings")
    args = ap.parse_args(argv)
    setup_logging()
    summary = run(load_params(args.params), canonical=args.canonical, model=args.model, ids=args.ids, onnx=args.onnx,
                  sasrec=args.sasrec, candidates=args.candidates, out=args.out,
                  embeddings=args.embeddings, report=args.report)
    for name, m in summary["metrics"].items():
        print(name, {k: round(v, 4) for k, v in m.items() if isinstance(v, float)})   # (not the "se" block)
    return summary


if __name__ == "__main__":
    main()
