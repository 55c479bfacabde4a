"""Schedules: prefect.yaml deploys to a local Prefect server, a process worker runs the deployment.

A real `prefect server start` on 127.0.0.1 (a free port), `prefect work-pool create`, `prefect deploy
--all` from a throw-away copy of the project, `prefect worker start`, then `prefect deployment run
retrain/nightly --watch`: the run must end Completed, in the deployments' own checkout.
"""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from flows_support import TEST_PARAMS, make_repo, run, source_subset, tree_hashes

from tasks.versioning import git

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"Prefect server at {url} not healthy after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process we started and its children (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_deployment_runs_in_its_own_checkout_while_an_experiment_runs_in_the_workspace(tmp_path):
    """The nightly deployment on a process worker runs in its own checkout (the `production` branch
    beside the repository) and publishes there; an experiment run meanwhile in the workspace
    (`dvc exp run`, from a fresh repository: snapshot first) changes the workspace's model only:
    the export of the `prod` stage is the one the deployment published."""
    src = source_subset(tmp_path / "office" / "office", 40)
    repo = make_repo(tmp_path, src, TEST_PARAMS, project=True)
    production = tmp_path / "production"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
           "GX_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1", "GENSAR_PRODUCTION_DIR": str(production),
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "processes.log", "w")  # noqa: SIM115 - closed in the finally below
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = experiment = None
    try:
        wait_healthy(api, 120)

        def cli(*args, timeout=180):
            proc = subprocess.run([PREFECT, "--no-prompt", *args], cwd=repo, env=env, capture_output=True,
                                  text=True, timeout=timeout, check=False)
            assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
            return proc.stdout

        cli("work-pool", "create", "gensar-process", "--type", "process")
        deployed = cli("deploy", "--all")
        assert "retrain/nightly" in deployed and "incremental/on-batch" in deployed
        assert "0 2 * * *" in cli("deployment", "inspect", "retrain/nightly")
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "gensar-process", "--limit", "1"],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # the experiment, in the workspace, at the same time as the nightly run
        experiment = subprocess.Popen(
            ["bash", "-c", (f"{BIN}/gensar snapshot && {BIN}/dvc add -q data && "
                            f"{BIN}/dvc exp run -q --set-param train.epochs=2")],
            cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        out = cli("deployment", "run", "retrain/nightly", "--watch", "--watch-timeout", "600", timeout=660)
        assert "Completed" in out, out
        assert experiment.wait(600) == 0, (tmp_path / "processes.log").read_text()[-3000:]
        # the deployment ran and published in its own checkout, and pushed the version back
        assert git(production, "rev-parse", "--abbrev-ref", "HEAD") == "production"
        assert git(production, "status", "--porcelain", "--untracked-files=no") == ""
        assert "gensar-onnx@v1.0.0" in git(repo, "tag", "--list").split()
        assert git(repo, "rev-parse", "production") == git(production, "rev-parse", "HEAD")
        assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"          # the workspace stays on main
        served = tree_hashes(production / "published" / "onnx")
        assert served == tree_hashes(production / "models" / "onnx")
        run([f"{BIN}/dvc", "artifacts", "get", str(repo), "gensar-onnx", "--stage", "prod", "-o",
             str(tmp_path / "prod")], tmp_path)
        assert tree_hashes(tmp_path / "prod") == served                    # what the registry says is served
        assert tree_hashes(repo / "models" / "onnx") != served             # the experiment's model, elsewhere
        assert not (repo / "published").exists()
    finally:
        for proc in (experiment, worker):
            if proc is not None:
                stop(proc)
        stop(server)
        log.close()
