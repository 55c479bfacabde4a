"""The retrain and incremental flows end to end on a tiny slice of office (or synthetic data without ../shared).

One repository (a throw-away git + DVC copy of the pipeline) goes through, in order:
retrain (every stage, gensar-onnx@v1.0.0) -> retrain with nothing new (every stage skipped) -> a candidate that
fails the quality gate -> an invalid batch -> a valid batch (incremental, gensar-onnx@v2.0.0).
"""
import itertools
import json
import time

import pytest
import yaml
from flows_support import incremental_done, prefect_session, snapshot_hashes, trained_repo

from tasks.versioning import git, version_tags

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def harness(request):
    return prefect_session(request)


@pytest.fixture(scope="session")
def trained(harness, tmp_path_factory):
    return trained_repo(tmp_path_factory)


def artifacts_of(state) -> dict[str, str]:
    """key -> data of the artifacts a flow run created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {a.key: a.data for a in arts if a.key}


def task_runs_of(state) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))


def test_retrain_runs_every_stage_and_publishes_v1(trained):
    repo, out = trained["repo"], trained["out"]
    stages = [s["stage"] for s in out["stages"]]
    assert stages == ["ingest", "validate", "embed", "collab", "identifiers", "train", "export", "evaluate"]
    assert not any(s["skipped"] for s in out["stages"])
    assert out["published"]["tag"] == "gensar-onnx@v1.0.0" and version_tags(repo) == [1]
    record = json.loads((repo / "published" / "version.json").read_text())
    assert record["version"] == 1 and (repo / "published" / "onnx").is_dir()
    assert "gensar" in record["metrics"]["eval"]
    # the version commit records the pipeline state, and the remote holds its files
    files = git(repo, "show", "--name-only", "--format=", "gensar-onnx@v1.0.0").split()
    assert {"dvc.lock", "data.dvc", "published.dvc", "metrics/eval.json"} <= set(files)
    assert any((trained["root"] / "remote").rglob("*"))
    assert git(repo, "status", "--porcelain", "--", "dvc.lock", "data.dvc", "published.dvc") == ""


def test_rerun_with_nothing_new_skips_every_stage(trained):
    from flows.retrain import retrain

    repo = trained["repo"]
    t0 = time.perf_counter()
    state = retrain(repo=str(repo), return_state=True)
    seconds = time.perf_counter() - t0
    out = state.result()
    assert [s["skipped"] for s in out["stages"]] == [True] * 8
    assert out["published"] is None and version_tags(repo) == [1]
    assert seconds < 60
    arts = artifacts_of(state)
    assert "skipped" in json.dumps(arts["stages"])
    assert {"metrics", "identifier-report", "data-statistics", "training-curve", "data-docs"} <= set(arts)
    assert "| model |" in arts["metrics"] and "| validation |" in arts["training-curve"]
    # the run page draws the pipeline: each stage task waits for the stage before it
    runs = {r.name: r for r in task_runs_of(state)}
    stages = ["ingest", "validate", "embed", "collab", "identifiers", "train", "export", "evaluate"]
    for before, stage in itertools.pairwise(stages):
        upstream = {i.id for i in runs[stage].task_inputs.get("wait_for", [])}
        assert upstream == {runs[before].id}, stage


def test_failed_gate_ends_failed_and_keeps_the_published_model(trained):
    from flows.retrain import retrain

    repo = trained["repo"]
    before = snapshot_hashes(repo)["published"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gate"]["tolerance"] = -1.0            # demand +1.0 NDCG: no candidate can pass
    params["gate"]["z"] = 0.0                     # (no allowance for test-sample noise either)
    params["evaluate"]["seed"] = 1                # so the candidate is re-evaluated
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        state = retrain(repo=str(repo), return_state=True)
    finally:
        git(repo, "checkout", "--", "params.yaml")
    assert state.is_failed()
    assert "quality gate FAILED against published v1" in state.message or \
        "quality gate FAILED" in str(state.result(raise_on_failure=False))
    report = artifacts_of(state)["quality-gate"]
    assert "FAILED" in report and "| NO |" in report
    assert snapshot_hashes(repo)["published"] == before
    assert version_tags(repo) == [1]


def test_invalid_batch_fails_before_training_and_changes_nothing(trained, tmp_path):
    from flows.incremental import incremental

    repo = trained["repo"]
    bad = tmp_path / "bad_batch"
    bad.mkdir()
    # every interaction points at an item that exists nowhere
    (bad / "office.inter.json").write_text(json.dumps({f"new_user_{u}": [f"ghost_{u}_{i}" for i in range(6)]
                                                       for u in range(30)}))
    (bad / "office.item.json").write_text("{}")
    before = snapshot_hashes(repo)
    lock = (repo / "dvc.lock").read_text()
    state = incremental(batch=str(bad), repo=str(repo), return_state=True)
    assert state.is_failed()
    assert "is invalid and was not added" in state.message or "InvalidBatch" in state.message
    artifact = artifacts_of(state)["batch-validation"]
    assert "## Why" in artifact and "| unknown item |" in artifact       # the reasons, with examples
    assert "Examples of `unknown item`" in artifact and "ghost_" in artifact
    assert "Great Expectations data docs: file://" in artifact
    assert snapshot_hashes(repo) == before and (repo / "dvc.lock").read_text() == lock
    assert not (repo / "data" / "batches").exists()


def test_incremental_batch_assigns_new_ids_warm_starts_and_publishes_v2(trained):
    import pandas as pd

    repo = trained["repo"]
    old_ids = pd.read_parquet(repo / "models" / "ids" / "identifiers.parquet")
    out = incremental_done(trained)
    ran = {s["stage"]: s for s in out["stages"]}
    assert not ran["ingest"]["skipped"] and not ran["train"]["skipped"]
    new_ids = pd.read_parquet(repo / "models" / "ids" / "identifiers.parquet")
    kept = new_ids.merge(old_ids, on="item_id", suffixes=("", "_old"))
    assert len(kept) == len(old_ids)                                   # every old item still there ...
    assert all(list(a) == list(b) for a, b in zip(kept["sid"], kept["sid_old"]))   # ... with its SID
    assert len(new_ids) > len(old_ids)                                # the batch brought new items
    meta = json.loads((repo / "models" / "t5" / "gensar.json").read_text())
    assert meta.get("init")                                           # warm start from the previous model
    assert out["published"]["tag"] == "gensar-onnx@v2.0.0" and version_tags(repo) == [1, 2]
    assert (repo / "data" / "batches" / "week1").is_dir()


def test_a_resent_batch_is_a_no_op(trained, tmp_path):
    import shutil

    from flows.incremental import incremental

    incremental_done(trained)
    repo = trained["repo"]
    again = tmp_path / "week1-resent"
    shutil.copytree(trained["batch"], again)                          # the same content, another name
    before, lock = snapshot_hashes(repo), (repo / "dvc.lock").read_text()
    out = incremental(batch=str(again), repo=str(repo))
    assert out["already_added_as"] == "week1" and out["stages"] == [] and out["published"] is None
    assert snapshot_hashes(repo) == before and (repo / "dvc.lock").read_text() == lock
