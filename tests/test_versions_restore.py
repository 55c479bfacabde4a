"""Every published version is reproducible: checking out its tag restores exactly its files.

Uses the session's tiny repository with two published versions (gensar-onnx@v1.0.0 from retrain, gensar-onnx@v2.0.0
from an incremental batch) and compares md5s of the raw snapshot, canonical tables, identifiers, ONNX
export and published/ with those recorded right after each version was published.
"""
import pytest
from flows_support import (
    ROOT,
    incremental_done,
    prefect_session,
    run,
    snapshot_hashes,
    trained_repo,
    tree_hashes,
)

from tasks.versioning import git, restore_version, stage_version, version_tags

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
        restore_version(repo, "gensar-onnx@v1.0.0")
        assert snapshot_hashes(repo) == versions["v1"]
    finally:
        restore_version(repo, "main")
    assert snapshot_hashes(repo) == versions["v2"]


def test_dvc_pull_in_a_fresh_clone_restores_the_version(versions, tmp_path):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(versions["repo"]), str(clone)], tmp_path)
    restore_version(clone, "gensar-onnx@v1.0.0", pull=True)            # files come from the DVC remote
    assert snapshot_hashes(clone) == versions["v1"]
    assert "gensar-onnx@v1.0.0" in git(clone, "tag", "--points-at", "HEAD").split()


def test_the_registry_names_versions_and_the_prod_stage(versions, tmp_path):
    """GTO tags: `gto`/`dvc artifacts get` resolve the versions and the `prod` stage (the latest
    published version) to the export each one published."""
    repo = versions["repo"]
    assert version_tags(repo) == [1, 2] and stage_version(repo) == 2
    tags = git(repo, "tag", "--list").split()
    assert {"gensar-onnx@v1.0.0", "gensar-onnx@v2.0.0", "gensar-onnx#prod#1", "gensar-onnx#prod#2"} <= set(tags)
    dvc = str(ROOT / ".venv" / "bin" / "dvc")
    run([dvc, "artifacts", "get", str(repo), "gensar-onnx", "--stage", "prod", "-o", str(tmp_path / "prod")], tmp_path)
    run([dvc, "artifacts", "get", str(repo), "gensar-onnx", "--rev", "v1.0.0", "-o", str(tmp_path / "v1")], tmp_path)
    assert tree_hashes(tmp_path / "prod") == versions["v2"]["models/onnx"]
    assert tree_hashes(tmp_path / "v1") == versions["v1"]["models/onnx"] != versions["v2"]["models/onnx"]


def test_every_published_version_is_clean_in_dvc_status_after_a_pull(versions, tmp_path):
    """What a flow ran is what params.yaml and dvc.yaml say: `git checkout gensar-onnx@v<N>.0.0 && dvc pull &&
    dvc status` is clean for the retrain version and for the incremental one (warm start in params)."""
    import yaml

    from tasks.stages import dvc_repo

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(versions["repo"]), str(clone)], tmp_path)
    for tag, warm in (("gensar-onnx@v1.0.0", False), ("gensar-onnx@v2.0.0", True)):
        restore_version(clone, tag, pull=True)
        with dvc_repo(clone) as r:
            assert r.status() == {}, tag
        assert yaml.safe_load((clone / "params.yaml").read_text())["incremental"]["enabled"] is warm
    with dvc_repo(versions["repo"]) as r:                     # and right after the flows, in their workspace
        assert r.status() == {}
