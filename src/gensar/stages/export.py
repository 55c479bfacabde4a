"""Stage `export`: the trained GenSAR T5 as a self-contained ONNX serving folder.

Inputs: the trained model (`models/t5`), the identifier map (`models/ids`) and the canonical items
(titles shown in responses). Output (`models/onnx`, replaced atomically as a whole):
    encoder.onnx, decoder.onnx + decoder_lse.onnx (KV cache), lm_head.npy, tokenizer/, ids/, trie.npz,
    items.parquet, meta.json (data / identifier / model versions, generation settings, verification)
The fp32 graphs are checked against PyTorch (`export.tolerance`) before anything is written.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from gensar.config import Params, load_params
from gensar.export.onnx import write_export
from gensar.io import atomic_path, file_hash
from gensar.logs import setup_logging

logger = logging.getLogger(__name__)


def run(params: Params, model: str | Path, ids: str | Path,
        canonical: str | Path, out: str | Path) -> dict:
    from gensar.model.t5 import load_model

    model_dir, ids_dir, canonical, out = Path(model), Path(ids), Path(canonical), Path(out)
    for path in (model_dir / "gensar.json", ids_dir / "identifiers.parquet", ids_dir / "meta.json",
                 canonical / "items.parquet"):
        if not path.exists():
            raise FileNotFoundError(f"export: {path} not found (run the stages before `export` first)")
    t0 = time.perf_counter()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    net, tokenizer, model_meta = load_model(model_dir, "cpu")
    items = pd.read_parquet(canonical / "items.parquet", columns=["item_id", "title"])
    items["item_id"] = items["item_id"].astype(str)

    train = model_meta.get("train") or {}
    generation = {  # the encoder-input settings the model was trained with (GenSARModel uses the same)
        "history_len": int(train.get("history_len", params.train.history_len)),
        "max_query_words": int(train.get("max_query_tokens", params.train.max_query_tokens)),
        "max_input_tokens": int(train.get("max_input_tokens", params.train.max_input_tokens)),
        "history_twins": str(train.get("history_twins", params.train.history_twins)),
        "drop_constant_codes": bool(train.get("drop_constant_codes", False)),
        "item_tokens": str(train.get("item_tokens", "none")) != "none",   # history entries show item tokens
        "history_codes": bool(train.get("history_codes", True)),          # ... and identifiers
        "causal": bool(train.get("causal", False)),    # causal encoder: inputs without EOS, a causal encoder graph
        # the scores the model was trained to give (the runtime's normalize=auto)
        "normalize": "level" if train.get("id_loss", params.train.id_loss) == "level" else "full",
        "rec_first": str(train.get("rec_first", "codes")),   # items: a CID's first code from the item rows
    }
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    versions = {
        "data": str(model_meta.get("data_version") or file_hash(canonical / "items.parquet", length=12)),
        "identifiers": file_hash(ids_dir / "identifiers.parquet", ids_dir / "meta.json", length=12),
        "model": file_hash(*weights, model_dir / "gensar.json", length=12),
        "model_dir": str(model_dir),
    }
    with atomic_path(out) as tmp:
        meta = write_export(net, tokenizer, ids_dir, items, tmp, generation, versions,
                            opset=params.export.opset, quantize=params.export.quantize,
                            tolerance=params.export.tolerance, score_eos=params.export.score_eos)
    summary = {"out": str(out), "n_items": meta["n_items"], "versions": versions,
               "quantized": meta["quantized"], "max_abs_diff": max(meta["verification_max_abs_diff"].values()),
               "seconds": round(time.perf_counter() - t0, 2)}
    logger.info("export: %s", json.dumps(summary))
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--canonical", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    setup_logging()
    summary = run(load_params(args.params), model=args.model, ids=args.ids, canonical=args.canonical, out=args.out)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
