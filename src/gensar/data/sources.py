"""Ingestion adapters: a raw snapshot folder -> the canonical tables (before validation).

Three input formats (`data.format`, `auto` detects them from the file names):

  shared  `<name>.inter.json` ({user: [item, ...]} in time order) + `<name>.item.json`
          ({item: {title, categories, description, brand}}), the format of ../shared/data/.
  amazon  raw Amazon review dumps as downloaded: reviews `reviews_<Cat>_5.json.gz` (2014) or
          `<Cat>_5.json.gz` / `<Cat>.json.gz` (2018), JSON lines with reviewerID, asin, unixReviewTime; metadata
          `meta_<Cat>.json.gz`, JSON lines (2018) or Python dict literals (2014, parsed with
          `ast.literal_eval`, never `eval`). Iterative k-core filtering (`data.k_core`).
  log     a platform's own logs: `interactions.csv|parquet` (user, item, timestamp, behavior, query)
          + `items.csv|parquet` (item_id, title[, description, brand, categories]); categories in
          CSV are a JSON list of paths or a 'A > B > C | D > E' string.

Incremental batches in `<snapshot>/batches/<name>/` (same format as the base, read in name order)
are appended: their new items and all their interactions. Amazon and shared data have no queries;
they are derived from category paths (`gensar.data.queries`). Structural problems raise `DataError`
naming the file, the field and example rows; row problems are left for the validate stage.
"""
from __future__ import annotations

import ast
import gzip
import json
import logging
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from gensar.config import DataConfig, QueriesConfig
from gensar.data.clean import clean_items, clean_text
from gensar.data.contract import SOURCE_COLUMNS, DataError, Tables, examples
from gensar.data.queries import derive_events, query_id
from gensar.logs import progress

logger = logging.getLogger(__name__)

FORMATS = ("shared", "amazon", "log")
RAW_ITEM_COLUMNS = ["item_id", "title", "description", "brand", "categories", *SOURCE_COLUMNS]


# --------------------------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------------------------
def _shared_names(folder: Path) -> list[str]:
    names = [p.name[: -len(".inter.json")] for p in folder.glob("*.inter.json")]
    return sorted(n for n in names if (folder / f"{n}.item.json").exists())


def _amazon_files(folder: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and re.search(r"\.json(\.gz)?$", p.name))
    meta = [p for p in files if p.name.startswith("meta_")]
    # reviews: reviews_<Cat>_5.json.gz (2014), <Cat>_5.json.gz or the full <Cat>.json.gz (2018)
    reviews = [p for p in files if not p.name.startswith("meta_")
               and not re.search(r"\.(inter|item)\.json$", p.name)]
    return reviews, meta


def _log_file(folder: Path, stem: str) -> Path | None:
    for ext in (".parquet", ".csv"):
        if (folder / f"{stem}{ext}").exists():
            return folder / f"{stem}{ext}"
    return None


def detect_format(folder: Path) -> str:
    """Guess the format of a snapshot folder from its file names."""
    if _shared_names(folder):
        return "shared"
    if _log_file(folder, "interactions"):
        return "log"
    reviews, meta = _amazon_files(folder)
    if reviews or meta:
        return "amazon"
    found = sorted(p.name for p in folder.iterdir())[:10]
    raise DataError(
        f"{folder}: no known input format. Expected <name>.inter.json + <name>.item.json (shared), "
        f"reviews_<Cat>_5.json.gz + meta_<Cat>.json.gz (amazon) or interactions.csv|parquet + "
        f"items.csv|parquet (log); found {found}")


# --------------------------------------------------------------------------------------------
# readers: each returns (items, interactions) in a raw shape
#   items:        item_id, title, description, brand, categories (list of paths; not yet cleaned)
#   interactions: user_id, item_id, timestamp (float, NaN = unknown/bad), behavior, query
# --------------------------------------------------------------------------------------------
def _load_json(path: Path):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def _check_paths(item, paths, path: Path, field: str):
    """Category paths must be a list of lists of strings."""
    if paths is None:
        return []
    if not isinstance(paths, list) or not all(
            isinstance(p, list) and all(isinstance(c, str) for c in p) for p in paths):
        raise DataError(f"{path}: field '{field}' of item {item!r} must be a list of category paths "
                        f"(lists of strings), got {str(paths)[:80]!r}")
    return paths


def read_shared(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    frames_items, frames_inter = [], []
    for name in _shared_names(folder):
        inter_path, item_path = folder / f"{name}.inter.json", folder / f"{name}.item.json"
        inter = _load_json(inter_path)
        if not isinstance(inter, dict):
            raise DataError(f"{inter_path}: top level must be an object {{user_id: [item_id, ...]}}, "
                            f"got {type(inter).__name__}")
        bad = [u for u, seq in inter.items() if not isinstance(seq, list)]
        if bad:
            raise DataError(f"{inter_path}: the value of each user must be a list of item ids; "
                            f"not a list for users {examples(bad)}")
        lengths = np.fromiter((len(s) for s in inter.values()), dtype=np.int64, count=len(inter))
        flat = [i for seq in inter.values() for i in seq]
        frames_inter.append(pd.DataFrame({
            "user_id": np.repeat(np.array(list(inter.keys()), dtype=object), lengths),
            "item_id": pd.Series(flat, dtype=object).astype(str).to_numpy(),
            "timestamp": np.nan,     # position only: filled in by `_order_events`
            "behavior": None, "query": None,
            # where a user finds the row: the file, and the event's position in the user's list
            "source_file": str(inter_path),
            "source_row": np.concatenate([np.arange(1, n + 1) for n in lengths]) if len(lengths) else [],
        }))
        meta = _load_json(item_path)
        if not isinstance(meta, dict):
            raise DataError(f"{item_path}: top level must be an object {{item_id: {{title, ...}}}}, "
                            f"got {type(meta).__name__}")
        bad = [k for k, v in meta.items() if not isinstance(v, dict)]
        if bad:
            raise DataError(f"{item_path}: each item must be an object with title, categories, ...; "
                            f"not an object for items {examples(bad)}")
        frames_items.append(pd.DataFrame({
            "item_id": list(meta.keys()),
            "title": [v.get("title", "") for v in meta.values()],
            "description": [v.get("description", "") for v in meta.values()],
            "brand": [v.get("brand", "") for v in meta.values()],
            "categories": [_check_paths(k, v.get("categories"), item_path, "categories")
                           for k, v in meta.items()],
            "source_file": str(item_path), "source_row": np.arange(1, len(meta) + 1),
        }))
    return _concat_items(frames_items), pd.concat(frames_inter, ignore_index=True)


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def _parse_line(line: str, path: Path, lineno: int) -> dict:
    """One JSON line, or one Python dict literal (Amazon 2014 metadata): never `eval`."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataError(f"{path}: line {lineno} is neither JSON nor a Python dict literal: "
                            f"{line[:80]!r}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: line {lineno} must be an object, got {type(obj).__name__}: {line[:80]!r}")
    return obj


def _read_lines(path: Path, keep=None):
    """Yield (lineno, dict) for each non-empty line; `keep(line)` may skip lines before parsing."""
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if line and (keep is None or keep(line)):
                    yield lineno, _parse_line(line, path, lineno)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read the file ({type(e).__name__}: {e})") from None


REVIEW_FIELDS = ("reviewerID", "asin", "unixReviewTime")


def read_reviews(path: Path) -> pd.DataFrame:
    users, items, times, lines = [], [], [], []
    for lineno, obj in progress(_read_lines(path), desc=f"reviews {path.name}", unit=" lines",
                            mininterval=2, leave=False):
        missing = [f for f in REVIEW_FIELDS if f not in obj]
        if missing:
            raise DataError(f"{path}: line {lineno} lacks field '{missing[0]}' (needs {', '.join(REVIEW_FIELDS)}); "
                            f"fields present: {sorted(obj)[:8]}")
        users.append(str(obj["reviewerID"]))
        items.append(str(obj["asin"]))
        times.append(obj["unixReviewTime"])
        lines.append(lineno)
    ts = pd.to_numeric(pd.Series(times, dtype=object), errors="coerce")
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": ts.astype(float),
                         "behavior": None, "query": None, "source_file": str(path),
                         "source_row": np.asarray(lines, dtype=np.int64)})


_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def read_meta(path: Path, wanted: set[str] | None = None) -> pd.DataFrame:
    """Amazon metadata; only the items in `wanted` are parsed (the full dumps hold far more items)."""
    def keep(line: str) -> bool:
        m = _ASIN.search(line)
        return wanted is None or m is None or m.group(1) in wanted

    rows = []
    for lineno, obj in progress(_read_lines(path, keep), desc=f"meta {path.name}", unit=" items",
                            mininterval=2, leave=False):
        if "asin" not in obj:
            raise DataError(f"{path}: line {lineno} lacks field 'asin'; fields present: {sorted(obj)[:8]}")
        if "categories" in obj:                       # 2014: list of paths
            paths = _check_paths(obj["asin"], obj["categories"], path, "categories")
        else:                                         # 2018: one path as a list of names
            cat = obj.get("category") or []
            if not isinstance(cat, list) or not all(isinstance(c, str) for c in cat):
                raise DataError(f"{path}: line {lineno}: field 'category' must be a list of names, got {str(cat)[:80]!r}")
            paths = [cat] if cat else []
        rows.append({"item_id": str(obj["asin"]), "title": obj.get("title", ""),
                     "description": obj.get("description", ""), "brand": obj.get("brand", ""),
                     "categories": paths, "source_file": str(path), "source_row": lineno})
    return pd.DataFrame(rows, columns=RAW_ITEM_COLUMNS)


def k_core(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively drop users and items with fewer than `k` interactions until none is left."""
    if k <= 1:
        return inter
    while True:
        u = inter.groupby("user_id")["item_id"].transform("size")
        i = inter.groupby("item_id")["user_id"].transform("size")
        keep = (u >= k) & (i >= k)
        if keep.all():
            return inter
        inter = inter[keep]


def read_amazon(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    reviews, meta = _amazon_files(folder)
    if not reviews:
        raise DataError(f"{folder}: no review file (reviews_<Cat>_5.json.gz, <Cat>_5.json.gz or <Cat>.json.gz)")
    if not meta:
        raise DataError(f"{folder}: no metadata file (meta_<Cat>.json.gz) next to {reviews[0].name}")
    inter = pd.concat([read_reviews(p) for p in reviews], ignore_index=True)
    wanted = set(inter["item_id"])
    items = _concat_items([read_meta(p, wanted) for p in meta])
    return items, inter


LOG_INTERACTION_COLUMNS = ("user", "item", "timestamp", "behavior", "query")
LOG_ITEM_COLUMNS = ("item_id", "title")


def _read_table(path: Path, required) -> pd.DataFrame:
    try:
        if path.suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            df = pd.read_parquet(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot parse the file ({type(e).__name__}: {e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column '{missing[0]}' (required: {', '.join(required)}; "
                        f"found: {', '.join(map(str, df.columns))})")
    return df


def _parse_categories(value, item, path: Path):
    """JSON list of paths, a list (Parquet), or 'A > B > C | D > E'."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, (list, np.ndarray)):
        return [[str(c) for c in p] for p in value]
    text = str(value).strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            paths = json.loads(text)
        except json.JSONDecodeError:
            raise DataError(f"{path}: column 'categories' of item {item!r} starts with '[' but is not "
                            f"valid JSON: {text[:80]!r}") from None
        if paths and all(isinstance(c, str) for c in paths):  # a single path
            paths = [paths]
        return _check_paths(item, paths, path, "categories")
    return [[c.strip() for c in p.split(">") if c.strip()] for p in text.split("|")]


def _parse_timestamps(col: pd.Series, path: Path) -> pd.Series:
    """Unix seconds (numbers) or date strings -> float seconds; unparsable values become NaN."""
    num = pd.to_numeric(col, errors="coerce")
    if num.isna().any():
        as_text = col.astype(str).where(num.isna())
        dates = pd.to_datetime(as_text, errors="coerce", utc=True, format="mixed")
        secs = (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        num = num.fillna(secs)
    nonempty = col.astype(str).str.strip() != ""
    if nonempty.any() and num[nonempty].isna().all():
        raise DataError(f"{path}: column 'timestamp' has the wrong type: no value is a unix time or a "
                        f"date, e.g. {examples(col[nonempty].unique())}")
    return num.astype(float)


def read_log(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    inter_path, items_path = _log_file(folder, "interactions"), _log_file(folder, "items")
    if inter_path is None:
        raise DataError(f"{folder}: no interactions.csv or interactions.parquet")
    if items_path is None:
        raise DataError(f"{folder}: no items.csv or items.parquet next to {inter_path.name}")
    raw = _read_table(inter_path, LOG_INTERACTION_COLUMNS)
    inter = pd.DataFrame({
        "user_id": raw["user"].astype(str).str.strip(),
        "item_id": raw["item"].astype(str).str.strip(),
        "timestamp": _parse_timestamps(raw["timestamp"], inter_path),
        "behavior": raw["behavior"].astype(str).str.strip().str.lower(),
        "query": raw["query"].where(raw["query"].notna(), "").astype(str),
        "source_file": str(inter_path), "source_row": np.arange(1, len(raw) + 1),   # data rows, header not counted
    })
    meta = _read_table(items_path, LOG_ITEM_COLUMNS)
    n = len(meta)
    items = pd.DataFrame({
        "item_id": meta["item_id"].astype(str).str.strip(),
        "title": meta["title"],
        "description": meta["description"] if "description" in meta else [""] * n,
        "brand": meta["brand"] if "brand" in meta else [""] * n,
        "categories": [_parse_categories(c, i, items_path) for i, c in
                       zip(meta["item_id"], meta["categories"] if "categories" in meta else [None] * n)],
        "source_file": str(items_path), "source_row": np.arange(1, n + 1),
    })
    _check_unique_items(items, items_path)
    return items, inter


READERS = {"shared": read_shared, "amazon": read_amazon, "log": read_log}


# --------------------------------------------------------------------------------------------
# assembling the canonical tables
# --------------------------------------------------------------------------------------------
def _check_unique_items(items: pd.DataFrame, path) -> None:
    dup = items["item_id"][items["item_id"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: duplicate item ids in column 'item_id': {examples(dup.unique())} "
                        f"({len(dup)} duplicate rows)")


def _concat_items(frames: list[pd.DataFrame]) -> pd.DataFrame:
    items = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RAW_ITEM_COLUMNS)
    items["item_id"] = items["item_id"].astype(str)
    return items


def _order_events(inter: pd.DataFrame, has_time: bool) -> pd.DataFrame:
    """Sort each user's events in time order and number them: `step` 0..n-1 per user.

    Without timestamps (shared format) the position is the time: base rows first, then each batch.
    """
    inter = inter.sort_values(["user_id", "timestamp", "_part", "_order"] if has_time
                              else ["user_id", "_part", "_order"], kind="stable", na_position="last")
    step = inter.groupby("user_id", sort=False).cumcount().astype("int64")
    inter = inter.assign(step=step)
    if not has_time:
        inter["timestamp"] = step
    # float64 until validation: NaN marks a missing or unparsable time (quarantined there)
    inter["timestamp"] = inter["timestamp"].astype("float64").round()
    return inter.reset_index(drop=True)


def _log_events(inter: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real queries from a log: clean and lowercase the text, hash it into an id."""
    text = inter["query"].map(clean_text).str.lower()
    is_search = (inter["behavior"] == "search") & (text != "")
    qid = pd.Series([query_id(t) if s else None for t, s in zip(text, is_search)], index=inter.index, dtype=object)
    events = inter.assign(query_id=qid)
    queries = (pd.DataFrame({"query_id": qid[is_search], "text": text[is_search]})
               .drop_duplicates("query_id").sort_values("query_id").reset_index(drop=True))
    return events, queries


def snapshot_parts(folder: Path) -> list[Path]:
    """The base snapshot folder, then its incremental batches in name order."""
    batches = folder / "batches"
    extra = sorted(p for p in batches.iterdir() if p.is_dir()) if batches.is_dir() else []
    return [folder, *extra]


def read_source(path, cfg: DataConfig, qcfg: QueriesConfig) -> Tables:
    """Read a snapshot folder (and its batches) into canonical tables; `Tables.info` summarises how."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: snapshot folder not found (run `gensar snapshot` or set data.source)")
    fmt = detect_format(folder) if cfg.format == "auto" else cfg.format
    if fmt not in FORMATS:
        raise DataError(f"params.yaml: data.format must be auto or one of {', '.join(FORMATS)}, got {fmt!r}")
    logger.info("reading %s (format %s)", folder, fmt)

    all_items, all_inter, batches = [], [], []
    for part, sub in enumerate(snapshot_parts(folder)):
        items, inter = READERS[fmt](sub)
        _check_unique_items(items, sub)
        if part > 0:
            batches.append({"name": sub.name, "items": len(items), "interactions": len(inter)})
            logger.info("batch %s: %d items, %d interactions", sub.name, len(items), len(inter))
        all_items.append(items)
        all_inter.append(inter.assign(_part=part, _order=np.arange(len(inter))))
    items = _concat_items(all_items)
    n_before = len(items)
    items = items.drop_duplicates("item_id", keep="first")  # a batch re-listing a known item: keep the base one
    inter = pd.concat(all_inter, ignore_index=True)
    summary = {"format": fmt, "source": str(folder), "batches": batches, "raw_interactions": len(inter),
               "raw_items": n_before, "items_relisted_in_batches": n_before - len(items)}

    if fmt == "amazon":
        n = len(inter)
        inter = k_core(inter, cfg.k_core)
        items = items[items["item_id"].isin(set(inter["item_id"]))]
        summary["k_core"] = {"k": cfg.k_core, "interactions_removed": n - len(inter)}
        logger.info("%d-core: %d -> %d interactions", cfg.k_core, n, len(inter))

    items = clean_items(items.reset_index(drop=True), cfg.text_max_chars)
    inter = _order_events(inter, has_time=fmt != "shared")
    if fmt == "log":
        events, queries = _log_events(inter)
        summary["query_derivation"] = {"mode": "log", "queries": len(queries)}
    else:
        events, queries, qsum = derive_events(inter[["user_id", "item_id", "timestamp", "step", *SOURCE_COLUMNS]],
                                              items, qcfg)
        summary["query_derivation"] = qsum
        if qsum["items_without_query"]:
            logger.warning("%d items have no category path of >= %d levels: their %d interactions are "
                           "rec events only", qsum["items_without_query"], qcfg.min_path_levels,
                           qsum["interactions_rec_only"])
    tables = Tables(items=items[["item_id", "title", "description", "brand", "categories", "text", *SOURCE_COLUMNS]],
                    interactions=events[["user_id", "item_id", "timestamp", "step", "behavior", "query_id",
                                         *SOURCE_COLUMNS]].reset_index(drop=True),
                    queries=queries.reset_index(drop=True), info=summary)
    return tables
