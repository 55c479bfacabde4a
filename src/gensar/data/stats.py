"""Dataset statistics of the canonical tables (written to metrics/data.json, a DVC metric)."""
from __future__ import annotations

import numpy as np

from gensar.data.contract import Tables

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def dataset_stats(tables: Tables) -> dict:
    """Users, items, queries, events per behavior and split, history-length quantiles."""
    inter = tables.interactions
    steps = inter.groupby("user_id")["step"].nunique()  # history length = clicks of a user
    out = {
        "users": int(inter["user_id"].nunique()),
        "items": len(tables.items),
        "items_interacted": int(inter["item_id"].nunique()),
        "queries": len(tables.queries),
        "queries_used": int(inter["query_id"].dropna().nunique()),
        "steps": len(inter[["user_id", "step"]].drop_duplicates()),
        "events": len(inter),
        "events_per_behavior": {b: int(n) for b, n in inter["behavior"].value_counts().sort_index().items()},
    }
    if "split" in inter:
        table = inter.groupby(["behavior", "split"]).size()
        out["events_per_split"] = {b: {s: int(table.get((b, s), 0)) for s in ("train", "valid", "test")}
                                   for b in sorted(inter["behavior"].unique())}
    out["history_length"] = {f"p{int(q * 100)}": float(steps.quantile(q)) for q in QUANTILES}
    out["history_length"].update(mean=round(float(steps.mean()), 3) if len(steps) else 0.0,
                                 max=int(steps.max()) if len(steps) else 0)
    has_query = inter.loc[inter["behavior"] == "search", "item_id"].unique()
    out["items_without_search"] = len(np.setdiff1d(tables.items["item_id"].to_numpy(dtype=str),
                                                   np.asarray(has_query, dtype=str)))
    return out


def stats_markdown(stats: dict) -> str:
    """A two-column Markdown table of the statistics (nested keys flattened with '/')."""
    rows = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else k, v)
        else:
            rows.append(f"| {prefix} | {value:,} |" if isinstance(value, int) else f"| {prefix} | {value} |")

    walk("", stats)
    return "\n".join(["| statistic | value |", "| --- | --- |", *rows])
