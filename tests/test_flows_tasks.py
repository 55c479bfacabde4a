"""The stage tasks read the pipeline from dvc.yaml (one definition, two drivers): no Prefect server needed."""
import pytest
from flows_support import ROOT

from tasks.stages import STAGE_TASKS, read_pipeline, stage_argv, task_for


def test_every_dvc_stage_has_a_task_and_a_gensar_stage_command():
    stages = read_pipeline(ROOT)
    assert list(stages) == ["ingest", "validate", "embed", "collab", "identifiers", "train", "evaluate", "export"]
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
