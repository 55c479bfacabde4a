"""Run benchmark jobs as subprocesses, at most `lanes` at a time (the loop of `recipe_sweep.py` and
`final_weights_ab.py`).

Each job's stdout and stderr go to its own log file; the load average is read when a job starts, and
`on_exit(job, returncode, load_at_start)` runs as each job ends (write its results, redraw a table), so
a long sweep leaves what it finished even when a later job fails or the sweep is stopped.
"""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    name: str
    cmd: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)   # added to this process's environment


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


def run_in_lanes(jobs: list[Job], lanes: int, on_exit: Callable[[Job, int, float], None] | None = None,
                 poll_s: float = 5.0) -> dict[str, int]:
    """Run `jobs` in order, `lanes` at once; returns {job name: exit code}."""
    if lanes < 1:
        raise ValueError(f"lanes must be >= 1, got {lanes}")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique: {names}")
    todo, running, codes = list(jobs), {}, {}
    while todo or running:
        while todo and len(running) < lanes:
            job = todo.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            load = os.getloadavg()[0]
            print(f"[{_stamp()}] start {job.name} (load {load:.2f})", flush=True)
            with open(job.log, "w") as log:          # the child keeps its own copy of the file
                proc = subprocess.Popen(job.cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **job.env})
            running[job.name] = (job, proc, load)
        time.sleep(poll_s)
        for name, (job, proc, load) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            codes[name] = proc.returncode
            print(f"[{_stamp()}] {name} exited {proc.returncode} (load {os.getloadavg()[0]:.2f})", flush=True)
            if on_exit is not None:
                on_exit(job, proc.returncode, load)
    return codes
