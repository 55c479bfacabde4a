"""How well could a generator place each identifier code if it were as good as SASRec-CE?

For the validation rec requests of `--users` users (the sample the trainer validates on), SASRec-CE's
softmax over all items p(item | history) is summed over the items below each identifier prefix:

    p(code_t = c | prefix_<t) = sum_{items with prefix_<t, c} p(item) / sum_{items with prefix_<t} p(item)

    acc/l<t>      teacher-forced accuracy of that marginal's argmax at depth t (true prefix given): the
                  same definition as the trainer's `valid/rec/acc/l<t>` for the T5
    trie R@10     SASRec's exact item probabilities decoded through the identifier trie with a beam
                  of `--beams` prefixes per depth: what the identifier tree and the beam cost a model
                  that knew p(item) exactly (flat R@10 beside it)

A T5 whose level accuracies sit far below SASRec's is a weaker model; one that matches them is
limited by the identifiers. `--t5-history` puts the T5's last validation row beside it (its
`acc_trie`: the argmax over the codes the trie allows, as here).

    python benchmarks/code_ceiling.py --work OFFICE_WORK --ids OFFICE_WORK/ids/gensar --users 1000 \
        [--t5-history RUN/t5/history.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from gensar.eval.baselines import SASRecRanker
from gensar.eval.candidates import history_items
from gensar.model.examples import user_events, validation_requests
from gensar.model.prompts import IdentifierMap


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def level_accuracy(p: np.ndarray, codes: np.ndarray, targets: np.ndarray) -> list[float]:
    """p (n, n_items) item probabilities, codes (n_items, depth), targets (n,) item rows ->
    accuracy of argmax_c p(code_t = c | true prefix) at each depth t."""
    n, depth = len(targets), codes.shape[1]
    acc = []
    for t in range(depth):
        hits = 0
        for i in range(n):
            prefix = codes[targets[i], :t]
            below = np.all(codes[:, :t] == prefix, axis=1)                 # items under the true prefix
            mass = np.bincount(codes[below, t], weights=p[i, below])       # p(code_t = c | prefix), unnormalised
            hits += int(np.argmax(mass) == codes[targets[i], t])
        acc.append(hits / n)
    return acc


def trie_topk(p: np.ndarray, codes: np.ndarray, beams: int, k: int) -> list[list[int]]:
    """Beam search over identifier prefixes scored by their exact probability mass; the items of the
    surviving prefixes ranked by p (ties: item row). Returns each row's top-k item rows."""
    out = []
    for i in range(len(p)):
        alive = np.arange(len(codes))                                      # items under a kept prefix
        for t in range(codes.shape[1]):
            _, inverse = np.unique(codes[alive, : t + 1], axis=0, return_inverse=True)
            mass = np.bincount(inverse.ravel(), weights=p[i, alive])       # (n_prefixes,)
            keep = np.argsort(-mass, kind="stable")[:beams]
            alive = alive[np.isin(inverse.ravel(), keep)]
        out.append(list(alive[np.argsort(-p[i, alive], kind="stable")][:k]))
    return out


def valid_rec_requests(work: Path, users: int, seed: int) -> list:
    """The rec requests of the trainer's validation sample (`train.eval_users` = users, `train.seed`)."""
    canon = Path(work) / "prepared/canonical"
    events = user_events(pd.read_parquet(canon / "interactions.parquet"), pd.read_parquet(canon / "queries.parquet"))
    return validation_requests(events, users, seed, ("rec",))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="prepared work dir (prepared/canonical, models/sasrec)")
    ap.add_argument("--ids", required=True, help="identifier map folder")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="train.seed: the trainer's validation sample")
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--space", default="cid", choices=("cid", "sid"))
    ap.add_argument("--t5-history", default=None, help="a T5 run's history.json: its last row beside")
    args = ap.parse_args(argv)

    work = Path(args.work)
    canon = work / "prepared/canonical"
    items = pd.read_parquet(canon / "items.parquet")
    reqs = valid_rec_requests(work, args.users, args.seed)
    idmap = IdentifierMap.load(args.ids)
    col = "cid" if args.space == "cid" else "sid"
    frame = pd.read_parquet(Path(args.ids) / "identifiers.parquet")
    item_ids = [str(i) for i in items["item_id"]]
    row = {it: j for j, it in enumerate(item_ids)}
    by_item = dict(zip(frame["item_id"].astype(str), frame[col]))
    codes = np.array([list(by_item[it]) for it in item_ids], dtype=np.int64)     # (n_items, depth)
    kinds = idmap.cid_kinds if col == "cid" else idmap.sid_kinds

    sasrec = SASRecRanker(item_ids, str(work / "models/sasrec/model.pt"))
    p = softmax(sasrec.score_rec([history_items(r.history) for r in reqs]).astype(np.float64))   # (n, n_items)
    targets = np.array([row[r.target] for r in reqs])
    acc = level_accuracy(p, codes, targets)
    flat = np.argsort(-p, axis=1, kind="stable")[:, :10]
    flat_r10 = float(np.mean([t in f for t, f in zip(targets, flat)]))
    trie = trie_topk(p, codes, args.beams, 10)
    trie_r10 = float(np.mean([t in f for t, f in zip(targets, trie)]))

    t5 = json.loads(Path(args.t5_history).read_text())[-1] if args.t5_history else {}
    print(f"{len(reqs)} validation rec requests, {len(item_ids)} items, {args.space} depth {codes.shape[1]} "
          f"({'/'.join(kinds)}), codes per level {[len(np.unique(codes[:, t])) for t in range(codes.shape[1])]}")
    print("\n| model | " + " | ".join(f"acc l{t} ({k})" for t, k in enumerate(kinds)) + " | R@10 flat | R@10 trie |")
    print("|---|" + "---|" * (len(kinds) + 2))
    print("| SASRec-CE, marginalised | " + " | ".join(f"{a:.3f}" for a in acc) +
          f" | {flat_r10:.4f} | {trie_r10:.4f} (beam {args.beams}) |")
    if t5:
        task = "rec" if args.space == "cid" else "search"
        print(f"| T5 ({args.t5_history}, minute {t5['train_minutes']:.0f}) | " +
              " | ".join(f"{t5.get(f'valid/{task}/acc_trie/l{t}', float('nan')):.3f}" for t in range(len(kinds))) +
              f" | - | {t5.get(f'valid/{task}/recall@10', float('nan')):.4f} |")


if __name__ == "__main__":
    main()
