"""Benchmark: ingest + validate on a real source, each stage in its own subprocess, N times.

Prints a Markdown table of wall time and peak resident memory (median, min, max) per stage, and
the dataset statistics table of the last run. Peak RSS is the child's own `ru_maxrss` (os.wait4),
so each stage is measured alone, including Python start-up and imports (GX alone takes ~2.5 s).

    python benchmarks/ingest_bench.py                       # ../shared/data/beauty, 3 runs
    python benchmarks/ingest_bench.py --source ../shared/data/office --runs 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gensar.data.stats import stats_markdown

ROOT = Path(__file__).resolve().parents[1]


def run_stage(args: list[str], env: dict) -> tuple[float, float, float]:
    """Run `python -m <args>`; return (wall s, peak RSS MiB, CPU s = user + sys) of that child alone."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # Linux: ru_maxrss in KiB


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="../shared/data/beauty")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args()
    env = dict(os.environ, GX_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    times: dict[str, list[float]] = {"ingest": [], "validate": [], "total": []}
    rss: dict[str, list[float]] = {"ingest": [], "validate": [], "total": []}
    cpu: dict[str, list[float]] = {"ingest": [], "validate": [], "total": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i in range(args.runs):
            t_i, m_i, c_i = run_stage(["gensar.stages.ingest", "--params", args.params, "--snapshot", args.source,
                                  "--out", str(work / "ingested"), "--report", str(work / "ingest.json")], env)
            t_v, m_v, c_v = run_stage(["gensar.stages.validate", "--params", args.params,
                                  "--ingested", str(work / "ingested"), "--out", str(work / "canonical"),
                                  "--quarantine", str(work / "quarantine.parquet"),
                                  "--report", str(work / "validation.json"), "--stats", str(work / "data.json")],
                                 env)
            for key, t, m, c in (("ingest", t_i, m_i, c_i), ("validate", t_v, m_v, c_v),
                                 ("total", t_i + t_v, max(m_i, m_v), c_i + c_v)):
                times[key].append(t)
                rss[key].append(m)
                cpu[key].append(c)
            print(f"run {i + 1}/{args.runs}: ingest {t_i:.1f} s ({m_i:.0f} MiB), "
                  f"validate {t_v:.1f} s ({m_v:.0f} MiB)", file=sys.stderr)
        stats = json.loads((work / "data.json").read_text())
    load = os.getloadavg()
    print(f"## ingest + validate on `{args.source}` ({args.runs} runs, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} at the end)\n")
    print("| stage | wall s median | min | max | peak RSS MiB median | min | max | CPU s median | min | max |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, values in times.items():
        print(f"| {key} | {summary(values)} | {summary(rss[key])} | {summary(cpu[key])} |")
    print("\n(total: wall and CPU times summed per run; peak RSS the larger of the two stages; CPU s = "
          "user + sys of the stage process, less sensitive to other load than wall time)\n")
    print(stats_markdown(stats))


if __name__ == "__main__":
    main()
