"""Bad inputs and the message a user sees for each (structural errors stop; bad rows are quarantined)."""
import dataclasses
import json

import pandas as pd
import pytest
from conftest import AMAZON_META_OK, small_log, write_lines, write_log, write_shared

from gensar.config import DataConfig, QueriesConfig, ValidateConfig
from gensar.data.contract import DataError
from gensar.data.sources import read_source
from gensar.stages import ingest, validate

D, Q = DataConfig(k_core=1), QueriesConfig()


def _read(folder):
    return read_source(folder, D, Q)


# ------------------------------------------------------------------ structural: the stage stops
def test_missing_column_names_file_and_column(tmp_path):
    inter, items = small_log()
    folder = write_log(tmp_path / "l", inter, items)
    pd.read_csv(folder / "interactions.csv").drop(columns="query").to_csv(folder / "interactions.csv", index=False)
    with pytest.raises(DataError, match=r"interactions\.csv: missing column 'query' \(required: user, item"):
        _read(folder)


def test_unparsable_json_names_file(tmp_path):
    folder = write_shared(tmp_path / "s", "toy", {"u": [0]}, {"0": {"title": "A"}})
    (folder / "toy.inter.json").write_text('{"u": [0, 1')  # truncated download
    with pytest.raises(DataError, match=r"toy\.inter\.json: not valid JSON"):
        _read(folder)


def test_duplicate_item_ids_names_the_ids(tmp_path):
    inter, items = small_log()
    items.append(dict(items[1], title="again"))
    with pytest.raises(DataError, match=r"items\.csv: duplicate item ids in column 'item_id': \['i1'\]"):
        _read(write_log(tmp_path / "l", inter, items))


def test_timestamp_of_wrong_type(tmp_path):
    inter, items = small_log()
    inter = [(u, i, "soon", b, q) for u, i, _, b, q in inter]
    with pytest.raises(DataError, match=r"column 'timestamp' has the wrong type: .*e\.g\. \['soon'\]"):
        _read(write_log(tmp_path / "l", inter, items))


def test_meta_line_with_code_is_refused_not_evaluated(tmp_path):
    folder = tmp_path / "a"
    write_lines(folder / "reviews_Toys_5.json.gz",
                [json.dumps({"reviewerID": "A", "asin": "x", "unixReviewTime": 1})])
    evil = "__import__('os').system('touch %s')" % (tmp_path / "pwned")
    write_lines(folder / "meta_Toys.json.gz", AMAZON_META_OK + [evil])
    with pytest.raises(DataError, match=r"meta_Toys\.json\.gz: line 2 is neither JSON nor a Python dict literal"):
        _read(folder)
    assert not (tmp_path / "pwned").exists()


def test_corrupt_gzip(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "reviews_Toys_5.json.gz").write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    write_lines(folder / "meta_Toys.json.gz", AMAZON_META_OK)
    with pytest.raises(DataError, match=r"reviews_Toys_5\.json\.gz: cannot read the file"):
        _read(folder)


def test_review_without_time_names_line_and_field(tmp_path):
    folder = tmp_path / "a"
    write_lines(folder / "reviews_Toys_5.json.gz", [json.dumps({"reviewerID": "A", "asin": "x"})])
    write_lines(folder / "meta_Toys.json.gz", AMAZON_META_OK)
    with pytest.raises(DataError, match=r"line 1 lacks field 'unixReviewTime'"):
        _read(folder)


def test_unknown_folder_layout(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no known input format.*found \['notes\.txt'\]"):
        _read(tmp_path / "x")
    with pytest.raises(DataError, match=r"snapshot folder not found"):
        _read(tmp_path / "missing")


def test_categories_of_wrong_type_name_the_item(tmp_path):
    folder = write_shared(tmp_path / "s", "toy", {"u": ["7"]}, {"7": {"title": "A", "categories": "Office"}})
    with pytest.raises(DataError, match=r"toy\.item\.json: field 'categories' of item '7' must be a list"):
        _read(folder)


def test_bad_queries_mode(tmp_path):
    folder = write_shared(tmp_path / "s", "toy", {"u": ["7"]}, {"7": {"title": "A", "categories": [["A", "B"]]}})
    with pytest.raises(DataError, match=r"queries\.mode must be 'paper' or 'split', got 'both'"):
        read_source(folder, D, QueriesConfig(mode="both"))


# ------------------------------------------------------------ structural, at the validate stage
def _ingested(tmp_path, params):
    inter, items = small_log()
    ingest.run(params, write_log(tmp_path / "l", inter, items), out=tmp_path / "ing", report=tmp_path / "r.json")
    return tmp_path / "ing"


def _validate(params, ing, tmp_path):
    return validate.run(params, ing, out=tmp_path / "can", quarantine=tmp_path / "q.parquet",
                        report=tmp_path / "v.json", stats=tmp_path / "s.json")


def test_ingested_table_with_wrong_column_type(tmp_path, params):
    ing = _ingested(tmp_path, params)
    df = pd.read_parquet(ing / "interactions.parquet")
    df["timestamp"] = df["timestamp"].astype(str)
    df.to_parquet(ing / "interactions.parquet")
    with pytest.raises(DataError, match=r"interactions\.parquet: column 'timestamp' has the wrong type: "
                                        r"expected float64 or int64, found values \['1600000000\.0'"):
        _validate(params, ing, tmp_path)


def test_ingested_table_missing_column_or_unreadable(tmp_path, params):
    ing = _ingested(tmp_path, params)
    pd.read_parquet(ing / "items.parquet").drop(columns="text").to_parquet(ing / "items.parquet")
    with pytest.raises(DataError, match=r"items\.parquet: missing column 'text'"):
        _validate(params, ing, tmp_path)
    (ing / "queries.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"queries\.parquet: not a readable Parquet file"):
        _validate(params, ing, tmp_path)


# ------------------------------------------------------------------- row problems: quarantined
def _log_with_bad_rows(tmp_path):
    inter, items = small_log(n_users=8, n_items=5, events=6)
    items.append({"item_id": "blank", "title": " <br> ", "description": "", "brand": "", "categories": ""})
    inter += [
        ("u0", "ghost", 1_600_000_900, "rec", ""),            # unknown item
        ("u1", "blank", 1_600_000_900, "rec", ""),            # item with empty text
        ("u2", "i1", "not a time", "rec", ""),                # unparsable timestamp
        ("u3", "i1", -5, "rec", ""),                          # timestamp before validate.min_timestamp
        ("u4", "i1", 1_600_000_900, "purchase", ""),          # unknown behavior
        ("u5", "i1", 1_600_000_900, "search", "   "),         # search without a query
        ("lonely", "i1", 1_600_000_900, "rec", ""),           # user with too few events
    ]
    return write_log(tmp_path / "bad", inter, items)


EXPECTED_REASONS = {"unknown item", "item with bad metadata (empty text)", "bad timestamp",
                    "unknown behavior", "search without query", "user with fewer than 3 events", "empty text"}


def test_bad_rows_are_quarantined_with_reasons(tmp_path, params):
    params = dataclasses.replace(params, validate=ValidateConfig(max_bad_row_share=0.2))
    ingest.run(params, _log_with_bad_rows(tmp_path), out=tmp_path / "ing", report=tmp_path / "r.json")
    stats = _validate(params, tmp_path / "ing", tmp_path)
    q = pd.read_parquet(tmp_path / "q.parquet")
    assert set(q.reason) == EXPECTED_REASONS
    assert stats["quarantined_rows"] == 8 and q.reason.value_counts()["bad timestamp"] == 2
    assert set(q[q.reason == "bad timestamp"].user_id) == {"u2", "u3"}
    assert q[q.reason == "unknown item"].item_id.tolist() == ["ghost"]
    assert q[q.reason == "empty text"][["table", "item_id"]].values.tolist() == [["items", "blank"]]
    can = pd.read_parquet(tmp_path / "can" / "interactions.parquet")
    assert len(can) == 8 * 6 and can.timestamp.dtype == "int64"
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["success"] and report["quarantine"]["rows"] == 8
    assert all(r["success"] for r in report["ingested"]["interactions"])    # structure is fine
    docs = (tmp_path / "v-docs" / "index.html").read_text()                 # GX data docs beside the report
    assert 'href="interactions-rows.html"' in docs
    page = (tmp_path / "v-docs" / "interactions-rows.html").read_text()
    assert "_item_known" in page and "unexpected" in page.lower()
    failed = {r["reason"]: r["result"]["unexpected_count"] for t in ("items", "interactions")
              for r in report["rows"][t] if not r["success"]}
    assert failed == {"empty text": 1, "unknown behavior": 1, "unknown item": 1,   # GX saw the same bad rows
                      "item with bad metadata (empty text)": 1, "bad timestamp": 1, "search without query": 1,
                      "user with fewer than 3 events": 1}


def test_too_many_bad_rows_fail_with_share_threshold_and_reasons(tmp_path, params):
    params = dataclasses.replace(params, validate=ValidateConfig(max_bad_row_share=0.05))
    ingest.run(params, _log_with_bad_rows(tmp_path), out=tmp_path / "ing", report=tmp_path / "r.json")
    with pytest.raises(DataError) as e:
        _validate(params, tmp_path / "ing", tmp_path)
    msg = str(e.value)
    assert "% of rows are bad (8 of " in msg and "validate.max_bad_row_share = 5.00%" in msg
    assert "Top reasons:" in msg and "unknown item (1)" in msg
    assert not (tmp_path / "q.parquet").exists() and not (tmp_path / "can").exists()
    rejected = json.loads((tmp_path / "v.rejected.json").read_text())   # the reasons and examples, kept
    assert rejected["success"] is False and rejected["quarantine"]["reasons"]["unknown item"] == 1
    assert rejected["examples"]["unknown item"][0]["item_id"] == "ghost" and "8 of " in rejected["error"]
    params = dataclasses.replace(params, validate=ValidateConfig(max_bad_row_share=0.2))
    _validate(params, tmp_path / "ing", tmp_path)                     # a later success clears it
    assert not (tmp_path / "v.rejected.json").exists() and json.loads((tmp_path / "v.json").read_text())["success"]


def test_command_line_shows_the_message_without_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"^ingest failed: .*empty: no known input format"):
        ingest.main(["--snapshot", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                     "--report", str(tmp_path / "r.json")])
    with pytest.raises(SystemExit, match=r"^validate failed: .*items\.parquet: file not found"):
        validate.main(["--ingested", str(tmp_path / "none"), "--out", str(tmp_path / "c"),
                       "--quarantine", str(tmp_path / "q.parquet"), "--report", str(tmp_path / "v.json"),
                       "--stats", str(tmp_path / "s.json")])
    assert not (tmp_path / "o").exists() and not (tmp_path / "r.json").exists()


# ------------------------------------------------------ guards: duplicates, empty and shrunk data
def _run_log(params, tmp_path, inter, items, name):
    ingest.run(params, write_log(tmp_path / name, inter, items), out=tmp_path / f"ing-{name}",
               report=tmp_path / "r.json")
    return _validate(params, tmp_path / f"ing-{name}", tmp_path)


def test_exact_duplicate_events_are_collapsed_before_splitting(tmp_path, params):
    inter, items = small_log(n_users=8, events=6)
    stats = _run_log(params, tmp_path, inter + inter, items, "dup")   # every row delivered twice
    assert stats["duplicate_events"] == len(inter) and stats["events"] == len(inter)
    can = pd.read_parquet(tmp_path / "can" / "interactions.parquet")
    assert not can.duplicated(["user_id", "item_id", "timestamp", "behavior", "query_id"]).any()
    for (_, behavior), g in can.groupby(["user_id", "behavior"]):       # the test target is a later click
        g = g.sort_values("step")
        assert g["step"].iloc[-1] > g["step"].iloc[-2] and g["split"].iloc[-1] == "test"
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["quarantine"]["duplicate_events"] == len(inter) and report["quarantine"]["bad_rows"] == 0
    q = pd.read_parquet(tmp_path / "q.parquet")
    assert len(q) == len(inter) and q.reason.str.startswith("duplicate event").all()


def test_header_only_interactions_fail_and_keep_the_good_tables(tmp_path, params):
    inter, items = small_log(n_users=8, events=6)
    _run_log(params, tmp_path, inter, items, "good")
    before = pd.read_parquet(tmp_path / "can" / "interactions.parquet")
    with pytest.raises(DataError, match=r"interactions\.parquet: no interactions at all"):
        _run_log(params, tmp_path, [], items, "empty")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "can" / "interactions.parquet"), before)


def test_a_large_drop_against_the_replaced_tables_fails(tmp_path, params):
    inter, items = small_log(n_users=20, events=6)
    _run_log(params, tmp_path, inter, items, "full")
    before = pd.read_parquet(tmp_path / "can" / "interactions.parquet")
    few = [r for r in inter if r[0] in {"u0", "u1", "u2"}]                # a truncated export
    with pytest.raises(DataError, match=r"users 20 -> 3 \(-85\.0%\).*validate\.max_drop_share = 10%"):
        _run_log(params, tmp_path, few, items, "truncated")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "can" / "interactions.parquet"), before)
    most = [r for r in inter if r[0] != "u0"]                             # -5% of users: accepted
    stats = _run_log(params, tmp_path, most, items, "most")
    assert stats["users"] == 19
    assert json.loads((tmp_path / "v.json").read_text())["drop_vs_previous"]["users"] == pytest.approx(0.05)


def test_text_of_invisible_characters_only_is_quarantined_by_both_engines(tmp_path, params):
    inter, items = small_log(n_users=8, events=6)
    items.append({"item_id": "ghostly", "title": "\u200b\u200d\u202e", "description": "\x07", "brand": "",
                  "categories": ""})
    params = dataclasses.replace(params, validate=ValidateConfig(max_bad_row_share=0.2))
    stats = _run_log(params, tmp_path, inter + [("u0", "ghostly", 1_600_000_950, "rec", "")], items, "invisible")
    q = pd.read_parquet(tmp_path / "q.parquet")
    assert q[["table", "item_id", "reason"]].values.tolist() == [
        ["items", "ghostly", "empty text"], ["interactions", "ghostly", "item with bad metadata (empty text)"]]
    report = json.loads((tmp_path / "v.json").read_text())
    gx = {r["reason"]: r["result"]["unexpected_count"] for t in ("items", "interactions")
          for r in report["rows"][t] if not r["success"]}
    assert gx == {"empty text": 1, "item with bad metadata (empty text)": 1} and stats["items"] == 5


def test_ids_that_differ_in_form_are_named_with_the_source_file(tmp_path, params):
    inter, items = small_log(n_users=8, n_items=5, events=6)
    items = [{**it, "item_id": it["item_id"][1:]} for it in items]                 # items file: 0, 1, ...
    inter = [(u, f"{i[1:]}.0", t, b, q) for u, i, t, b, q in inter]                # interactions: 0.0, 1.0, ...
    folder = write_log(tmp_path / "floats", inter, items)
    ingest.run(params, folder, out=tmp_path / "ing", report=tmp_path / "r.json")
    with pytest.raises(DataError) as e:
        _validate(params, tmp_path / "ing", tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{folder / 'interactions.csv'}: 88.89% of rows are bad (48 of ")   # the file the user wrote
    assert "differ only in form" in msg and "'0.0' vs '0'" in msg


def test_quarantine_rows_point_at_the_source_row(tmp_path, params):
    params = dataclasses.replace(params, validate=ValidateConfig(max_bad_row_share=0.2))
    folder = _log_with_bad_rows(tmp_path)
    ingest.run(params, folder, out=tmp_path / "ing", report=tmp_path / "r.json")
    _validate(params, tmp_path / "ing", tmp_path)
    q = pd.read_parquet(tmp_path / "q.parquet")
    raw = pd.read_csv(folder / "interactions.csv", dtype=str, keep_default_na=False)
    for r in q[q.table == "interactions"].itertuples():                            # data row N = raw.iloc[N - 1]
        assert r.source == str(folder / "interactions.csv")
        assert (raw.iloc[r.row - 1]["user"], raw.iloc[r.row - 1]["item"]) == (r.user_id, r.item_id)
    blank = q[(q.table == "items")].iloc[0]
    assert blank.source == str(folder / "items.csv") and blank.row == 6           # the 6th item row
