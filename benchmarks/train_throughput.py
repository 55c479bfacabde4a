"""Training throughput (examples/s) of the GenSAR T5 per model size, on real GenSAR examples.

    python benchmarks/train_throughput.py --canonical prepared/canonical --ids models/ids \
        --sizes tiny small --batch 64 --steps 5 [--threads 2] [--device cpu]

For each size: the examples of epoch 0 (same tokenizer, prompts and task mix as training), a few
AdamW steps after one warm-up step, examples/s and seconds per step, plus the latency of one
constrained beam-search request (beam 20, batch 1). Prints a markdown table; `--json` writes it too.
"""
from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch

from gensar.config import ModelConfig, TrainConfig
from gensar.model.examples import ExampleBuilder, eval_requests, user_events
from gensar.model.generate import GenSARModel
from gensar.model.prompts import IdentifierMap
from gensar.model.t5 import build_model
from gensar.model.tokenizer import train_tokenizer
from gensar.model.train import Collate, autocast_dtype, pick_device


def bench(size: str, tok, builder, cfg: TrainConfig, ids, requests, batch: int, steps: int, device):
    torch.manual_seed(0)
    model = build_model(ModelConfig(size=size), len(tok), tok.pad_token_id, tok.eos_token_id).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = autocast_dtype("auto", device)
    examples = builder.epoch(0, 0)
    collate = Collate(tok, cfg.max_input_tokens, cfg.max_query_tokens * 2 + 8)
    batches = [collate(examples[i * batch:(i + 1) * batch]) for i in range(steps + 1)]
    in_tokens = sum(int(b["attention_mask"].sum()) for b in batches) / ((steps + 1) * batch)
    model.train()
    t0 = 0.0
    for i, b in enumerate(batches):
        if i == 1:                       # step 0 is warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        b = {k: v.to(device) for k, v in b.items()}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    gm = GenSARModel(model.eval(), tok, ids, cfg, beams=20, device=device)
    r = requests[0]
    gm.recommend(r.history, k=10)                       # warm-up
    t1 = time.perf_counter()
    for r in requests[:5]:
        gm.recommend(r.history, k=10)
    gen_ms = (time.perf_counter() - t1) / min(5, len(requests)) * 1000
    return {"size": size, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "batch": batch, "input_tokens": round(in_tokens, 1), "steps": steps,
            "examples_per_s": round(steps * batch / dt, 1), "s_per_step": round(dt / steps, 3),
            "beam20_ms": round(gen_ms, 1), "device": str(device)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--canonical", default="prepared/canonical")
    ap.add_argument("--ids", default="models/ids")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    items = pd.read_parquet(f"{args.canonical}/items.parquet")
    inter = pd.read_parquet(f"{args.canonical}/interactions.parquet")
    queries = pd.read_parquet(f"{args.canonical}/queries.parquet")
    ids = IdentifierMap.load(args.ids)
    cfg = TrainConfig()
    events = user_events(inter, queries)
    builder = ExampleBuilder(events, items, ids, cfg)
    tok = train_tokenizer(items["text"].tolist() + queries["text"].tolist(), ids.tokens(), 8000)
    requests = eval_requests(events, "valid", sorted(events)[:20])
    requests = [r for r in requests if r.behavior == "rec"]
    rows = [bench(s, tok, builder, cfg, ids, requests, args.batch, args.steps, device) for s in args.sizes]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
