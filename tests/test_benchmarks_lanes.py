"""benchmarks/lanes.py: the parallel-run loop of the recipe sweep and the final-weights A/B."""
import json
import sys

import pytest

from benchmarks.lanes import Job, run_in_lanes

# a job: record its start and end time, say something on stderr, exit with the code it is given
SCRIPT = ("import json, os, sys, time; t0 = time.time(); time.sleep(0.3); "
          "print('hello from', os.environ['LANE_TAG'], file=sys.stderr); "
          "json.dump([t0, time.time()], open(sys.argv[1], 'w')); sys.exit(int(sys.argv[2]))")


def _jobs(tmp_path, codes):
    return [Job(f"j{i}", [sys.executable, "-c", SCRIPT, str(tmp_path / f"j{i}.json"), str(code)],
                tmp_path / f"logs/j{i}/train.log", {"LANE_TAG": f"tag{i}"}) for i, code in enumerate(codes)]


def test_jobs_run_at_most_lanes_at_once_and_each_exit_is_reported(tmp_path, capsys):
    ended = []
    codes = run_in_lanes(_jobs(tmp_path, [0, 3, 0, 0, 0]), lanes=2, poll_s=0.02,
                         on_exit=lambda job, code, load: ended.append((job.name, code, load)))
    assert codes == {"j0": 0, "j1": 3, "j2": 0, "j3": 0, "j4": 0}   # a failing job does not stop the others
    assert sorted(n for n, _, _ in ended) == ["j0", "j1", "j2", "j3", "j4"]
    assert all(load >= 0 for _, _, load in ended)
    spans = [json.loads((tmp_path / f"j{i}.json").read_text()) for i in range(5)]
    for t0, _ in spans:   # jobs running when each one started: itself and at most one other
        assert sum(s <= t0 < e for s, e in spans) <= 2
    assert max(sum(s <= t0 < e for s, e in spans) for t0, _ in spans) == 2   # two did overlap
    started = [line.split()[2] for line in capsys.readouterr().out.splitlines() if " start " in line]
    assert started == ["j0", "j1", "j2", "j3", "j4"]   # started in the order given
    for i in range(5):   # stderr in the job's own log, its env on top of ours
        assert (tmp_path / f"logs/j{i}/train.log").read_text().strip() == f"hello from tag{i}"


def test_one_lane_runs_jobs_one_after_another(tmp_path):
    run_in_lanes(_jobs(tmp_path, [0, 0, 0]), lanes=1, poll_s=0.02)
    spans = [json.loads((tmp_path / f"j{i}.json").read_text()) for i in range(3)]
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2))


def test_bad_lanes_and_duplicate_names_are_errors(tmp_path):
    with pytest.raises(ValueError, match="lanes must be >= 1"):
        run_in_lanes(_jobs(tmp_path, [0]), lanes=0)
    job = _jobs(tmp_path, [0])[0]
    with pytest.raises(ValueError, match="unique"):
        run_in_lanes([job, job], lanes=2)
