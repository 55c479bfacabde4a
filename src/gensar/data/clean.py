"""Text cleaning for item fields: HTML entities and tags, invisible characters, whitespace, length.

Real Amazon titles carry entities (`AT&amp;T`, sometimes double-escaped `&amp;amp;`), stray markup
(`<br />`, `<b>`), runs of spaces and descriptions thousands of characters long. The encoders only
need a clean, bounded text, so every item field goes through `clean_text` and the `text` column is
built by `item_text` and truncated on a word boundary.
"""
from __future__ import annotations

import html
import math
import re

import pandas as pd

_TAG = re.compile(r"<[^<>]{0,200}>")
_SPACE = re.compile(r"\s+")
# characters nobody reads: C0/C1 controls (tabs and newlines are spaces, collapsed below), zero-width
# and joiner characters, bidi marks, embeddings, overrides and isolates, the BOM, lone surrogates
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f"
                        "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]")


def clean_text(value) -> str:
    """Unescape HTML entities (repeatedly, for double-escaped text), drop tags, collapse whitespace."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):  # Amazon 2018 descriptions are lists of paragraphs
        value = " ".join(str(v) for v in value)
    text = str(value)
    for _ in range(3):  # `&amp;amp;` -> `&amp;` -> `&`
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = _INVISIBLE.sub("", _TAG.sub(" ", text))
    return _SPACE.sub(" ", text).strip()


def truncate(text: str, max_chars: int) -> str:
    """Cut `text` to at most `max_chars` characters, at the last word boundary when there is one."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space >= max_chars // 2:  # a boundary not too far back; otherwise a hard cut
        cut = cut[:space]
    return cut.rstrip(" ,;:-")


def item_text(row, max_chars: int = 512) -> str:
    """The text the encoders read: `title. Brand: b. Category: a > b > c; d > e. description`."""
    parts = [row["title"]]
    if row["brand"]:
        parts.append(f"Brand: {row['brand']}")
    paths = [" > ".join(p) for p in row["categories"] if len(p)]
    if paths:
        parts.append("Category: " + "; ".join(paths))
    if row["description"]:
        parts.append(row["description"])
    text = ". ".join(p for p in parts if p)
    return truncate(text, max_chars)


def clean_items(items: pd.DataFrame, max_chars: int) -> pd.DataFrame:
    """Clean title/description/brand and category names (each cut to `max_chars` like `text`: they
    are served as they are), and add the `text` column."""
    out = items.copy()
    for col in ("title", "description", "brand"):
        out[col] = out[col].map(lambda v: truncate(clean_text(v), max_chars)).astype(object)
    out["categories"] = out["categories"].map(
        lambda paths: [[c for c in (clean_text(n) for n in path) if c] for path in paths])
    out["categories"] = out["categories"].map(lambda paths: [p for p in paths if p])
    out["text"] = [item_text(r, max_chars) for r in out[["title", "description", "brand", "categories"]]
                   .to_dict("records")]
    return out
