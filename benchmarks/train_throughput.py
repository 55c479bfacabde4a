"""Training throughput (examples/s) of the GenSAR T5 per model size, recipe and batching, on real examples.

    python benchmarks/train_throughput.py --canonical prepared/canonical --ids models/ids \
        --sizes tiny small --batch 64 --steps 5 [--recipes today,params] [--threads 2] [--device cpu]

For each size and recipe: `steps * batch` random examples of epoch 0 (the recipe's prompts, history
and task mix), tokenized once as the trainer does, cut into batches two ways, each timed over the
same examples after one warm-up step with the recipe's loss (`gensar.model.levels.Seq2SeqLoss`):

    random     batches in random order, each padded to its longest input (DataLoader shuffle)
    bucketed   the same examples sorted by token count first (what the trainer's `length_batches`
               does within each window of 32 batches)

Recipes: `today` = the recipe before issue 14 (3 clicks with both twins, whole-vocabulary loss),
`params` = `train` of params.yaml, `causal` = the same with `train.causal` (a rec example is a stretch of
clicks with a target after each: `targets_per_s` counts those, `examples_per_s` the examples), `items` =
params.yaml with item tokens after each history identifier (`train.item_tokens: sasrec`, 160 input tokens;
random rows here: the speed does not depend on them), `items-only` = item tokens in place of the history's
identifiers (`train.history_codes: false`); both with the tokenizer and embedding rows they need. Printed side by side: input tokens, real-token share of the
padded inputs, examples/s, seconds per step, the speed-up against the first row of the same size;
plus the latency of one constrained beam-search request (beam 20, batch 1). `--json` writes it too.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch

from gensar.config import ModelConfig, TrainConfig, load_params
from gensar.model.examples import ExampleBuilder, eval_requests, user_events
from gensar.model.generate import GenSARModel
from gensar.model.levels import LevelVocab, Seq2SeqLoss
from gensar.model.prompts import IdentifierMap
from gensar.model.t5 import build_model
from gensar.model.tokenizer import train_tokenizer
from gensar.model.train import Collate, autocast_dtype, pick_device, tokenize_epoch

# the recipe before issue 14: a few clicks shown with both twins, scored over the whole vocabulary
TODAY = {"history_len": 3, "history_twins": "both", "id_loss": "full"}


def make_batches(examples, collate, batch: int, steps: int, bucketed: bool, seed: int = 0):
    """One warm-up batch + `steps` batches of the same `steps * batch` random (source, target) ids."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(examples), size=(steps + 1) * batch, replace=False)
    warm, timed = pick[:batch], pick[batch:]
    if bucketed:
        timed = timed[np.argsort([len(examples[i][0]) for i in timed], kind="stable")]
    chunks = [timed[i * batch:(i + 1) * batch] for i in range(steps)]
    order = rng.permutation(steps)                         # batches in random order either way
    return [collate([examples[i] for i in warm])] + [collate([examples[i] for i in chunks[j]]) for j in order]


def bench(size: str, recipe: str, tok, builder, cfg: TrainConfig, ids, requests, batch: int, steps: int, device,
          bucketed: bool = False, latency: bool = True):
    torch.manual_seed(0)
    model = build_model(ModelConfig(size=size), len(tok), tok.pad_token_id, tok.eos_token_id).to(device)
    objective = Seq2SeqLoss(model, LevelVocab(tok, ids) if cfg.id_loss == "level" else None, causal=cfg.causal)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = autocast_dtype("auto", device)
    examples = tokenize_epoch(tok, builder.epoch(0, 0), cfg.max_input_tokens, cfg.max_query_tokens * 2 + 8,
                              cfg.causal)
    batches = make_batches(examples, Collate(tok.pad_token_id, cfg.causal), batch, steps, bucketed)
    targets = sum(int(b.pop("n_targets", b["input_ids"].shape[0])) for b in batches[1:])
    real = sum(int(b["attention_mask"].sum()) for b in batches[1:])
    padded = sum(b["attention_mask"].numel() for b in batches[1:])
    in_tokens = real / (steps * batch)
    model.train()
    t0 = 0.0
    for i, b in enumerate(batches):
        if i == 1:                       # step 0 is warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        b = {k: v.to(device) for k, v in b.items()}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = objective(**b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    row = {"size": size, "recipe": recipe, "batching": "bucketed" if bucketed else "random",
           "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), "batch": batch,
           "input_tokens": round(in_tokens, 1), "real_token_share": round(real / padded, 3), "steps": steps,
           "examples_per_s": round(steps * batch / dt, 1), "targets_per_s": round(targets / dt, 1),
           "s_per_step": round(dt / steps, 3)}
    if not latency:
        return row
    gm = GenSARModel(model.eval(), tok, ids, cfg, beams=20, device=device)
    r = requests[0]
    gm.recommend(r.history, k=10)                       # warm-up
    t1 = time.perf_counter()
    for r in requests[:5]:
        gm.recommend(r.history, k=10)
    gen_ms = (time.perf_counter() - t1) / min(5, len(requests)) * 1000
    return {**row, "beam20_ms": round(gen_ms, 1), "device": str(device)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--canonical", default="prepared/canonical")
    ap.add_argument("--ids", default="models/ids")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--recipes", default="today,params", help="comma-separated: today, params, causal")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    items = pd.read_parquet(f"{args.canonical}/items.parquet")
    inter = pd.read_parquet(f"{args.canonical}/interactions.parquet")
    queries = pd.read_parquet(f"{args.canonical}/queries.parquet")
    events = user_events(inter, queries)
    texts = items["text"].tolist() + queries["text"].tolist()
    requests = eval_requests(events, "valid", sorted(events)[:20])
    requests = [r for r in requests if r.behavior == "rec"]
    params_train = load_params(args.params).train
    recipes = {"today": TrainConfig(**{**vars(params_train), **TODAY}), "params": params_train,
               "causal": TrainConfig(**{**vars(params_train), "causal": True}),
               "items": TrainConfig(**{**vars(params_train), "item_tokens": "sasrec", "max_input_tokens": 160}),
               "items-only": TrainConfig(**{**vars(params_train), "item_tokens": "sasrec", "history_codes": False})}
    unknown = set(args.recipes.split(",")) - set(recipes)
    if unknown:
        ap.error(f"unknown recipe(s) {sorted(unknown)} (known: {', '.join(recipes)})")
    vocab = {}   # (item tokens?, history codes?) -> (identifier map, tokenizer)
    rows = []
    for size in args.sizes:
        first = None
        for recipe in args.recipes.split(","):
            cfg = recipes[recipe]
            key = (cfg.item_tokens != "none", cfg.history_codes)
            if key not in vocab:
                ids = IdentifierMap.for_training(args.ids, cfg)
                vocab[key] = ids, train_tokenizer(texts, ids.tokens() + ids.all_item_tokens(), 8000)
            ids, tok = vocab[key]
            builder = ExampleBuilder(events, items, ids, cfg)
            base = bench(size, recipe, tok, builder, cfg, ids, requests, args.batch, args.steps, device)
            buck = bench(size, recipe, tok, builder, cfg, ids, requests, args.batch, args.steps, device,
                         bucketed=True, latency=False)
            first = first or base["examples_per_s"]
            base["speedup"] = round(base["examples_per_s"] / first, 2)
            buck.update(speedup=round(buck["examples_per_s"] / first, 2), beam20_ms=base["beam20_ms"],
                        device=base["device"])
            rows += [base, buck]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
