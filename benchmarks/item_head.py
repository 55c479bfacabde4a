"""What the beam keeps of what the model knows: a `train.rec_first: items` model's item softmax alone.

A model trained with `train.rec_first: items` scores every item at the first CID position (the item rows,
`gensar.model.levels`); its identifier beam then keeps the first codes with the most item mass and the
lower code levels rank the items under them. On the rec requests of a split this prints, side by side:

    GenSAR beam         the served ranking (constrained beam search over CIDs, `--beams` beams)
    GenSAR item head    the item softmax of the first CID position as a ranking of its own (no beam)
    SASRec-CE           the baseline, full softmax over items

An item head at SASRec-CE's level with a beam below it says the identifiers and the beam lose what the
model knows; an item head below SASRec-CE says the model itself knows less.

    python benchmarks/item_head.py --work OFFICE_WORK --model RUN/t5 [--split valid --users 1000] [--split test]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gensar.eval.baselines import SASRecRanker
from gensar.eval.candidates import history_items
from gensar.eval.metrics import hit_at, ndcg_at, target_ranks
from gensar.logs import progress
from gensar.model.examples import eval_requests, user_events, validation_requests
from gensar.model.generate import GenSARModel


def rec_requests(work: Path, split: str, users: int, seed: int) -> list:
    """The rec requests of `split`: valid = the trainer's validation sample (`users`, `seed`; 0 = all)."""
    canon = Path(work) / "prepared/canonical"
    events = user_events(pd.read_parquet(canon / "interactions.parquet"), pd.read_parquet(canon / "queries.parquet"))
    if split == "valid" and users:
        return validation_requests(events, users, seed, ("rec",))
    return [r for r in eval_requests(events, split) if r.behavior == "rec" and r.history]


def row(name: str, ranked: list[list[str]], targets: list[str], seconds: float) -> str:
    ranks = target_ranks(ranked, targets)
    return (f"| {name} | {hit_at(ranks, 5).mean():.4f} | {ndcg_at(ranks, 5).mean():.4f} | {hit_at(ranks, 10).mean():.4f} "
            f"| {ndcg_at(ranks, 10).mean():.4f} | {seconds:.0f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="prepared work dir (prepared/canonical, models/sasrec)")
    ap.add_argument("--model", required=True, help="a saved T5 folder trained with train.rec_first: items")
    ap.add_argument("--split", default="valid", choices=("valid", "test"))
    ap.add_argument("--users", type=int, default=1000, help="valid: the trainer's validation sample size (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    work = Path(args.work)
    gm = GenSARModel.load(args.model, beams=args.beams)
    if gm.first_items("cid") is None:
        raise SystemExit(f"{args.model}: not trained with train.rec_first: items (nothing to compare)")
    reqs = rec_requests(work, args.split, args.users, args.seed)
    targets = [r.target for r in reqs]
    sources = gm.sources("rec", [r.history for r in reqs])

    t0 = time.perf_counter()
    beam = []
    for i in progress(range(0, len(sources), args.batch), desc="beam"):
        beam += [[item for item, _ in hits] for hits in gm.generate_items(sources[i:i + args.batch], "cid", 10)]
    t_beam = time.perf_counter() - t0
    t0 = time.perf_counter()
    head = gm.first_item_ranking(sources, 10)
    t_head = time.perf_counter() - t0
    t0 = time.perf_counter()
    sasrec = SASRecRanker(gm.ids.item_ids, str(work / "models/sasrec/model.pt"))
    scores = sasrec.score_rec([history_items(r.history) for r in reqs])                  # [n, N]
    flat = [[gm.ids.item_ids[j] for j in np.argsort(-s, kind="stable")[:10]] for s in scores]
    t_sas = time.perf_counter() - t0
    beam_first = {i: c[0] for i, c in gm.codes["cid"].items()}
    kept = np.mean([beam_first[t] in {beam_first[x] for x in h} for t, h in zip(targets, head)])

    print(f"{len(reqs)} {args.split} rec requests, {len(gm.ids)} items, model {args.model}, beams {args.beams}")
    print("\n| ranking | R@5 | N@5 | R@10 | N@10 | seconds |\n| --- | --- | --- | --- | --- | --- |")
    print(row(f"GenSAR beam ({args.beams})", beam, targets, t_beam))
    print(row("GenSAR item head (first CID position, no beam)", head, targets, t_head))
    print(row("SASRec-CE", flat, targets, t_sas))
    print(f"\nitem head's top 10 inside the beam's top 10: {np.mean([len(set(a) & set(b)) / 10 for a, b in zip(head, beam)]):.3f}"
          f"; target's first code among the item head's top-10 first codes: {kept:.3f}")


if __name__ == "__main__":
    main()
