"""A failed ingestion or validation leaves the previous outputs (and models/) untouched."""
import dataclasses
import json

import pytest
from conftest import small_log, write_log

from gensar.config import ValidateConfig
from gensar.data.contract import DataError
from gensar.data.synthetic import generate
from gensar.stages import ingest, validate


def _snapshot(root):
    """path -> bytes of every file under root (hidden temporary leftovers included)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_failed_runs_leave_previous_outputs_untouched(tmp_path, params):
    data, work = tmp_path / "data", tmp_path / "work"
    generate(data, params.data.synthetic)
    (work / "models").mkdir(parents=True)
    (work / "models" / "model.pt").write_bytes(b"weights")
    paths = {"out": work / "prepared/canonical", "quarantine": work / "prepared/quarantine.parquet",
             "report": work / "reports/validation.json", "stats": work / "metrics/data.json"}
    ingest.run(params, data, out=work / "prepared/ingested", report=work / "reports/ingest.json")
    first = validate.run(params, work / "prepared/ingested", **paths)
    before = _snapshot(work)
    assert json.loads((work / "metrics/data.json").read_text())["users"] == first["users"] == 40

    # 1) a broken snapshot: ingestion fails, nothing changes
    (data / "items.csv").write_text("item_id,title\ni1,A\ni1,B\n")
    with pytest.raises(DataError, match="duplicate item ids"):
        ingest.run(params, data, out=work / "prepared/ingested", report=work / "reports/ingest.json")
    assert _snapshot(work) == before

    # 2) a snapshot with too many bad rows: ingestion succeeds, validation fails, its outputs stay
    inter, items = small_log()
    inter += [("u0", f"ghost{k}", 1_600_000_000 + k, "rec", "") for k in range(20)]
    write_log(tmp_path / "bad", inter, items)
    ingest.run(params, tmp_path / "bad", out=work / "prepared/ingested", report=work / "reports/ingest.json")
    after_ingest = _snapshot(work)
    strict = dataclasses.replace(params, validate=ValidateConfig(max_bad_row_share=0.01))
    with pytest.raises(DataError, match="rows are bad"):
        validate.run(strict, work / "prepared/ingested", **paths)
    rejected = _snapshot(work).pop("reports/validation.rejected.json")   # the reasons, beside the good report
    assert b"unknown item" in rejected
    assert (work / "reports/validation.rejected-docs/index.html").exists()   # and its data docs, apart
    assert {k: v for k, v in _snapshot(work).items() if not k.startswith("reports/validation.rejected")} \
        == after_ingest
    for key in ("prepared/canonical/items.parquet", "prepared/quarantine.parquet",
                "reports/validation.json", "metrics/data.json", "models/model.pt"):
        assert after_ingest[key] == before[key]
