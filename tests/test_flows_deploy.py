"""Schedules: prefect.yaml deploys to a local Prefect server, a process worker runs the deployment.

A real `prefect server start` on 127.0.0.1 (a free port), `prefect work-pool create`, `prefect deploy
--all` from a throw-away copy of the project, `prefect worker start`, then `prefect deployment run
retrain/nightly --watch`: the run must end Completed and the stages must have run in that copy.
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
from flows_support import TEST_PARAMS, make_repo, source_subset

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).parent / "prefect")


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


def test_deployment_runs_on_a_process_worker(tmp_path):
    src = source_subset(tmp_path / "office" / "office", 40)
    repo = make_repo(tmp_path, src, TEST_PARAMS, stages=["ingest", "validate"], project=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
           "GX_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "processes.log", "w")  # noqa: SIM115 - closed in the finally below
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
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
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "gensar-process", "--limit", "1"],
                                  cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        out = cli("deployment", "run", "retrain/nightly", "--param", "publish_model=false",
                  "--watch", "--watch-timeout", "300", timeout=360)
        assert "Completed" in out, out
        lock = (repo / "dvc.lock").read_text()            # the stages ran in the deployed checkout
        assert "ingest:" in lock and "validate:" in lock
        schedules = cli("deployment", "inspect", "retrain/nightly")
        assert "0 2 * * *" in schedules
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
        log.close()
