"""Where does a trained T5 put the mass of the items it ranks above the target? Exact path scores.

Beam search ranks an item by the sum of its code log-probabilities along its identifier path, so
a competitor wins on the levels where its path leaves the target's. For the validation rec
requests of `--users` users (the trainer's validation sample), the T5 scores, teacher-forced, the
CID paths of a candidate set (the target + SASRec-CE's top `--top` other items), and SASRec-CE's
item softmax is marginalised to the same per-level conditionals (as `benchmarks/code_ceiling.py`):

    T5 decoded  log_softmax over level t's codes at the path's prefix (what the beam adds up)
    T5 in trie  the same renormalised over the codes the trie allows after that prefix
    SASRec      log p(code_t | prefix) = log mass(prefix + code) - log mass(prefix)

Printed: candidate-set R@5 / R@10 / N@10 of each score (the same candidates, so the gap between
T5 and SASRec here is the gap of path scores, not of the beam); the T5's mass outside the trie on the
target path; for pairs (request, item) that the T5 ranks above the target and SASRec-CE does not,
grouped by the level d where the item's path leaves the target's, the mean excess of each level
t >= d, (T5_t(item) - T5_t(target)) - (SASRec_t(item) - SASRec_t(target)), whose sum over t is how
much more the T5 prefers the item than SASRec does; and the mean |T5 in trie - SASRec| of the
conditionals on the target's path and on the candidates' paths below a code that left it.

    python benchmarks/path_scores.py --work OFFICE_WORK --model OFFICE_WORK/variants/gensar-joint/t5 \
        --users 1000 [--top 200]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gensar.eval.baselines import SASRecRanker
from gensar.eval.candidates import history_items
from gensar.model.distill import prefix_groups
from gensar.model.generate import GenSARModel
from gensar.model.levels import decoder_hidden
from gensar.model.t5 import encode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from code_ceiling import valid_rec_requests


def trie_children(codes: np.ndarray, groups: list[np.ndarray], widths: list[int]) -> list[torch.Tensor]:
    """Per depth t a [prefix groups, widths[t]] mask: the codes the trie allows after each prefix."""
    out = []
    for t in range(codes.shape[1]):
        allowed = torch.zeros(groups[t].max() + 1, widths[t], dtype=torch.bool)
        allowed[torch.as_tensor(groups[t]), torch.as_tensor(codes[:, t])] = True
        out.append(allowed)
    return out


def sasrec_conditionals(p: torch.Tensor, codes: np.ndarray, groups: list[np.ndarray], rows: np.ndarray
                        ) -> torch.Tensor:
    """p [n, N] item probabilities; rows [n, C] candidate item rows -> [n, C, depth] log p(code_t | prefix)."""
    depth = codes.shape[1]
    full = groups[1:] + [np.arange(len(codes))]          # group of each item's first t+1 codes
    out = []
    for t in range(depth):
        above = torch.zeros(len(p), groups[t].max() + 1, dtype=p.dtype).index_add_(1, torch.as_tensor(groups[t]), p)
        below = torch.zeros(len(p), full[t].max() + 1, dtype=p.dtype).index_add_(1, torch.as_tensor(full[t]), p)
        g_above = torch.as_tensor(groups[t][rows])        # [n, C]
        g_below = torch.as_tensor(full[t][rows])
        out.append(below.gather(1, g_below).log() - above.gather(1, g_above).log())
    return torch.stack(out, -1)


@torch.no_grad()
def t5_conditionals(gm: GenSARModel, sources: list[str], paths: torch.Tensor, codes: np.ndarray,
                    groups: list[np.ndarray], children: list[torch.Tensor], rows: np.ndarray
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """paths [n, C, depth] decoder token ids of each request's candidates -> (decoded, in_trie), each
    [n, C, depth]: the log-probability of the path's code at depth t over the level's codes, and
    renormalised over the codes the trie allows after the path's prefix (`children`)."""
    model, levels = gm.model, gm.levels
    n, C, depth = paths.shape
    enc = gm.encode_sources(sources)
    states = encode(model, enc["input_ids"], enc["attention_mask"], causal=gm.cfg.causal)   # [n, S, D]
    dec = decoder_hidden(model, states.repeat_interleave(C, 0), enc["attention_mask"].repeat_interleave(C, 0),
                         paths.reshape(n * C, depth))                                # [n*C, depth, D]
    weight = model.lm_head.weight
    decoded, in_trie = [], []
    for t in range(depth):
        toks = torch.as_tensor(levels.space["cid"][t])
        logp = torch.log_softmax(dec[:, t] @ weight[toks].T, -1)                    # [n*C, K]
        code = torch.as_tensor(codes[rows.reshape(-1), t])
        # the codes the trie allows after each path's prefix: the codes of the items in its prefix group
        g = torch.as_tensor(groups[t][rows.reshape(-1)])
        own = logp.gather(1, code[:, None]).squeeze(1)
        decoded.append(own)
        in_trie.append(own - torch.logsumexp(logp.masked_fill(~children[t][g], float("-inf")), -1))
    return (torch.stack(decoded, -1).view(n, C, depth), torch.stack(in_trie, -1).view(n, C, depth))


def rank_metrics(score: torch.Tensor) -> tuple[float, float, float]:
    """score [n, C] with the target in column 0 -> R@5, R@10, N@10 of the target among the C."""
    rank = 1 + (score[:, 1:] > score[:, :1]).sum(1).double()
    ndcg = torch.where(rank <= 10, 1 / torch.log2(rank + 1), torch.zeros_like(rank))
    return (float((rank <= 5).double().mean()), float((rank <= 10).double().mean()), float(ndcg.mean()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="prepared work dir (prepared/canonical, models/sasrec)")
    ap.add_argument("--model", required=True, help="a trained T5 folder (its identifier map saved with it)")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="train.seed: the trainer's validation sample")
    ap.add_argument("--top", type=int, default=200, help="SASRec-CE's top items besides the target")
    ap.add_argument("--batch", type=int, default=4, help="requests per forward pass")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()

    gm = GenSARModel.load(args.model)
    if gm.levels is None:
        raise SystemExit(f"{args.model}: trained with id_loss full; path scores need id_loss: level")
    gm.model.eval()
    item_ids = list(gm.ids.item_ids)
    tokens = np.array([gm.codes["cid"][i] for i in item_ids], dtype=np.int64)      # [N, depth] token ids
    codes = gm.levels.local_of[tokens]                                              # [N, depth] local codes
    groups = prefix_groups(codes)
    children = trie_children(codes, groups, [len(g) for g in gm.levels.space["cid"]])
    row = {it: j for j, it in enumerate(item_ids)}
    depth = codes.shape[1]

    reqs = valid_rec_requests(Path(args.work), args.users, args.seed)
    sasrec = SASRecRanker(item_ids, str(Path(args.work) / "models/sasrec/model.pt"))
    p = torch.softmax(torch.as_tensor(np.asarray(sasrec.score_rec([history_items(r.history) for r in reqs]),
                                                 dtype=np.float64)), -1)                          # [n, N]
    targets = np.array([row[r.target] for r in reqs])
    others = p.clone()
    others[torch.arange(len(reqs)), torch.as_tensor(targets)] = -1
    rows = np.concatenate([targets[:, None], others.topk(args.top, -1).indices.numpy()], 1)    # [n, C]
    sas = sasrec_conditionals(p, codes, groups, rows)                                          # [n, C, depth]

    sources = gm.sources("rec", [r.history for r in reqs])
    dec, trie = [], []
    for i in range(0, len(reqs), args.batch):
        r = rows[i:i + args.batch]
        d, tr = t5_conditionals(gm, sources[i:i + args.batch], torch.as_tensor(tokens[r]), codes, groups,
                                children, r)
        dec.append(d.double())
        trie.append(tr.double())
    dec, trie = torch.cat(dec), torch.cat(trie)

    print(f"{len(reqs)} validation rec requests, {len(item_ids)} items, CID depth {depth}, candidates = target + "
          f"SASRec-CE top {args.top}; {time.perf_counter() - t0:.0f} s\n")
    print("| score of the candidates | R@5 | R@10 | N@10 |\n| --- | --- | --- | --- |")
    for name, s in (("T5, as decoded", dec.sum(-1)), ("T5, renormalised in the trie", trie.sum(-1)),
                    ("SASRec-CE", sas.sum(-1))):
        print(f"| {name} | " + " | ".join(f"{m:.4f}" for m in rank_metrics(s)) + " |")
    outside = 1 - (dec[:, 0] - trie[:, 0]).exp()                                    # [n, depth], target path
    print("\nT5 mass outside the trie on the target path, per level: "
          + " / ".join(f"l{t} {float(outside[:, t].mean()):.3f}" for t in range(depth)))

    # where each candidate's path leaves the target's (depth = the target itself)
    leave = torch.as_tensor(np.argmax(np.concatenate([codes[rows] != codes[rows[:, :1]],
                                                      np.ones(rows.shape + (1,), bool)], -1), -1))    # [n, C]
    wins = (dec.sum(-1) > dec[:, :1].sum(-1)) & (sas.sum(-1) <= sas[:, :1].sum(-1))
    wins[:, 0] = False
    excess = (dec - dec[:, :1]) - (sas - sas[:, :1])                                # [n, C, depth]
    print("\nPairs the T5 ranks above the target and SASRec-CE does not, by the level where the item's path "
          "leaves the target's; mean excess of each level (T5 margin - SASRec margin):\n")
    print("| leaves at | pairs | " + " | ".join(f"l{t}" for t in range(depth)) + " | sum |")
    print("| --- | --- | " + "--- | " * depth + "--- |")
    for d in range(depth):
        sel = wins & (leave == d)
        if not sel.any():
            continue
        e = excess[sel]                                                             # [pairs, depth]
        print(f"| l{d} | {int(sel.sum())} | " + " | ".join("" if t < d else f"{float(e[:, t].mean()):.3f}"
                                                         for t in range(depth)) + f" | {float(e.sum(1).mean()):.3f} |")

    gap = (trie - sas).abs()                                                        # [n, C, depth]
    level = torch.arange(depth)
    off = (level[None, None, :] > leave[:, :, None])                                # below a code that left the path
    print("\nMean |T5 in trie - SASRec-CE| of log p(code_t | prefix) (std; positions):\n")
    print("| path | " + " | ".join(f"l{t}" for t in range(depth)) + " |\n| --- |" + " --- |" * depth)
    for name, mask in (("target's", torch.zeros_like(off).index_fill_(1, torch.tensor([0]), True)),
                       ("below a code off the target's", off)):
        cells = []
        for t in range(depth):
            v = gap[..., t][mask[..., t]]
            cells.append(f"{float(v.mean()):.3f} ({float(v.std()):.3f}; {v.numel():,})" if v.numel() else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
