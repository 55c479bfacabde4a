"""Search queries for Amazon data, derived from category paths (Ai et al., SIGIR 2017).

Amazon reviews have no search log. The standard construction (used by SESRec, UniSAR and GenSAR)
treats each interaction as a search for a query made from one of the item's category paths:
concatenate the words of a path with at least `min_path_levels` levels, lowercase, drop stop words
and repeated words. Query ids are a stable hash of the text, so the same text always gets the same
id, across runs and machines.

Two ways to turn interactions into events (`queries.mode`):
  paper  every interaction is a rec event AND a search event (twins sharing the step), the search
         using one of the item's queries chosen deterministically from (seed, user, step);
  split  every interaction is a search event with probability `search_prob` (seeded), else a rec event.
Interactions with items that have no valid path are rec events only.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd

from gensar.config import QueriesConfig
from gensar.data.contract import DataError

STOP_WORDS = frozenset([
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "into", "is", "it", "of",
    "on", "or", "the", "to", "with", "without", "your", "you", "our", "&",
])
_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")


def query_from_path(path: list[str]) -> str:
    """'Beauty > Skin Care > Face' -> 'beauty skin care face' (stop words and repeats dropped)."""
    seen: list[str] = []
    for name in path:
        for word in _WORD.findall(name.lower()):
            if word not in STOP_WORDS and word not in seen:
                seen.append(word)
    return " ".join(seen)


def query_id(text: str) -> str:
    """Stable id of a query text: `q` + 16 hex digits of its BLAKE2b hash."""
    return "q" + hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def item_queries(items: pd.DataFrame, min_path_levels: int) -> dict[str, list[str]]:
    """item_id -> list of distinct query texts, one per valid category path (in path order)."""
    out: dict[str, list[str]] = {}
    for item, paths in zip(items["item_id"], items["categories"]):
        texts: list[str] = []
        for path in paths:
            if len(path) >= min_path_levels:
                text = query_from_path(list(path))
                if text and text not in texts:
                    texts.append(text)
        out[item] = texts
    return out


def _uniform(keys: pd.DataFrame, seed: int) -> np.ndarray:
    """A deterministic number in [0, 1) per row of `keys` (a stable hash of the row and the seed)."""
    h = pd.util.hash_pandas_object(keys.assign(_seed=seed), index=False).to_numpy()
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def derive_events(interactions: pd.DataFrame, items: pd.DataFrame,
                  cfg: QueriesConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Turn plain interactions (user_id, item_id, timestamp, step) into rec/search events.

    Returns (events with behavior and query_id, queries table, summary counts).
    """
    if cfg.mode not in ("paper", "split"):
        raise DataError(f"params.yaml: queries.mode must be 'paper' or 'split', got {cfg.mode!r}")
    per_item = item_queries(items, cfg.min_path_levels)
    texts = sorted({t for ts in per_item.values() for t in ts})
    queries = pd.DataFrame({"query_id": [query_id(t) for t in texts], "text": texts})
    # item -> array of its query ids (possibly empty)
    n_q = interactions["item_id"].map(lambda i: len(per_item.get(i, ()))).to_numpy()
    u = _uniform(interactions[["user_id", "step"]], cfg.seed)
    pick = np.minimum((u * np.maximum(n_q, 1)).astype(np.int64), np.maximum(n_q - 1, 0))
    chosen = [query_id(per_item[i][k]) if n else None
              for i, k, n in zip(interactions["item_id"], pick, n_q)]
    has_query = n_q > 0
    base = interactions.assign(query_id=pd.array(chosen, dtype=object))

    if cfg.mode == "paper":
        rec = base.assign(behavior="rec", query_id=None)
        search = base[has_query].assign(behavior="search")
        events = pd.concat([rec, search], ignore_index=True)
    else:
        u2 = _uniform(interactions[["user_id", "step"]], cfg.seed + 1)
        is_search = has_query & (u2 < cfg.search_prob)
        events = base.assign(behavior=np.where(is_search, "search", "rec"))
        events.loc[~is_search, "query_id"] = None
    order = {"rec": 0, "search": 1}
    events = (events.assign(_b=events["behavior"].map(order))
              .sort_values(["user_id", "step", "_b"], kind="stable").drop(columns="_b")
              .reset_index(drop=True))
    rec_only_items = sorted(i for i, ts in per_item.items() if not ts)
    summary = {
        "mode": cfg.mode,
        "queries": len(queries),
        "items_without_query": len(rec_only_items),
        "interactions_rec_only": int((~has_query).sum()),
        "examples_items_without_query": rec_only_items[:5],
    }
    return events, queries, summary
