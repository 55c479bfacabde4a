"""Every published version is reproducible: checking out its tag restores exactly its files.

Uses the session's tiny repository with two published versions (model-v1 from retrain, model-v2
from an incremental batch) and compares md5s of the raw snapshot, canonical tables, identifiers, ONNX
export and published/ with those recorded right after each version was published.
"""
import pytest
from flows_support import incremental_done, prefect_session, run, snapshot_hashes, trained_repo

from tasks.versioning import git, restore_version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def harness(request):
    return prefect_session(request)


@pytest.fixture(scope="session")
def versions(harness, tmp_path_factory):
    trained = trained_repo(tmp_path_factory)
    incremental_done(trained)
    return trained


def test_v1_and_v2_differ_where_the_batch_changed_them(versions):
    v1, v2 = versions["v1"], versions["v2"]
    assert set(v1) == {"data", "prepared/canonical", "models/ids", "models/onnx", "published"}
    assert v1["data"] != v2["data"] and v1["published"] != v2["published"]
    assert any(p.startswith("batches/") for p in v2["data"]) and not any(p.startswith("batches/") for p in v1["data"])


def test_checkout_of_an_older_tag_restores_its_data_and_models(versions):
    repo = versions["repo"]
    try:
        restore_version(repo, "model-v1")
        assert snapshot_hashes(repo) == versions["v1"]
    finally:
        restore_version(repo, "main")
    assert snapshot_hashes(repo) == versions["v2"]


def test_dvc_pull_in_a_fresh_clone_restores_the_version(versions, tmp_path):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(versions["repo"]), str(clone)], tmp_path)
    restore_version(clone, "model-v1", pull=True)            # files come from the DVC remote
    assert snapshot_hashes(clone) == versions["v1"]
    assert git(clone, "describe", "--tags") == "model-v1"


def test_every_published_version_is_clean_in_dvc_status_after_a_pull(versions, tmp_path):
    """What a flow ran is what params.yaml and dvc.yaml say: `git checkout model-v<N> && dvc pull &&
    dvc status` is clean for the retrain version and for the incremental one (warm start in params)."""
    import yaml

    from tasks.stages import dvc_repo

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(versions["repo"]), str(clone)], tmp_path)
    for tag, warm in (("model-v1", False), ("model-v2", True)):
        restore_version(clone, tag, pull=True)
        with dvc_repo(clone) as r:
            assert r.status() == {}, tag
        assert yaml.safe_load((clone / "params.yaml").read_text())["incremental"]["enabled"] is warm
    with dvc_repo(versions["repo"]) as r:                     # and right after the flows, in their workspace
        assert r.status() == {}
