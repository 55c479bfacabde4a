"""The quality gate and the published version record (gensar.publish: no Prefect, no DVC)."""
import json

import pytest

from gensar.config import GateConfig, load_params
from gensar.publish import flatten_metrics, gate, lookup, read_version, write_published

CFG = GateConfig(metrics=("rec/ndcg@10", "search/ndcg@10"), tolerance=0.01)


def test_flatten_nested_metrics_keeps_numbers_only():
    flat = flatten_metrics({"rec": {"ndcg@10": 0.2, "n": 5, "ok": True}, "note": "x", "search": {"ndcg@10": 0.1}})
    assert flat == {"rec/ndcg@10": 0.2, "rec/n": 5.0, "search/ndcg@10": 0.1}


def test_first_candidate_passes_without_a_published_model():
    result = gate({"rec/ndcg@10": 0.01, "search/ndcg@10": 0.02}, None, CFG)
    assert result.passed and result.published_version is None
    assert "first version" in result.summary()


def test_drop_within_tolerance_passes_and_beyond_fails():
    published = {"rec/ndcg@10": 0.30, "search/ndcg@10": 0.20}
    ok = gate({"rec/ndcg@10": 0.295, "search/ndcg@10": 0.25}, published, CFG, 3)
    assert ok.passed
    bad = gate({"rec/ndcg@10": 0.28, "search/ndcg@10": 0.25}, published, CFG, 3)
    assert not bad.passed
    assert [r.metric for r in bad.failures] == ["rec/ndcg@10"]
    text = bad.summary()
    assert "FAILED" in text and "rec/ndcg@10 0.2800 < published 0.3000" in text and "v3 stays" in text
    md = bad.markdown()
    assert "| rec/ndcg@10 | 0.3000 | 0.2800 | -0.0200 | 0.0100 | NO |" in md


def test_metric_is_found_under_a_protocol_prefix_and_missing_metric_is_an_error():
    metrics = flatten_metrics({"sampled": {"rec": {"ndcg@10": 0.4}}, "full": {"search": {"ndcg@10": 0.1}}})
    assert lookup(metrics, "rec/ndcg@10") == 0.4
    with pytest.raises(KeyError, match="search/recall@10"):
        gate(metrics, None, GateConfig(metrics=("search/recall@10",)))
    two = flatten_metrics({"a": {"rec": {"ndcg@10": 0.4}}, "b": {"rec": {"ndcg@10": 0.1}}})
    with pytest.raises(KeyError, match="ambiguous"):
        lookup(two, "rec/ndcg@10")


def test_write_published_copies_model_and_metrics(tmp_path):
    onnx, metrics = tmp_path / "models" / "onnx", tmp_path / "metrics"
    onnx.mkdir(parents=True)
    metrics.mkdir()
    (onnx / "encoder.onnx").write_bytes(b"enc")
    (metrics / "eval.json").write_text(json.dumps({"rec": {"ndcg@10": 0.3}}))
    assert read_version(tmp_path / "published") is None
    record = write_published(1, onnx, metrics, tmp_path / "published", gate({"rec/ndcg@10": 0.3}, None,
                                                                             GateConfig(metrics=("rec/ndcg@10",))))
    assert (tmp_path / "published" / "onnx" / "encoder.onnx").read_bytes() == b"enc"
    assert read_version(tmp_path / "published") == json.loads(json.dumps(record))
    assert record["version"] == 1 and record["tag"] == "gensar-onnx@v1.0.0"
    assert record["metrics"]["eval"] == {"rec": {"ndcg@10": 0.3}}
    with pytest.raises(FileNotFoundError, match="export"):
        write_published(2, tmp_path / "missing", metrics, tmp_path / "published")
    assert read_version(tmp_path / "published")["version"] == 1  # a failed publish keeps the old one


def test_gate_section_of_params_yaml_is_typed(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("gate:\n  metrics: [rec/ndcg@10]\n  tolerance: 0.02\n")
    assert load_params(p).gate == GateConfig(metrics=("rec/ndcg@10",), tolerance=0.02)


def test_gate_reads_the_gated_models_entry_of_eval_json():
    from gensar.publish import model_metrics

    eval_json = {"gensar": {"rec/sampled/ndcg@10": 0.3}, "popularity": {"rec/sampled/ndcg@10": 0.1}}
    cfg = GateConfig(model="gensar", metrics=("rec/sampled/ndcg@10",))
    assert model_metrics(eval_json, cfg) == {"rec/sampled/ndcg@10": 0.3}
    with pytest.raises(KeyError, match="no entry 'gensar'"):
        model_metrics({"popularity": {}}, cfg)


def test_a_drop_within_the_noise_of_the_test_sample_passes():
    """With standard errors in both eval.json entries, the allowed drop is z * SE of the difference:
    the .456 -> .423 move of an identical retrain (SE about .015 each on 584 cases) passes; a drop of
    three such SEs fails; without SEs the tolerance alone decides."""
    cfg = GateConfig(metrics=("rec/sampled/ndcg@10",), tolerance=0.01, z=2.0)
    published = {"rec/sampled/ndcg@10": 0.456, "se/rec/sampled/ndcg@10": 0.015}
    noisy = gate({"rec/sampled/ndcg@10": 0.423, "se/rec/sampled/ndcg@10": 0.015}, published, cfg, 1)
    assert noisy.passed and noisy.rows[0].allowed == pytest.approx(2.0 * (2 * 0.015 ** 2) ** 0.5)
    real = gate({"rec/sampled/ndcg@10": 0.390, "se/rec/sampled/ndcg@10": 0.015}, published, cfg, 1)
    assert not real.passed and "allowed 0.0424" in real.summary()
    bare = gate({"rec/sampled/ndcg@10": 0.423}, {"rec/sampled/ndcg@10": 0.456}, cfg, 1)
    assert not bare.passed and bare.rows[0].allowed == 0.01
    assert "allowed drop" in noisy.markdown()


def test_metrics_markdown_is_a_model_by_metric_table_with_change_and_gap():
    from gensar.publish import metrics_markdown

    def m(v):
        return {f"rec/full/{k}": v for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")}
    eval_json = {"popularity": m(0.01), "sasrec": m(0.10), "gensar": {**m(0.08), "se": {"x": 1.0}}}
    md = metrics_markdown(eval_json, {"gensar": m(0.05)}, published_version=3)
    lines = md.splitlines()
    assert lines[0] == "### rec, full ranking over all items" and "search" not in md
    assert lines[2] == "| model | recall@5 | ndcg@5 | recall@10 | ndcg@10 |"
    assert lines[4].startswith("| gensar | 0.0800") and lines[6] == "| sasrec | **0.1000** | **0.1000** | **0.1000** | **0.1000** |"
    assert "| change against v3 | +0.0300 | +0.0300 | +0.0300 | +0.0300 |" in lines
    assert "| gap to the best baseline | -0.0200 | -0.0200 | -0.0200 | -0.0200 |" in lines


def test_training_markdown_has_one_row_per_validation_and_marks_the_best():
    from gensar.publish import training_markdown

    rows = [{"train_minutes": 1.0, "step": 10, "train/loss": 3.0, "valid/ndcg@10": 0.1, "valid/rec/ndcg@10": 0.05,
             "valid/search/ndcg@10": 0.15},
            {"train_minutes": 2.0, "step": 20, "train/loss": 2.0, "valid/ndcg@10": 0.2, "valid/rec/ndcg@10": 0.1,
             "valid/search/ndcg@10": 0.3}]
    md = training_markdown(rows).splitlines()
    assert md[4] == "| 0 | 1.0 | 10 | 3.0000 | 0.0500 | 0.1500 |  |"
    assert md[5] == "| 1 | 2.0 | 20 | 2.0000 | 0.1000 | 0.3000 | **best** |"


def test_z_zero_or_no_standard_errors_leave_the_tolerance_alone():
    """A negative tolerance (demand an improvement) is not relaxed to 0 by the noise rule."""
    demand = GateConfig(metrics=("rec/sampled/ndcg@10",), tolerance=-1.0, z=0.0)
    same = {"rec/sampled/ndcg@10": 0.4, "se/rec/sampled/ndcg@10": 0.01}
    result = gate(same, same, demand, 1)
    assert not result.passed and result.rows[0].allowed == -1.0
