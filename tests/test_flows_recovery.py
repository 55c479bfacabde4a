"""Crash recovery: a retrain killed (SIGKILL) during training resumes from the last checkpoint.

The flow runs in a subprocess on a copy of the session's trained repository with a new training
configuration (so training starts over). Once an epoch checkpoint exists the process group is
killed; the flow is run again and must continue after that epoch: the re-run's epoch history starts
with exactly the rows of the killed run (same losses, same timings), instead of training from zero.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from flows_support import ROOT, prefect_session, trained_repo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def harness(request):
    return prefect_session(request)


def test_killed_retrain_resumes_from_the_last_checkpoint(harness, tmp_path_factory, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.retrain import retrain

    trained = trained_repo(tmp_path_factory)
    repo = tmp_path / "repo"
    shutil.copytree(trained["repo"], repo, symlinks=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update({"epochs": 3, "patience": 100, "seed": 1})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    last = repo / "models" / "t5" / "checkpoints" / "last.pt"
    start = time.time()

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.retrain", "--repo", str(repo), "--keep-snapshot",
                             "--no-publish"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.time() - start < 300 and proc.poll() is None:
            if last.exists() and last.stat().st_mtime > start:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the flow ended before it could be killed during training"
        assert last.exists() and last.stat().st_mtime > start, "no checkpoint within 300 s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    done = json.loads(json.dumps(ckpt["history"]))            # epochs finished before the kill
    assert 1 <= len(done) < 3

    out = retrain(repo=str(repo), refresh_snapshot=False, publish_model=False)
    ran = {s["stage"]: s for s in out["stages"]}
    assert ran["ingest"]["skipped"] and ran["identifiers"]["skipped"] and not ran["train"]["skipped"]
    epochs = json.loads((repo / "models" / "t5" / "history.json").read_text())   # one row per epoch
    assert len(epochs) == 3
    assert epochs[: len(done)] == done                         # resumed, not retrained from epoch 0
