"""From RQ-VAE codes to unique, fixed-length identifiers.

For each identifier kind (SID, CID) separately:

1. Base codes: the RQ-VAE codes of the identifier's levels (e.g. SID = shared + semantic codes).
2. Sinkhorn-balanced re-assignment of the last level (as LC-Rec / GenSAR): items that share a full
   base identifier are a collision group. Within one prefix (all codes but the last), the items
   whose code is unique keep it; the colliding items are re-assigned among the still free codes of
   the last level by an entropic optimal transport with uniform marginals over the distances of
   their last-level residuals to those codes (log-domain Sinkhorn), rounded greedily to distinct
   codes (largest transport mass first). Only the last level changes, so shared codes stay shared.
3. A final disambiguation code, always present so identifiers have a fixed length: 0 for unique
   identifiers, 0..m-1 within a group of m items that still collide (more colliders than free codes).

Incremental assignment: new items take their base codes from the trained RQ-VAE unchanged and the
smallest disambiguation code not yet used by any existing identifier with the same base codes; the
identifiers of existing items never change.
"""
from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import torch

logger = logging.getLogger(__name__)


def sinkhorn(cost: np.ndarray, epsilon: float, iters: int) -> np.ndarray:
    """Entropic OT plan (n, m) with uniform marginals 1/n (rows) and 1/m (columns), log domain.

    The cost is rescaled to [-1, 1] first (LC-Rec's centring), so `epsilon` is scale-free.
    """
    c = torch.as_tensor(cost, dtype=torch.float64)
    lo, hi = c.min(), c.max()
    c = (c - (hi + lo) / 2) / ((hi - lo) / 2 + 1e-12)
    n, m = c.shape
    log_k = -c / epsilon
    log_a, log_b = torch.full((n,), -np.log(n), dtype=torch.float64), torch.full((m,), -np.log(m), dtype=torch.float64)
    u, v = torch.zeros(n, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    for _ in range(iters):
        u = log_a - torch.logsumexp(log_k + v[None, :], 1)
        v = log_b - torch.logsumexp(log_k + u[:, None], 0)
    return torch.exp(log_k + u[:, None] + v[None, :]).numpy()


def greedy_round(plan: np.ndarray) -> np.ndarray:
    """Distinct column per row (n <= m), taking the largest remaining plan entry first."""
    n, m = plan.shape
    out = np.full(n, -1, dtype=np.int64)
    order = np.argsort(-plan, axis=None, kind="stable")
    used_r, used_c = np.zeros(n, bool), np.zeros(m, bool)
    for flat in order:
        r, c = divmod(int(flat), m)
        if not used_r[r] and not used_c[c]:
            out[r], used_r[r], used_c[c] = c, True, True
            if used_r.all():
                break
    return out


def collision_stats(codes: np.ndarray) -> dict[str, float]:
    """collision_rate = 1 - distinct identifiers / items; colliding_items = share of items in a group of >1."""
    n = len(codes)
    if n == 0:
        return {"collision_rate": 0.0, "colliding_items": 0.0, "max_group": 0}
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return {"collision_rate": 1.0 - len(counts) / n,
            "colliding_items": float((counts[inverse.ravel()] > 1).mean()), "max_group": int(counts.max())}


def sinkhorn_resolve(codes: np.ndarray, last_residual: np.ndarray, codebook: np.ndarray,
                     epsilon: float, iters: int) -> tuple[np.ndarray, int]:
    """Re-assign the last code of colliding items (see module doc). Returns new codes and #moved items."""
    codes = codes.copy()
    size = len(codebook)
    groups = defaultdict(list)                               # prefix -> item rows
    for i, row in enumerate(map(tuple, codes[:, :-1])):
        groups[row].append(i)
    moved = 0
    for rows in groups.values():
        if len(rows) < 2:
            continue
        rows = np.asarray(rows)
        last = codes[rows, -1]
        vals, counts = np.unique(last, return_counts=True)
        if counts.max() < 2:
            continue
        colliding = rows[np.isin(last, vals[counts > 1])]
        taken = set(vals[counts == 1].tolist())
        free = np.array([k for k in range(size) if k not in taken])
        if len(free) == 0:
            continue
        # distances of the colliders' last-level residuals to the free codes: (n_col, n_free)
        r = last_residual[colliding]
        cost = ((r[:, None, :] - codebook[None, free, :]) ** 2).sum(-1)
        movers = colliding
        if len(colliding) > len(free):                      # more colliders than codes: keep the closest ones
            movers = colliding[np.argsort(cost.min(1), kind="stable")[:len(free)]]
            cost = cost[np.isin(colliding, movers)]
        new = free[greedy_round(sinkhorn(cost, epsilon, iters))]
        moved += int((codes[movers, -1] != new).sum())
        codes[movers, -1] = new
    return codes, moved


def disambiguate(codes: np.ndarray, used: dict[tuple, set[int]] | None = None) -> np.ndarray:
    """Append a disambiguation code: the smallest one not used by an identifier with the same base codes.

    `used` maps base codes -> disambiguation codes already taken (existing items, incremental mode);
    it is updated in place. Without it, unique identifiers get 0 and a group of m items 0..m-1.
    """
    used = {} if used is None else used
    d = np.zeros(len(codes), dtype=np.int64)
    for i, row in enumerate(map(tuple, codes)):
        taken = used.setdefault(row, set())
        k = 0
        while k in taken:
            k += 1
        d[i] = k
        taken.add(k)
    return np.concatenate([codes, d[:, None]], 1)


def assign_identifiers(codes: np.ndarray, last_residual: np.ndarray, codebook: np.ndarray,
                       epsilon: float = 0.003, iters: int = 50) -> tuple[np.ndarray, dict]:
    """Unique identifiers (n, L+1) from base codes (n, L): Sinkhorn on the last level, then a disambiguation code."""
    before = collision_stats(codes)
    moved = 0
    if before["collision_rate"] > 0:
        codes, moved = sinkhorn_resolve(codes, last_residual, codebook, epsilon, iters)
    after_sk = collision_stats(codes)
    ids = disambiguate(codes)
    after = collision_stats(ids)
    if after["collision_rate"] > 0:                       # cannot happen: disambiguate makes them unique
        raise RuntimeError("identifier assignment left collisions")
    stats = {"before": before, "after_sinkhorn": after_sk, "after": after, "sinkhorn_moved": moved,
             "disambiguation_max": int(ids[:, -1].max()) if len(ids) else 0}
    return ids, stats


def assign_incremental(existing: np.ndarray, new_codes: np.ndarray) -> np.ndarray:
    """Identifiers for new items (n_new, L+1) given the existing identifiers (n_old, L+1); existing ones untouched."""
    used: dict[tuple, set[int]] = {}
    for row in existing:
        used.setdefault(tuple(row[:-1].tolist()), set()).add(int(row[-1]))
    return disambiguate(new_codes, used)
