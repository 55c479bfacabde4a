"""Ranking metrics for single-target evaluation: one implementation for every model and protocol.

Every evaluation case has exactly one relevant item (the held-out target). A model returns a ranked
list of item ids; all we need from it is the 1-based `rank` of the target in that list (0 when the
target is not in the list, i.e. rank > len(list)). From the rank:

    HR@k     = Recall@k = 1[rank <= k]                      (one relevant item: hit rate == recall)
    NDCG@k   = 1 / log2(rank + 1)  if rank <= k, else 0     (ideal DCG of one relevant item is 1)

and each metric is the mean over cases. Two protocols, with stable metric names
`<task>/<protocol>/<metric>@<k>`:

    sampled  the paper's (GenSAR, UniSAR): rank among 100 candidates (target + 99 negatives),
             reported as hr@1, hr@5, hr@10, ndcg@5, ndcg@10
    full     ranking over all items (TIGER, LC-Rec, LETTER): recall@5, recall@10, ndcg@5, ndcg@10

e.g. `rec/full/recall@10`, `search/sampled/hr@10`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PROTOCOL_METRICS = {
    "sampled": (("hr", 1), ("hr", 5), ("hr", 10), ("ndcg", 5), ("ndcg", 10)),
    "full": (("recall", 5), ("recall", 10), ("ndcg", 5), ("ndcg", 10)),
}
MAX_K = 10  # the deepest cut-off any protocol reports: models only need to return this many items


def target_ranks(ranked: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """1-based rank of `targets[i]` in `ranked[i]`; 0 where the target is absent.

    ranked: n lists of item ids, best first (lists may have different lengths)
    returns: (n,) int64
    """
    if len(ranked) != len(targets):
        raise ValueError(f"target_ranks: {len(ranked)} ranked lists for {len(targets)} targets")
    ranks = np.zeros(len(targets), dtype=np.int64)
    for i, (lst, t) in enumerate(zip(ranked, targets)):
        for r, item in enumerate(lst):
            if item == t:
                ranks[i] = r + 1
                break
    return ranks


def ranks_from_matrix(ranked_idx: np.ndarray, target_idx: np.ndarray) -> np.ndarray:
    """Vectorised `target_ranks` for integer ids: ranked_idx (n, k), target_idx (n,) -> (n,) ranks."""
    hits = ranked_idx == target_idx[:, None]                       # (n, k) bool
    return np.where(hits.any(1), hits.argmax(1) + 1, 0).astype(np.int64)


def hit_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """1[0 < rank <= k] per case: HR@k, also Recall@k for a single target."""
    return ((ranks > 0) & (ranks <= k)).astype(np.float64)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """1/log2(rank+1) where 0 < rank <= k, else 0, per case (ideal DCG of one target is 1)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    gain = 1.0 / np.log2(np.maximum(ranks, 1.0) + 1.0)
    return np.where((ranks > 0) & (ranks <= k), gain, 0.0)


def metrics_from_ranks(ranks: np.ndarray, protocol: str, task: str) -> dict[str, float]:
    """Mean metrics of one task under one protocol, keyed `<task>/<protocol>/<metric>@<k>`."""
    if protocol not in PROTOCOL_METRICS:
        raise ValueError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOL_METRICS)})")
    ranks = np.asarray(ranks)
    out = {}
    for name, k in PROTOCOL_METRICS[protocol]:
        per_case = ndcg_at(ranks, k) if name == "ndcg" else hit_at(ranks, k)
        out[f"{task}/{protocol}/{name}@{k}"] = float(per_case.mean()) if len(ranks) else 0.0
    return out


def standard_errors(ranks: np.ndarray, protocol: str, task: str) -> dict[str, float]:
    """Standard error of each mean in `metrics_from_ranks` (std of the per-case values / sqrt(n)):
    how far a metric moves with the sample of test cases alone. The quality gate uses it."""
    ranks = np.asarray(ranks)
    out = {}
    for name, k in PROTOCOL_METRICS[protocol]:
        per_case = ndcg_at(ranks, k) if name == "ndcg" else hit_at(ranks, k)
        out[f"{task}/{protocol}/{name}@{k}"] = float(per_case.std(ddof=1) / np.sqrt(len(ranks))) if len(ranks) > 1 else 0.0
    return out


def topk_from_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k highest scores per row, best first; ties go to the lower column.

    scores: (n, m) -> (n, min(k, m)) int64. A stable sort on -score makes tie-breaking
    deterministic: candidate lists are saved in a seeded random order, so for them this is
    random tie-breaking that every model shares.
    """
    k = min(k, scores.shape[1])
    if scores.shape[1] > 4 * k:  # partial selection first, then an exact stable sort of the shortlist
        # keep every column scoring >= the k-th best so ties at the boundary are resolved by column
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]     # (n, 1)
        out = np.empty((scores.shape[0], k), dtype=np.int64)
        for i in range(scores.shape[0]):
            cols = np.flatnonzero(scores[i] >= kth[i, 0])              # ascending column order
            order = np.argsort(-scores[i, cols], kind="stable")[:k]
            out[i] = cols[order]
        return out
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)
