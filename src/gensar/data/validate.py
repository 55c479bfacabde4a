"""Validation of the ingested and canonical tables with Great Expectations (GX 1.x).

Two kinds of problems, handled differently:

structural  a missing column, a column of the wrong type, duplicate item or query ids, an
            unreadable file. Nothing sensible can be kept: raise `DataError` naming the file,
            the column and example values.
row         an interaction with an unknown item, an item with empty text, a bad timestamp, an
            unknown behavior, a search without a query, a user with too few events. These rows are
            quarantined with a reason each; the stage fails only when their share of all rows
            exceeds `validate.max_bad_row_share`.

The GX suites are built in code and run on an ephemeral context (pandas dataframe asset, one
whole-dataframe batch). Each row rule is written once (`row_rules`): the pandas mask that
quarantines the rows (one vectorised pass, a reason per row) and the GX expectation of the report
are derived from it, and their counts of bad rows must agree. An expectation that errors inside GX
returns success=False with `exception_info`; that is reported as an error, never as a pass.
Control, zero-width and bidi-override characters are removed by cleaning (`gensar.data.clean`), so
a text made only of them is empty and quarantined.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from gensar.config import ValidateConfig
from gensar.data.contract import BEHAVIORS, SOURCE_COLUMNS, SPLITS, DataError, Tables, examples
from gensar.data.split import assign_splits
from gensar.io import atomic_path

logger = logging.getLogger(__name__)

# the columns each table must have and the Python/numpy types GX should observe
STRING_COLUMNS = {
    "items": ["item_id", "title", "description", "brand", "text"],
    "interactions": ["user_id", "item_id", "behavior", "query_id"],
    "queries": ["query_id", "text"],
}
NUMBER_COLUMNS = {"interactions": {"timestamp": ["float64", "int64"], "step": ["int64"]}}
LIST_COLUMNS = {"items": ["categories"]}
UNIQUE_COLUMNS = {"items": "item_id", "queries": "query_id"}

# `source` and `row` say where the row is in the raw input (see contract.SOURCE_COLUMNS); tables
# ingested without them (older runs) point at the ingested Parquet file and its row index instead
QUARANTINE_COLUMNS = ["table", "source", "row", "item_id", "user_id", "step", "behavior", "reason"]

# an exact repeat of an event (a log delivered twice, a batch re-sent): every copy after the first is
# quarantined with this reason before splitting, and does not count as a bad row (it loses nothing)
DUPLICATE = "duplicate event (same user, item, time, behavior and query as an earlier row)"
DUPLICATE_KEY = ["user_id", "item_id", "timestamp", "behavior", "query_id"]


# --------------------------------------------------------------------------------------------
# Great Expectations plumbing
# --------------------------------------------------------------------------------------------
_CONTEXT = None


def _context():
    """One ephemeral GX context per process, progress bars off."""
    global _CONTEXT
    if _CONTEXT is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        _CONTEXT = gx.get_context(mode="ephemeral")
        _CONTEXT.variables.progress_bars = ProgressBarsConfig(globally=False)
    return _CONTEXT


_DOCS: dict[str, str] | None = None     # suite name -> its data docs page, inside `collect_data_docs`


@contextlib.contextmanager
def collect_data_docs():
    """Inside the block every suite that `run_suite` validates is also rendered as a Great Expectations
    data docs page (GX's own renderer); yields {suite name: HTML}, filled as suites run."""
    global _DOCS
    _DOCS = {}
    try:
        yield _DOCS
    finally:
        _DOCS = None


def write_data_docs(pages: dict[str, str], folder) -> Path:
    """The pages in `folder` (swapped in whole) with an index.html linking them; returns the index."""
    from html import escape

    folder = Path(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        links = []
        for name, html in pages.items():
            (tmp / f"{name}.html").write_text(html)
            links.append(f'<li><a href="{escape(name)}.html">{escape(name)}</a></li>')
        (tmp / "index.html").write_text("<!doctype html><title>GenSAR validation</title><h1>Great Expectations "
                                        "data docs of the last validation</h1><ul>" + "".join(links) + "</ul>\n")
    return folder / "index.html"


def run_suite(df: pd.DataFrame, name: str, expectations: list) -> list[dict]:
    """Validate `df` against `expectations`; one dict per expectation, in the order given.

    Each dict: type, column, success, result (GX's), error (the exception message or None).
    """
    import great_expectations as gx

    ctx = _context()
    suite = gx.ExpectationSuite(name=name)
    for e in expectations:
        suite.add_expectation(e)
    asset_name = f"{name}-{id(df)}"
    source = ctx.data_sources.add_or_update_pandas(f"src-{asset_name}")
    batch = source.add_dataframe_asset(asset_name).add_batch_definition_whole_dataframe("all") \
        .get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(suite)
    if _DOCS is not None:
        from great_expectations.render.renderer import ValidationResultsPageRenderer
        from great_expectations.render.view import DefaultJinjaPageView

        _DOCS[name] = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))
    # GX does not keep the suite's order in its results: put them back in the order given
    order = {_key(e.configuration): i for i, e in enumerate(expectations)}
    out = [None] * len(expectations)
    for r in result.results:
        cfg = r.expectation_config
        out[order[_key(cfg)]] = {
            "type": cfg.type, "column": cfg.kwargs.get("column") or cfg.kwargs.get("column_list"),
            "success": bool(r.success) and _exception_message(r.exception_info) is None,
            "error": _exception_message(r.exception_info), "result": _jsonable(r.result)}
    ctx.data_sources.delete(f"src-{asset_name}")
    return out


def _key(cfg) -> tuple[str, str]:
    """Identity of an expectation configuration: its type and kwargs (without the batch id)."""
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    return cfg.type, json.dumps(kwargs, sort_keys=True, default=str)


def _exception_message(info) -> str | None:
    """GX puts {raised_exception, exception_message, ...} directly or keyed by metric; find any raised one."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return (info.get("exception_message") or "unknown error") if info["raised_exception"] else None
    for value in info.values():
        msg = _exception_message(value)
        if msg:
            return msg
    return None


def _jsonable(result: dict) -> dict:
    """GX results with numpy scalars/arrays made JSON-friendly and long lists cut."""
    def conv(v):
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple, np.ndarray)):
            return [conv(x) for x in list(v)[:20]]
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, float) and np.isnan(v):
            return None
        return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
    return conv(dict(result or {}))


def _raise_errors(results: list[dict], where: str) -> None:
    """An expectation that errored inside GX is a failure we cannot interpret: stop with its message."""
    for r in results:
        if r["error"]:
            raise DataError(f"{where}: the check {r['type']} on column {r['column']!r} could not run: {r['error']}")


# --------------------------------------------------------------------------------------------
# ingested tables: structure (stops the stage) and row expectations (reported, rows quarantined)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RowRule:
    """One row rule, written once: the pandas mask that quarantines rows and the GX expectation
    that reports them are both derived from it (and their counts must agree, see `row_reasons`).

    check: `not_null`; `nonblank` (a non-null string with a non-space character); `in_set` (value in
    `values`; nulls are left to a `not_null` rule); `between` (values = (min, max); nulls likewise);
    `true` (a boolean flag column derived by `_flags`: references, duplicates, users' event counts).
    """

    table: str
    reason: str
    column: str
    check: str
    values: tuple = ()

    def bad(self, df: pd.DataFrame) -> pd.Series:
        col = df[self.column]
        if self.check == "not_null":
            return col.isna()
        if self.check == "nonblank":
            return col.notna() & (col.astype(str).str.strip() == "")
        if self.check == "in_set":
            return col.notna() & ~col.isin(list(self.values))
        if self.check == "between":
            return col.notna() & ((col < self.values[0]) | (col > self.values[1]))
        if self.check == "true":
            return col != True  # a flag column, compared element-wise
        raise ValueError(f"unknown row check {self.check!r}")

    def expectation(self):
        import great_expectations as gx

        E = gx.expectations
        if self.check == "not_null":
            return E.ExpectColumnValuesToNotBeNull(column=self.column)
        if self.check == "nonblank":
            return E.ExpectColumnValuesToMatchRegex(column=self.column, regex=r"\S")
        if self.check == "in_set":
            return E.ExpectColumnValuesToBeInSet(column=self.column, value_set=list(self.values))
        if self.check == "between":
            return E.ExpectColumnValuesToBeBetween(column=self.column, min_value=self.values[0],
                                                   max_value=self.values[1])
        return E.ExpectColumnValuesToBeInSet(column=self.column, value_set=[True])


def row_rules(cfg: ValidateConfig) -> list[RowRule]:
    """Every row rule of the ingested tables. Within a table the list runs from the least to the most
    fundamental reason: a row breaking several rules is quarantined with the last one it breaks."""
    R = RowRule
    min_events = f"user with fewer than {cfg.min_user_events} events"
    return [
        R("items", "empty text", "text", "not_null"),
        R("items", "empty text", "text", "nonblank"),
        R("items", "empty item id", "item_id", "not_null"),
        R("items", "empty item id", "item_id", "nonblank"),
        R("queries", "empty query text", "text", "not_null"),
        R("queries", "empty query text", "text", "nonblank"),
        R("interactions", DUPLICATE, "_first_copy", "true"),
        R("interactions", "search without query", "_query_known", "true"),
        R("interactions", "unknown behavior", "behavior", "not_null"),
        R("interactions", "unknown behavior", "behavior", "in_set", BEHAVIORS),
        R("interactions", "bad timestamp", "timestamp", "not_null"),
        R("interactions", "bad timestamp", "timestamp", "between", (cfg.min_timestamp, cfg.max_timestamp)),
        R("interactions", "item with bad metadata (empty text)", "_item_ok", "true"),
        R("interactions", "unknown item", "_item_known", "true"),
        R("interactions", "empty user id", "user_id", "not_null"),
        R("interactions", "empty user id", "user_id", "nonblank"),
        # evaluated last, on the rows no other rule quarantined (a user needs train, valid and test)
        R("interactions", min_events, "_enough_events", "true"),
    ]


def _reasons(df: pd.DataFrame, rules: list[RowRule]) -> pd.Series:
    """A reason per row (None = good): the last rule in `rules` that the row breaks."""
    reason = pd.Series(None, index=df.index, dtype=object)
    for rule in rules:
        reason[rule.bad(df).to_numpy()] = rule.reason
    return reason


def _with_reference_flags(tables: Tables) -> pd.DataFrame:
    """Interactions plus `_item_known` and `_query_known` (True for rec events)."""
    inter = tables.interactions
    known_q = inter["query_id"].isin(set(tables.queries["query_id"]))
    return inter.assign(_item_known=inter["item_id"].isin(set(tables.items["item_id"])),
                        _query_known=known_q | (inter["behavior"] != "search"))


def check_ingested(tables: Tables, cfg: ValidateConfig, files: dict[str, str]) -> dict:
    """Run the GX suites of the ingested tables; raise DataError on the first structural problem."""
    import great_expectations as gx

    E = gx.expectations
    report = {}
    for name in ("items", "interactions", "queries"):
        df = getattr(tables, name)
        where = files.get(name, name)
        required = STRING_COLUMNS[name] + list(NUMBER_COLUMNS.get(name, {})) + LIST_COLUMNS.get(name, [])
        # column existence does not depend on the rows: check it on the empty frame (cheap)
        exists = run_suite(df.head(0), f"{name}-columns", [E.ExpectColumnToExist(column=c) for c in required])
        _raise_errors(exists, where)
        missing = [r["column"] for r in exists if not r["success"]]
        if missing:
            raise DataError(f"{where}: missing column '{missing[0]}' (required: {', '.join(required)}; "
                            f"found: {', '.join(map(str, df.columns))})")
        for col in LIST_COLUMNS.get(name, []):
            bad = df[col][~df[col].map(lambda v: isinstance(v, (list, np.ndarray)))]
            if len(bad):
                raise DataError(f"{where}: column '{col}' must hold lists of category paths; "
                                f"found {examples(bad.map(repr).unique())} (rows {examples(bad.index)})")
        structural = [E.ExpectColumnValuesToBeInTypeList(column=c, type_list=["str"]) for c in STRING_COLUMNS[name]]
        structural += [E.ExpectColumnValuesToBeInTypeList(column=c, type_list=t)
                       for c, t in NUMBER_COLUMNS.get(name, {}).items()]
        if name in UNIQUE_COLUMNS:
            structural.append(E.ExpectColumnValuesToBeUnique(column=UNIQUE_COLUMNS[name]))
        results = run_suite(df, f"{name}-ingested", structural)
        n_struct = len(structural)
        for r in results[:n_struct]:          # structural failures first: they explain row errors
            if r["success"]:
                continue
            col, res = r["column"], r["result"]
            if r["type"] == "expect_column_values_to_be_unique":
                dup = df[col][df[col].duplicated()].unique()
                raise DataError(f"{where}: duplicate ids in column '{col}': {examples(dup)} "
                                f"({res.get('unexpected_count')} rows share an id)")
            if r["error"]:
                raise DataError(f"{where}: the check {r['type']} on column '{col}' could not run: {r['error']}")
            observed = res.get("observed_value") or f"values {examples(res.get('partial_unexpected_list', []))}"
            want = "text (str)" if col in STRING_COLUMNS[name] else " or ".join(NUMBER_COLUMNS[name][col])
            raise DataError(f"{where}: column '{col}' has the wrong type: expected {want}, found {observed}")
        _raise_errors(results[n_struct:], where)
        report[name] = results
    return report


# --------------------------------------------------------------------------------------------
# row checks -> quarantine
# --------------------------------------------------------------------------------------------
def row_reasons(tables: Tables, cfg: ValidateConfig) -> tuple[pd.Series, pd.Series, pd.Series, dict]:
    """A reason (str) or None per row of items, queries and interactions, and the GX report of the
    same rules. Both come from `row_rules`; a rule whose GX count differs from its pandas count is a
    bug and stops the stage."""
    rules = row_rules(cfg)
    by_table = {t: [r for r in rules if r.table == t] for t in ("items", "queries", "interactions")}
    items, queries = tables.items, tables.queries
    item_reason = _reasons(items, by_table["items"])
    query_reason = _reasons(queries, by_table["queries"])

    # flags of the interactions: references to good / known rows, first copies, enough events
    inter = tables.interactions
    good_items = set(items.loc[item_reason.isna(), "item_id"])
    frame = inter.assign(
        _first_copy=~inter.duplicated(DUPLICATE_KEY, keep="first"),
        _query_known=(inter["behavior"] != "search") | inter["query_id"].isin(
            set(queries.loc[query_reason.isna(), "query_id"])),
        _item_known=inter["item_id"].isin(set(items["item_id"])),
        _item_ok=~inter["item_id"].isin(set(items["item_id"])) | inter["item_id"].isin(good_items),
        _enough_events=True)
    *others, last = by_table["interactions"]
    reason = _reasons(frame, others)
    ok = reason.isna()
    n_steps = inter[ok].groupby("user_id")["step"].nunique()
    few = set(n_steps.index[n_steps < cfg.min_user_events])
    frame["_enough_events"] = ~(ok & inter["user_id"].isin(few))
    reason[~frame["_enough_events"].to_numpy()] = last.reason

    report = {}
    for name, df in (("items", items), ("queries", queries), ("interactions", frame)):
        table_rules = by_table[name]
        results = run_suite(df, f"{name}-rows", [r.expectation() for r in table_rules])
        _raise_errors(results, name)
        for rule, res in zip(table_rules, results):
            n_pandas, n_gx = int(rule.bad(df).sum()), res["result"].get("unexpected_count", 0)
            if n_pandas != n_gx:
                raise DataError(f"{name}: the row rule '{rule.reason}' ({rule.check} on {rule.column!r}) finds "
                                f"{n_pandas} rows with pandas and {n_gx} with Great Expectations (a bug: please report)")
            res["reason"] = rule.reason
        report[name] = results
    return item_reason, query_reason, reason, report


def _where(df: pd.DataFrame, file: str) -> tuple[pd.Series, pd.Series]:
    """(source file, source row) of each row of an ingested table."""
    if "source_file" in df and "source_row" in df:
        return df["source_file"].astype(object), df["source_row"].astype("int64")
    return pd.Series(file, index=df.index, dtype=object), pd.Series(df.index, index=df.index, dtype="int64")


def _quarantine_frame(tables: Tables, item_r, query_r, inter_r, files: dict) -> pd.DataFrame:
    parts = []
    it = tables.items[item_r.notna()]
    src, row = _where(it, files.get("items", "items"))
    parts.append(pd.DataFrame({"table": "items", "source": src, "row": row, "item_id": it["item_id"],
                               "user_id": None, "step": pd.NA, "behavior": None, "reason": item_r[item_r.notna()]}))
    q = tables.queries[query_r.notna()]
    parts.append(pd.DataFrame({"table": "queries", "source": files.get("queries", "queries"), "row": q.index,
                               "item_id": None, "user_id": None, "step": pd.NA, "behavior": None,
                               "reason": query_r[query_r.notna()]}))
    ev = tables.interactions[inter_r.notna()]
    src, row = _where(ev, files.get("interactions", "interactions"))
    parts.append(pd.DataFrame({"table": "interactions", "source": src, "row": row, "item_id": ev["item_id"],
                               "user_id": ev["user_id"], "step": ev["step"], "behavior": ev["behavior"],
                               "reason": inter_r[inter_r.notna()]}))
    out = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
        else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    out = out.reindex(columns=QUARANTINE_COLUMNS)
    out["row"] = out["row"].astype("int64")
    out["step"] = pd.array(out["step"], dtype="Int64")
    for c in ("table", "source", "item_id", "user_id", "behavior", "reason"):
        out[c] = out[c].astype(object)
    return out


_FLOAT_ID = re.compile(r"^(-?\d+)\.0+$")


def id_form_hint(unknown: pd.Series, known: pd.Series) -> str:
    """When ids differ only in form (`1.0` in one file, `1` in the other: an integer column saved
    as float), say so: the user must write ids the same way in both files."""
    def canon(ids):
        return {_FLOAT_ID.sub(r"\1", str(i).strip()): str(i) for i in ids}
    unknown, known = pd.Series(unknown).drop_duplicates(), pd.Series(known).drop_duplicates()
    cu, ck = canon(unknown), canon(known)
    matches = [(cu[k], ck[k]) for k in cu if k in ck]
    if not matches or len(matches) < 0.5 * len(cu):
        return ""
    pairs = ", ".join(f"{a!r} vs {b!r}" for a, b in matches[:3])
    return (f" The item ids differ only in form between the files ({pairs}; {len(matches):,} of "
            f"{len(cu):,} unknown ids): an integer column written as float? Write the ids the same way in "
            "the interactions and the items file.")


# --------------------------------------------------------------------------------------------
# canonical tables
# --------------------------------------------------------------------------------------------
def table_counts(tables: Tables) -> dict[str, int]:
    """What the shrink guard compares: users, items and events of canonical tables."""
    return {"users": int(tables.interactions["user_id"].nunique()), "items": len(tables.items),
            "events": len(tables.interactions)}


def check_no_large_drop(new: dict[str, int], old: dict[str, int], max_drop_share: float, where: str) -> dict:
    """Refuse tables that lose more than `max_drop_share` of the users, items or events of `old`.

    A nightly job fed a truncated export would otherwise train (and publish) on a fraction of the
    data. Returns {name: drop share} for the report.
    """
    drops = {k: (old[k] - new[k]) / old[k] if old.get(k) else 0.0 for k in new}
    over = {k: d for k, d in drops.items() if d > max_drop_share}
    if over:
        details = {"drop_vs_previous": {k: {"before": old[k], "after": new[k], "drop": round(d, 6)}
                                        for k, d in drops.items()}, "max_drop_share": max_drop_share}
        what = ", ".join(f"{k} {old[k]:,} -> {new[k]:,} (-{100 * d:.1f}%)" for k, d in over.items())
        raise DataError(f"{where}: the new data is much smaller than the canonical tables it would replace: "
                        f"{what}; more than validate.max_drop_share = {100 * max_drop_share:.0f}%. The previous "
                        "tables are kept. If the drop is intended (a new source), raise validate.max_drop_share "
                        "in params.yaml for this run or delete prepared/canonical first.", details=details)
    return {k: round(d, 6) for k, d in drops.items()}


def canonical_checks(tables: Tables) -> list[dict]:
    """Invariants of the canonical tables; a failure is a bug of this code, reported loudly."""
    import great_expectations as gx

    E = gx.expectations
    res = run_suite(_with_reference_flags(tables), "canonical-interactions", [
        E.ExpectColumnValuesToBeInTypeList(column="timestamp", type_list=["int64"]),
        E.ExpectColumnValuesToBeInTypeList(column="step", type_list=["int64"]),
        E.ExpectColumnValuesToBeInSet(column="behavior", value_set=list(BEHAVIORS)),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        E.ExpectColumnValuesToNotBeNull(column="split"),
        E.ExpectColumnValuesToBeInSet(column="_item_known", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="_query_known", value_set=[True]),
        E.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "step", "behavior"]),
    ])
    for name, key in (("items", "item_id"), ("queries", "query_id")):
        res += run_suite(getattr(tables, name), f"canonical-{name}", [
            E.ExpectColumnValuesToBeUnique(column=key),
            E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1),
        ])
    _raise_errors(res, "canonical tables")
    failed = [r for r in res if not r["success"]]
    if failed:
        r = failed[0]
        raise DataError(f"canonical tables: {r['type']} failed on column {r['column']!r}: "
                        f"{examples(r['result'].get('partial_unexpected_list', []))} (a bug: please report)")
    return res


def validate_tables(tables: Tables, cfg: ValidateConfig, files: dict[str, str] | None = None
                    ) -> tuple[Tables, pd.DataFrame, dict]:
    """Ingested tables -> (canonical tables with `split`, quarantined rows, JSON report).

    Raises DataError on structural problems and when the share of bad rows exceeds the threshold.
    """
    files = files or {}
    where = files.get("interactions", "interactions")
    if tables.interactions.empty:
        raise DataError(f"{where}: no interactions at all (a header-only or empty source?); nothing "
                        "would be left to train on, so the previous canonical tables are kept")
    report = {"ingested": check_ingested(tables, cfg, files)}
    item_r, query_r, inter_r, report["rows"] = row_reasons(tables, cfg)
    quarantine = _quarantine_frame(tables, item_r, query_r, inter_r, files)

    total = len(tables.items) + len(tables.interactions) + len(tables.queries)
    duplicates = int((quarantine["reason"] == DUPLICATE).sum())
    bad = len(quarantine) - duplicates
    share = bad / max(total - duplicates, 1)
    top = quarantine["reason"].value_counts()
    reasons = {str(k): int(v) for k, v in top.items()}
    report["quarantine"] = {"rows": len(quarantine), "bad_rows": bad, "duplicate_events": duplicates,
                            "total_rows": total, "share": share, "threshold": cfg.max_bad_row_share,
                            "reasons": reasons}
    logger.info("quarantine: %d of %d rows (%d bad, %.2f%%; %d duplicate events collapsed): %s",
                len(quarantine), total, bad, 100 * share, duplicates, reasons)
    if share > cfg.max_bad_row_share:
        bad_rows = quarantine[quarantine["reason"] != DUPLICATE]
        ex = bad_rows.groupby("reason").head(1)
        sample = "; ".join(f"{r.reason}: {r.source} row {r.row} (user {r.user_id}, item {r.item_id})"
                           for r in ex.head(5).itertuples())
        ev = bad_rows[bad_rows["table"] == "interactions"]
        source = ev["source"].mode().iloc[0] if len(ev) else where   # the raw file most bad rows come from
        unknown = bad_rows.loc[bad_rows["reason"] == "unknown item", "item_id"]
        hint = id_form_hint(unknown, tables.items["item_id"]) if len(unknown) else ""
        examples_by_reason = {str(k): g.head(5).astype(str).to_dict("records")
                              for k, g in bad_rows.groupby("reason", sort=False)}
        raise DataError(
            f"{source}: {100 * share:.2f}% of rows are bad ({bad} of "
            f"{total - duplicates}), more than validate.max_bad_row_share = {100 * cfg.max_bad_row_share:.2f}%. Top reasons: "
            + ", ".join(f"{k} ({v})" for k, v in list(reasons.items())[:5]) + f". Examples: {sample}." + hint,
            details={"quarantine": report["quarantine"], "examples": examples_by_reason})

    items = tables.items[item_r.isna()].drop(columns=SOURCE_COLUMNS, errors="ignore").reset_index(drop=True)
    queries = tables.queries[query_r.isna()].reset_index(drop=True)
    inter = tables.interactions[inter_r.isna()].drop(columns=SOURCE_COLUMNS, errors="ignore")
    if inter.empty:
        raise DataError(f"{where}: no interaction is left after quarantine (reasons: {reasons}); the "
                        "previous canonical tables are kept")
    # renumber the remaining steps densely per user (twins keep sharing one)
    inter["step"] = inter.groupby("user_id")["step"].rank(method="dense").astype("int64") - 1
    inter["timestamp"] = inter["timestamp"].astype("int64")
    inter = inter.sort_values(["user_id", "step"], kind="stable").reset_index(drop=True)
    inter["split"] = assign_splits(inter)
    canonical = Tables(items=items, interactions=inter, queries=queries, info=tables.info)
    report["canonical"] = canonical_checks(canonical)
    report["success"] = True   # (no wall time: the report is a DVC-tracked output)
    return canonical, quarantine, report
