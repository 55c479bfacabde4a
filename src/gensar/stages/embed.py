"""Stage `embed`: semantic embeddings of every canonical item's text.

Outputs (under `out`, default `models/embeddings`):
    semantic.npy    float32 [n_items, d], rows in `item_ids.json` order (the canonical items order)
    item_ids.json   list of item ids
    cache/          text-hash -> vector cache; must survive re-runs (dvc.yaml marks the folder `persist`)
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gensar.config import Params, load_params
from gensar.device import resolve_device, setup_torch
from gensar.ids.embed import embed_items
from gensar.io import atomic_path, write_json
from gensar.logs import setup_logging

logger = logging.getLogger(__name__)


def run(params: Params, canonical: str | Path,
        out: str | Path) -> dict:
    canonical, out = Path(canonical), Path(out)
    items_path = canonical / "items.parquet"
    if not items_path.exists():
        raise FileNotFoundError(f"embed: {items_path} not found (run the validate stage first)")
    items = pd.read_parquet(items_path, columns=["item_id", "text"])
    setup_torch(resolve_device(params.embed.device), params.embed.cpu_threads)
    t0 = time.perf_counter()
    item_ids, vecs, encoded = embed_items(items, params.embed, cache_dir=out / "cache")
    seconds = time.perf_counter() - t0
    with atomic_path(out / "semantic.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, vecs)
    write_json(item_ids, out / "item_ids.json")
    summary = {"n_items": len(item_ids), "dim": int(vecs.shape[1]), "encoded": encoded,
               "seconds": round(seconds, 2), "out": str(out)}
    logger.info("embed: %s", summary)
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--canonical", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    setup_logging()
    summary = run(load_params(args.params), canonical=args.canonical, out=args.out)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
