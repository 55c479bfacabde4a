"""Ingest and validate the real Amazon `office` data (../shared/data/office) through the stage functions."""
import os
from pathlib import Path

import pandas as pd
import pytest

from gensar.config import load_params
from gensar.stages import ingest, validate

OFFICE = Path(os.environ.get("GENSAR_OFFICE", Path(__file__).resolve().parents[2] / "shared/data/office"))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not OFFICE.exists(), reason="needs ../shared/data/office")]


def test_office_ingests_and_validates_for_real(tmp_path):
    params = load_params(overrides={"data.source": str(OFFICE), "queries.mode": "paper"})
    summary = ingest.run(params, str(OFFICE), tmp_path / "ingested", tmp_path / "ingest.json")
    assert summary["items"] == 2420
    stats = validate.run(params, tmp_path / "ingested", tmp_path / "canonical", tmp_path / "quarantine.parquet",
                         tmp_path / "validation.json", tmp_path / "data.json")
    inter = pd.read_parquet(tmp_path / "canonical" / "interactions.parquet")
    assert inter["user_id"].nunique() == 4905
    assert (inter["behavior"] == "rec").sum() == 53258          # every click is a rec event
    assert set(inter["split"]) == {"train", "valid", "test"}
    # leave-one-out: exactly one test and one valid rec event per user
    rec = inter[inter["behavior"] == "rec"]
    assert (rec[rec["split"] == "test"].groupby("user_id").size() == 1).all()
    assert (rec[rec["split"] == "valid"].groupby("user_id").size() == 1).all()
    assert (tmp_path / "validation.json").exists() and (tmp_path / "data.json").exists()
    assert stats is not None
