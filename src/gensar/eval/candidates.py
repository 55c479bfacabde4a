"""Evaluation cases and their 100-candidate lists, built once with a fixed seed and saved.

An evaluation case is one held-out event (split `valid` or `test`) of one task:

    user_id, step, item_id (the target), query_id (search only), history

`history` is the user's events at steps strictly before the target's step, oldest first (twins in
the order rec, search), each a tuple (behavior, item_id, query text or None, step): the generative
model reads behaviors and queries, score-based baselines take `history_items` (one item per step).
"Strictly before the step" is what keeps the twin event out: in the paper's setup one click is
both a rec and a search event at the same step, and either one in the other's history would leak
the target.

Candidate lists (the paper's sampled protocol), one per case, target included, in a seeded random
order (so ties between candidates are broken randomly, and the same way for every model):

    rec     target + `n-1` random items the user never interacted with (in any split)
    search  target + the `n-1` items BM25 ranks highest for the query, the target excluded
            (hard negatives: mostly items of the same category path)
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from gensar.eval.bm25 import BM25
from gensar.io import write_parquet
from gensar.logs import progress

logger = logging.getLogger(__name__)

CASE_COLUMNS = ["behavior", "split", "user_id", "step", "item_id", "query_id", "history"]


def history_items(history) -> list[str]:
    """Item ids of a history, one per step (the twins of a click count once); bare ids pass through."""
    out, last_step = [], object()
    for ev in history:
        if isinstance(ev, str):
            out.append(ev)
            continue
        step = ev[3] if len(ev) > 3 else object()
        if step != last_step:
            out.append(ev[1])
        last_step = step
    return out


def history_to_records(history) -> list[dict]:
    """Parquet-friendly form of a history (list of structs)."""
    return [{"behavior": b, "item_id": i, "query": q, "step": int(s)} for b, i, q, s in history]


def history_from_records(records) -> list[tuple]:
    return [(r["behavior"], r["item_id"], r["query"], int(r["step"])) for r in records]


def build_cases(interactions: pd.DataFrame, split: str, behavior: str,
                queries: pd.DataFrame | None = None) -> pd.DataFrame:
    """Cases of one split and behavior with their histories (see the module docstring)."""
    for col in ("user_id", "item_id", "step", "behavior", "split"):
        if col not in interactions.columns:
            raise ValueError(f"interactions: missing column '{col}' (need the validated canonical table)")
    qtext = dict(zip(queries["query_id"], queries["text"])) if queries is not None else {}
    ev = interactions.sort_values(["user_id", "step", "behavior"], kind="stable")
    qids = ev["query_id"] if "query_id" in ev.columns else pd.Series([None] * len(ev), index=ev.index)
    seqs: dict[str, tuple[list[int], list[tuple]]] = {}
    for u, it, st, b, q in zip(ev["user_id"], ev["item_id"], ev["step"], ev["behavior"], qids):
        steps, events = seqs.setdefault(u, ([], []))
        steps.append(int(st))
        events.append((b, it, qtext.get(q) if b == "search" else None, int(st)))
    targets = interactions[(interactions["split"] == split) & (interactions["behavior"] == behavior)]
    targets = targets.sort_values(["user_id", "step"], kind="stable")
    histories = []
    for u, s in zip(targets["user_id"], targets["step"]):
        user_steps, events = seqs[u]
        histories.append(events[: int(np.searchsorted(user_steps, s, side="left"))])  # steps < s
    query = targets["query_id"] if "query_id" in targets.columns else pd.Series([None] * len(targets))
    return pd.DataFrame({
        "behavior": behavior, "split": split,
        "user_id": targets["user_id"].to_numpy(), "step": targets["step"].to_numpy().astype(np.int64),
        "item_id": targets["item_id"].to_numpy(), "query_id": query.to_numpy(), "history": histories,
    })


def rec_candidates(cases: pd.DataFrame, interactions: pd.DataFrame, item_ids: list[str],
                   n: int, rng: np.random.Generator) -> list[list[str]]:
    """Target + n-1 uniformly random items the user never interacted with, shuffled."""
    index = {it: i for i, it in enumerate(item_ids)}
    seen = interactions.groupby("user_id")["item_id"].agg(lambda s: {index[x] for x in s}).to_dict()
    n_items = len(item_ids)
    out = []
    for user, target in progress(zip(cases["user_id"], cases["item_id"]), total=len(cases),
                             desc="rec candidates", disable=len(cases) < 5000):
        banned = seen[user] | {index[target]}
        if n_items - len(banned) < n - 1:
            raise ValueError(f"user {user}: only {n_items - len(banned)} unseen items, need {n - 1} negatives")
        negs: list[int] = []
        chosen = set()
        while len(negs) < n - 1:  # rejection sampling: users see a small share of the catalogue
            for j in rng.integers(0, n_items, size=2 * (n - 1 - len(negs)) + 8):
                j = int(j)
                if j not in banned and j not in chosen:
                    chosen.add(j)
                    negs.append(j)
                    if len(negs) == n - 1:
                        break
        cand = [target] + [item_ids[j] for j in negs]
        out.append([cand[j] for j in rng.permutation(n)])
    return out


def search_candidates(cases: pd.DataFrame, item_ids: list[str], item_texts: list[str],
                      query_texts: dict[str, str], n: int, rng: np.random.Generator,
                      bm25: BM25 | None = None) -> list[list[str]]:
    """Target + the n-1 highest BM25 items for the case's query (target excluded), shuffled.

    Equal BM25 scores (common: items of one category path) are ordered by a seeded random
    permutation of the items, so the choice among tied items is random but reproducible.
    """
    bm25 = bm25 or BM25(item_texts)
    tiebreak = rng.permutation(len(item_ids))                         # (n_items,) random priority
    unique_q = sorted(set(cases["query_id"]))
    missing = [q for q in unique_q if q not in query_texts]
    if missing:
        raise ValueError(f"queries: query_id {missing[0]!r} of a search case is not in the queries table")
    top: dict[str, list[int]] = {}
    for start in range(0, len(unique_q), 512):
        chunk = unique_q[start : start + 512]
        scores = bm25.scores([query_texts[q] for q in chunk])          # (chunk, n_items)
        for q, row in zip(chunk, scores):
            order = np.lexsort((tiebreak, -row))[:n]                   # by score desc, then tiebreak
            top[q] = order.tolist()
    out = []
    for q, target in zip(cases["query_id"], cases["item_id"]):
        negs = [item_ids[j] for j in top[q] if item_ids[j] != target][: n - 1]
        cand = [target] + negs
        out.append([cand[j] for j in rng.permutation(len(cand))])
    return out


def make_candidates(interactions: pd.DataFrame, items: pd.DataFrame, queries: pd.DataFrame,
                    splits=("valid", "test"), n: int = 100, seed: int = 0) -> pd.DataFrame:
    """Cases of both tasks for `splits` with their candidate lists (column `candidates`)."""
    rng = np.random.default_rng(seed)
    item_ids = items["item_id"].tolist()
    bm25 = BM25(items["text"].tolist())
    query_texts = dict(zip(queries["query_id"], queries["text"]))
    frames = []
    for split in splits:
        for behavior in ("rec", "search"):
            cases = build_cases(interactions, split, behavior, queries)
            if behavior == "rec":
                cases["candidates"] = rec_candidates(cases, interactions, item_ids, n, rng)
            else:
                cases["candidates"] = search_candidates(cases, item_ids, items["text"].tolist(),
                                                        query_texts, n, rng, bm25)
            logger.info("candidates: %s/%s %d cases x %d candidates", split, behavior, len(cases), n)
            frames.append(cases)
    return pd.concat(frames, ignore_index=True)[CASE_COLUMNS + ["candidates"]]


def fingerprint(interactions: pd.DataFrame, items: pd.DataFrame, n: int, seed: int) -> str:
    """Hash of what the candidate lists depend on: the events with their splits, the items, n, seed."""
    import hashlib

    h = hashlib.sha1(f"{n}|{seed}|".encode())
    cols = [c for c in ("user_id", "item_id", "step", "behavior", "query_id", "split") if c in interactions]
    h.update(pd.util.hash_pandas_object(interactions[cols].astype(str), index=False).to_numpy().tobytes())
    h.update(pd.util.hash_pandas_object(items[["item_id", "text"]].astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()


def ensure_candidates(interactions: pd.DataFrame, items: pd.DataFrame, queries: pd.DataFrame,
                      out_dir, n: int = 100, seed: int = 0) -> pd.DataFrame:
    """Load `out_dir/candidates.parquet` if it was built from these tables, else build and save it.

    Writes candidates.parquet (valid and test cases of both tasks) and meta.json (n, seed,
    fingerprint, counts). Rebuilding with the same tables and seed gives the same lists.
    """
    import json
    from pathlib import Path

    from gensar.io import write_json

    out_dir = Path(out_dir)
    fp = fingerprint(interactions, items, n, seed)
    meta_path, path = out_dir / "meta.json", out_dir / "candidates.parquet"
    if meta_path.exists() and path.exists() and json.loads(meta_path.read_text()).get("fingerprint") == fp:
        logger.info("candidates: reusing %s (fingerprint %s)", path, fp[:12])
        return read_candidates(path)
    cands = make_candidates(interactions, items, queries, n=n, seed=seed)
    write_parquet(cands.assign(history=cands["history"].map(history_to_records)), path)
    counts = cands.groupby(["split", "behavior"]).size()
    write_json({"n_candidates": n, "seed": seed, "fingerprint": fp,
                "cases": {f"{s}/{b}": int(c) for (s, b), c in counts.items()},
                "protocol": {"rec": "target + random items the user never interacted with",
                             "search": "target + top BM25 items for the query (target excluded)"}},
               meta_path)
    logger.info("candidates: wrote %s (%d cases)", path, len(cands))
    return cands


def read_candidates(path) -> pd.DataFrame:
    """candidates.parquet back to the in-memory form (python lists, history events as tuples)."""
    cands = pd.read_parquet(path)
    cands["history"] = cands["history"].map(history_from_records)
    cands["candidates"] = cands["candidates"].map(list)
    return cands
