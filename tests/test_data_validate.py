"""The validate stage on clean data: canonical tables, GX report and statistics."""
import json

import pandas as pd

from gensar.data.contract import INTERACTION_COLUMNS, ITEM_COLUMNS, QUERY_COLUMNS
from gensar.data.stats import stats_markdown
from gensar.data.synthetic import generate
from gensar.stages import ingest, validate


def test_synthetic_end_to_end(tmp_path, params):
    generate(tmp_path / "data", params.data.synthetic)
    summary = ingest.run(params, tmp_path / "data", out=tmp_path / "ing", report=tmp_path / "ingest.json")
    assert summary["format"] == "log" and json.loads((tmp_path / "ingest.json").read_text())["items"] == 30
    stats = validate.run(params, tmp_path / "ing", out=tmp_path / "can", quarantine=tmp_path / "q.parquet",
                         report=tmp_path / "validation.json", stats=tmp_path / "data.json")
    items = pd.read_parquet(tmp_path / "can" / "items.parquet")
    inter = pd.read_parquet(tmp_path / "can" / "interactions.parquet")
    queries = pd.read_parquet(tmp_path / "can" / "queries.parquet")
    assert list(items.columns) == list(ITEM_COLUMNS)
    assert list(inter.columns) == [*INTERACTION_COLUMNS, "split"] and list(queries.columns) == list(QUERY_COLUMNS)
    assert inter.timestamp.dtype == "int64" and inter.step.dtype == "int64"
    # steps are dense 0..n-1 per user
    per_user = inter.groupby("user_id").step.agg(["min", "max", "nunique"])
    assert (per_user["min"] == 0).all() and (per_user["max"] + 1 == per_user["nunique"]).all()
    assert set(inter.split) == {"train", "valid", "test"}
    assert inter[inter.behavior == "search"].query_id.isin(queries.query_id).all()
    assert (queries.text == queries.text.str.lower()).all()

    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["success"] and report["quarantine"]["rows"] == 0
    assert all(r["success"] and r["error"] is None for r in report["canonical"])
    assert {r["type"] for r in report["ingested"]["items"]} >= {"expect_column_values_to_be_unique"}
    assert stats == json.loads((tmp_path / "data.json").read_text())
    assert stats["users"] == 40 and stats["items"] == 30
    assert sum(stats["events_per_behavior"].values()) == stats["events"] == len(inter)
    assert stats["history_length"]["p50"] >= 4
    assert "| events_per_split/rec/test |" in stats_markdown(stats)
