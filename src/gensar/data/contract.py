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
    query_id     str   unique; 'q' + 16 hex digits of the BLAKE2b hash of the text (stable)
    text         str   non-empty, lowercase

prepared/ingested/ holds the same three tables before validation, items and interactions with two
more columns, `source_file` (the raw file a row came from, as the ingest stage saw it, e.g.
`data/batches/week1/interactions.csv`) and `source_row` (1-based: the data row of a CSV or Parquet
file without the header, the line of a JSON-lines file, the position in a user's list of a shared
`.inter.json`), so that quarantine and error messages point where a user can look. No `split`, `timestamp` is
float64 there (NaN marks a missing or unparsable time, quarantined by validate), steps may have
gaps after quarantine and are renumbered densely in prepared/canonical/. In a platform log every
row is its own step (no twins); in Amazon/shared data `queries.mode` decides (see queries.py).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

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
SOURCE_COLUMNS = ["source_file", "source_row"]   # ingested items and interactions only
QUERY_COLUMNS = {"query_id": "string", "text": "string"}

BEHAVIORS = ("rec", "search")
SPLITS = ("train", "valid", "test")

TABLES = {"items": ITEM_COLUMNS, "interactions": INTERACTION_COLUMNS, "queries": QUERY_COLUMNS}


class DataError(ValueError):
    """The input cannot be turned into the canonical tables (structural problem or too many bad rows).

    Messages name the file, the column or field, and a few example rows, so a user can fix the input.
    `details` (JSON-friendly) carries what a report of the rejection shows: counts, reasons, examples.
    """

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


def examples(values, n: int = 3) -> str:
    """A short, readable list of up to `n` example values for error messages."""
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:n])
    more = f" (and {len(values) - n} more)" if len(values) > n else ""
    return f"[{shown}]{more}"


@dataclasses.dataclass
class Tables:
    """The three canonical tables (pandas DataFrames), in memory."""

    items: pd.DataFrame
    interactions: pd.DataFrame
    queries: pd.DataFrame
    info: dict = dataclasses.field(default_factory=dict)  # how they were made (format, counts, ...)

    def write(self, folder) -> None:
        """Write `<folder>/{items,interactions,queries}.parquet` (the caller makes `folder` atomic)."""
        from pathlib import Path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            getattr(self, name).to_parquet(folder / f"{name}.parquet", index=False)

    @classmethod
    def read(cls, folder) -> Tables:
        """Read the three tables from `folder`; a missing or unreadable file is a DataError naming it."""
        from pathlib import Path

        import pandas as pd

        frames = {}
        for name in TABLES:
            path = Path(folder) / f"{name}.parquet"
            if not path.exists():
                raise DataError(f"{path}: file not found (run the previous stage first)")
            try:
                frames[name] = pd.read_parquet(path)
            except (OSError, ValueError) as e:  # pyarrow: ArrowInvalid (a ValueError), ArrowIOError
                raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
        return cls(**frames)
