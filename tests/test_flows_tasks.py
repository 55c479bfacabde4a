"""The stage tasks read the pipeline from dvc.yaml (one definition, two drivers): no Prefect server needed."""
import pytest
from flows_support import ROOT

from tasks.stages import STAGE_TASKS, read_pipeline, stage_argv, task_for


def test_every_dvc_stage_has_a_task_and_a_gensar_stage_command():
    stages = read_pipeline(ROOT)
    assert list(stages) == ["ingest", "validate", "embed", "collab", "identifiers", "train", "export", "evaluate"]
    for name in stages:
        assert task_for(name) is STAGE_TASKS[name] and STAGE_TASKS[name].name == name
        argv = stage_argv(ROOT, name)
        assert argv and all(not a.startswith("python") for a in argv)
    assert stage_argv(ROOT, "ingest")[:2] == ["--snapshot", "data"]


def test_stage_tasks_are_never_cached_and_have_timeouts():
    from prefect.cache_policies import NONE

    for t in STAGE_TASKS.values():
        assert t.cache_policy is NONE and t.timeout_seconds and t.retries == 0


def test_a_stage_command_that_is_not_a_gensar_stage_is_rejected(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: bash train.sh\n")
    with pytest.raises(ValueError, match="must start with `python -m gensar.stages.train`"):
        stage_argv(tmp_path, "train")
    with pytest.raises(KeyError, match="no stage 'export'"):
        stage_argv(tmp_path, "export")


def test_a_batch_is_judged_by_its_own_share_of_quarantined_rows(tmp_path):
    import json

    from tasks.data import _batch_bad_rows

    repo, scratch = tmp_path / "repo", tmp_path / "scratch"
    for d in (repo / "metrics", scratch / "metrics", scratch / "reports"):
        d.mkdir(parents=True)
    (repo / "params.yaml").write_text("validate:\n  max_bad_row_share: 0.05\n")
    (repo / "metrics" / "data.json").write_text(json.dumps({"quarantined_rows": 10}))
    (scratch / "reports" / "ingest.json").write_text(json.dumps({"batches": [{"name": "b1", "interactions": 300}]}))
    # 10 -> 25 quarantined: 15 of the batch's 300 interactions (5%) is still within the limit
    (scratch / "metrics" / "data.json").write_text(json.dumps({"quarantined_rows": 25}))
    assert _batch_bad_rows(repo, scratch, "b1", "params.yaml")[0] is None
    # 10 -> 310: the whole batch was rejected row by row (0.3% of a large snapshot, 100% of the batch)
    (scratch / "metrics" / "data.json").write_text(json.dumps({"quarantined_rows": 310}))
    error, info = _batch_bad_rows(repo, scratch, "b1", "params.yaml")
    assert "300 events of batch 'b1'" in error and "100.0% > validate.max_bad_row_share 5.0%" in error
    assert info["share"] == 1.0


def test_a_failed_gate_emits_an_event_a_user_can_route(tmp_path, monkeypatch, asserting_events_worker,
                                                       mock_should_emit_events):
    """quality_gate on a candidate worse than the published model: GateError, and a
    `gensar.gate.failed` event about the repository (what an automation turns into a notification)."""
    import json

    from prefect.events.clients import AssertingEventsClient

    from gensar.publish import GateError
    from tasks.release import quality_gate

    (tmp_path / "params.yaml").write_text("gate:\n  metrics: [rec/sampled/ndcg@10]\n  tolerance: 0.01\n  z: 0\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "eval.json").write_text(json.dumps({"gensar": {"rec/sampled/ndcg@10": 0.30}}))
    (tmp_path / "published").mkdir()
    (tmp_path / "published" / "version.json").write_text(json.dumps(
        {"version": 4, "metrics": {"eval": {"gensar": {"rec/sampled/ndcg@10": 0.40}}}}))
    monkeypatch.setattr("tasks.release.create_markdown_artifact", lambda *a, **k: None)   # no server here
    with pytest.raises(GateError, match="quality gate FAILED against published v4"):
        quality_gate.fn(str(tmp_path))
    asserting_events_worker.drain()
    # every client the events worker opened (`last` alone can be one that never opened); this test's
    # repository names its event
    events = [e for client in AssertingEventsClient.all for e in getattr(client, "events", [])
              if e.event == "gensar.gate.failed" and e.resource.id == f"gensar.repo.{tmp_path.name}"]
    assert len(events) == 1
    assert events[0].payload["published_version"] == 4 and events[0].payload["failures"] == ["rec/sampled/ndcg@10"]
