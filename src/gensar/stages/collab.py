"""Stage `collab`: train SASRec-CE; its item embeddings are the collaborative embeddings.

Outputs:
    <out>/model.pt        config + weights + item_ids (gensar.ids.sasrec.load_sasrec reads it)
    <out>/collab.npy      float32 [n_items, hidden], rows in `item_ids.json` order
    <out>/item_ids.json   canonical items order
    <metrics>             full-ranking Recall/NDCG@5/10 on valid and test, epochs, train time
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gensar.config import Params, load_params, to_dict
from gensar.device import resolve_device, setup_torch
from gensar.ids.sasrec import save_sasrec
from gensar.ids.sasrec_train import (
    eval_cases,
    evaluate_full_ranking,
    train_sasrec,
    train_sequences,
    user_timelines,
)
from gensar.io import atomic_path, write_json
from gensar.logs import setup_logging

logger = logging.getLogger(__name__)


def run(params: Params, canonical: str | Path, out: str | Path,
        metrics: str | Path) -> dict:
    cfg = params.collab
    canonical, out = Path(canonical), Path(out)
    setup_torch(resolve_device(cfg.device), cfg.cpu_threads)
    t0 = time.perf_counter()
    items = pd.read_parquet(canonical / "items.parquet", columns=["item_id"])
    inter = pd.read_parquet(canonical / "interactions.parquet",
                            columns=["user_id", "item_id", "step", "behavior", "split"])
    item_ids = items["item_id"].astype(str).tolist()
    item_index = {it: i + 1 for i, it in enumerate(item_ids)}           # 0 is padding
    tl = user_timelines(inter, item_index)
    seqs = train_sequences(tl)
    valid = eval_cases(inter, tl, item_index, "valid", cfg.max_len)
    test = eval_cases(inter, tl, item_index, "test", cfg.max_len)
    model, info = train_sasrec(seqs, len(item_ids), cfg, valid=valid if len(valid[1]) else None)
    device = next(model.parameters()).device
    result = {"n_items": len(item_ids), "n_train_sequences": len(seqs), "n_valid": len(valid[1]),
              "n_test": len(test[1]), "epochs": info["epochs"],
              "train_seconds": round(info["train_seconds"], 1)}
    result.update({f"valid/{k}": v for k, v in evaluate_full_ranking(model, *valid, device=device).items()})
    result.update({f"test/{k}": v for k, v in evaluate_full_ranking(model, *test, device=device).items()})
    result["seconds"] = round(time.perf_counter() - t0, 1)

    with atomic_path(out / "model.pt") as tmp:
        save_sasrec(model, tmp, item_ids, extra={"params": to_dict(cfg)})
    with atomic_path(out / "collab.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, model.item_embeddings())
    write_json(item_ids, out / "item_ids.json")
    write_json(result, metrics)
    logger.info("collab: %s", result)
    return {**result, "out": str(out), "metrics": str(metrics)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--canonical", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    setup_logging()
    summary = run(load_params(args.params), canonical=args.canonical, out=args.out, metrics=args.metrics)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
