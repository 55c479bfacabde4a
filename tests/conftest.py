"""Shared fixtures: tiny input folders written by the tests themselves (no real data needed)."""
from __future__ import annotations

import dataclasses
import gzip
import json

import pandas as pd
import pytest

# Prefect's events fixtures: capture emitted events without a server (tasks.notify)
from prefect.testing.fixtures import asserting_events_worker, mock_should_emit_events  # noqa: F401

from gensar.config import Params, SyntheticConfig


@pytest.fixture
def params() -> Params:
    """Default params with a tiny synthetic dataset (fast everywhere)."""
    p = Params()
    syn = SyntheticConfig(n_users=40, n_items=30, n_topics=4, events_per_user=(4, 8), seed=0)
    return dataclasses.replace(p, data=dataclasses.replace(p.data, synthetic=syn))


def write_log(folder, interactions: list[tuple], items: list[dict], fmt: str = "csv"):
    """A platform log: interactions (user, item, timestamp, behavior, query) + items."""
    folder.mkdir(parents=True, exist_ok=True)
    inter = pd.DataFrame(interactions, columns=["user", "item", "timestamp", "behavior", "query"])
    meta = pd.DataFrame(items)
    if fmt == "csv":
        inter.to_csv(folder / "interactions.csv", index=False)
        meta.to_csv(folder / "items.csv", index=False)
    else:
        inter.to_parquet(folder / "interactions.parquet", index=False)
        meta.to_parquet(folder / "items.parquet", index=False)
    return folder


def small_log(n_users: int = 6, n_items: int = 5, events: int = 5) -> tuple[list[tuple], list[dict]]:
    """A clean log: every user clicks `events` items, alternating rec and search."""
    items = [{"item_id": f"i{i}", "title": f"Item {i} &amp; co", "description": "<b>nice</b> thing",
              "brand": "B", "categories": "Home > Kitchen > Mugs"} for i in range(n_items)]
    inter = [(f"u{u}", f"i{(u + k) % n_items}", 1_600_000_000 + 100 * k,
              "search" if k % 2 else "rec", "kitchen mugs" if k % 2 else "")
             for u in range(n_users) for k in range(events)]
    return inter, items


def write_shared(folder, name: str, inter: dict, items: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter.json").write_text(json.dumps(inter))
    (folder / f"{name}.item.json").write_text(json.dumps(items))
    return folder


def write_lines(path, lines: list[str]):
    """JSON-lines (or dict-literal lines), gzipped when the name ends with .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data)
    return path


# one valid Amazon 2014 metadata line (a Python dict literal, as in the real dumps)
AMAZON_META_OK = [str({"asin": "x", "title": "X", "categories": [["Toys", "Games"]]})]
