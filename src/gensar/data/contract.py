"""The canonical data contract. Every stage after ingestion reads only these three tables.

items.parquet
    item_id      str   unique, non-empty
    title        str   cleaned (HTML entities and tags removed, whitespace collapsed)
    description  str   cleaned, may be empty
    brand        str   cleaned, may be empty
    categories   list[list[str]]  category paths, most general name first (may be empty)
    text         str   cleaned text the encoders read: title, brand, categories, description,
                       truncated to `data.text_max_chars`; never empty

interactions.parquet
    user_id      str
    item_id      str   must exist in items
    timestamp    int64 unix seconds, or the position in the user's sequence when the source has
                       no time (shared Amazon format)
    step         int64 0-based index of the user's step in time order; the twin events of one step
                       (paper mode: the rec and the search event of one click) share it
    behavior     str   'rec' or 'search'
    query_id     str   the query of a search event; null for rec events
    split        str   'train' | 'valid' | 'test' (added by the validate stage: leave-one-out
                       per user and behavior, the last event is test, the second last valid)

queries.parquet
    query_id     str   unique
    text         str   non-empty, lowercase
"""
from __future__ import annotations

ITEM_COLUMNS = {
    "item_id": "string",
    "title": "string",
    "description": "string",
    "brand": "string",
    "categories": "list",
    "text": "string",
}
INTERACTION_COLUMNS = {
    "user_id": "string",
    "item_id": "string",
    "timestamp": "int64",
    "step": "int64",
    "behavior": "string",
    "query_id": "string",
}
SPLIT_COLUMN = "split"
QUERY_COLUMNS = {"query_id": "string", "text": "string"}

BEHAVIORS = ("rec", "search")
SPLITS = ("train", "valid", "test")

TABLES = {"items": ITEM_COLUMNS, "interactions": INTERACTION_COLUMNS, "queries": QUERY_COLUMNS}
