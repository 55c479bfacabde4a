"""One Prefect task per DVC stage: ask DVC whether the stage changed, run the stage's `main()`, commit.

The command line of every stage lives only in `dvc.yaml`. A stage task reads that command, checks with
DVC whether the stage is out of date (`dvc status <stage>`), and if so calls
`gensar.stages.<name>.main(argv)` in this process with the argv of the dvc.yaml command, from the repo
root. Afterwards it records the new outputs in `dvc.lock` (`dvc commit -f <stage>`). So `dvc repro` and
the flows agree: whatever one driver ran, the other sees as up to date, and a flow with nothing new
skips every stage.
"""
from __future__ import annotations

import contextlib
import importlib
import shlex
import time
from pathlib import Path

import yaml
from prefect import task
from prefect.cache_policies import NONE

from tasks import run_logger

STAGE_MODULE = "gensar.stages."


class StageError(RuntimeError):
    """A stage's main() exited with an error status or message."""

# Generous wall-clock limits (seconds) per stage on one machine; a hung stage fails the flow run.
TIMEOUTS = {"ingest": 1800, "validate": 1800, "embed": 3 * 3600, "collab": 6 * 3600,
            "identifiers": 6 * 3600, "train": 48 * 3600, "evaluate": 6 * 3600, "export": 3600}


def read_pipeline(repo: str | Path) -> dict[str, dict]:
    """The stages of `dvc.yaml`, in file order (which is the pipeline's order)."""
    path = Path(repo) / "dvc.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {repo} a GenSAR repository?")
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    if not stages:
        raise ValueError(f"{path}: no `stages:` defined")
    return stages


def stage_argv(repo: str | Path, stage: str) -> list[str]:
    """argv for `gensar.stages.<stage>.main` from the stage's `cmd` in dvc.yaml."""
    stages = read_pipeline(repo)
    if stage not in stages:
        raise KeyError(f"{Path(repo) / 'dvc.yaml'}: no stage '{stage}' (stages: {', '.join(stages)})")
    cmd = shlex.split(str(stages[stage]["cmd"]))
    prefix = ["python", "-m", STAGE_MODULE + stage]
    if cmd[:3] != prefix:
        raise ValueError(f"dvc.yaml stage '{stage}': cmd must start with `{' '.join(prefix)}`, "
                         f"got `{stages[stage]['cmd']}`")
    return cmd[3:]


@contextlib.contextmanager
def dvc_repo(repo: str | Path):
    """A dvc.repo.Repo of `repo`, with the working directory there (DVC resolves paths from the cwd)."""
    from dvc.repo import Repo

    _one_dvc_log_line()
    with contextlib.chdir(repo), Repo(str(repo)) as r:
        r.scm_context.quiet = True  # no "To track the changes with git, run: ..." hints in the logs
        yield r


def _one_dvc_log_line() -> None:
    """DVC's logger has console handlers of its own (for its CLI) and also propagates to the root
    logger, where Prefect's handler prints every line again (`Updating lock file` twice per stage).
    In process, DVC's lines go through the root logger only: Prefect's console and run logs."""
    import logging

    dvc_log = logging.getLogger("dvc")
    for handler in list(dvc_log.handlers):
        if type(handler).__module__.startswith("dvc."):
            dvc_log.removeHandler(handler)


def dvc_changed(repo: str | Path, stage: str) -> dict:
    """What DVC says is out of date for `stage` ({} when it is up to date)."""
    with dvc_repo(repo) as r:
        return r.status(targets=[stage])


def dvc_commit(repo: str | Path, stage: str) -> None:
    """Record the stage's current deps and outs in dvc.lock and the DVC cache (`dvc commit -f`)."""
    with dvc_repo(repo) as r:
        r.commit(stage, force=True)
        for out in r.stage.collect(stage)[0].outs:  # like `dvc repro`: cached outputs go to .gitignore
            out.ignore()


def call_stage_main(repo: str | Path, stage: str, argv: list[str]):
    """Run `gensar.stages.<stage>.main(argv)` from the repo root; returns what main returns."""
    module = importlib.import_module(STAGE_MODULE + stage)
    with contextlib.chdir(repo):
        try:
            return module.main(argv)
        except SystemExit as e:  # argparse errors, and stages that exit with a message on bad data
            if isinstance(e.code, str):
                raise StageError(f"stage '{stage}': {e.code}") from None
            if e.code not in (0, None):
                raise StageError(f"stage '{stage}': `{' '.join(argv)}` exited with status {e.code}") from None
            return None


def run_stage(repo: str = ".", stage: str = "", params: str = "params.yaml", force: bool = False) -> dict:
    """Run one dvc.yaml stage if DVC says it changed (or `force`), then commit it to dvc.lock.

    The stage runs exactly its dvc.yaml command with params.yaml (no extra arguments, no other params
    file), so what dvc.lock records is what ran."""
    log = run_logger(__name__)
    repo = str(Path(repo).resolve())
    if params != "params.yaml":  # dvc.lock records params.yaml's values: a stage must run with those
        raise ValueError(f"stage '{stage}': DVC reads params.yaml, so a stage can only run with it (got "
                         f"{params!r}); change params.yaml (or use `dvc exp run --set-param`) instead")
    t0 = time.perf_counter()
    changed = dvc_changed(repo, stage)
    if not changed and not force:
        log.info("stage %s: up to date (dvc status), skipped", stage)
        return {"stage": stage, "skipped": True, "seconds": round(time.perf_counter() - t0, 2)}
    log.info("stage %s: out of date: %s", stage, _short(changed.get(stage, changed)))
    argv = stage_argv(repo, stage)
    log.info("stage %s: running gensar.stages.%s.main(%s)", stage, stage, " ".join(argv))
    summary = call_stage_main(repo, stage, argv)
    if summary is None:  # main() printed instead of returning: report the stage's metrics files
        summary = stage_metrics(repo, stage)
    dvc_commit(repo, stage)
    seconds = round(time.perf_counter() - t0, 2)
    log.info("stage %s: done in %.1f s, outputs committed to dvc.lock; summary: %s", stage, seconds,
             _short(summary))
    return {"stage": stage, "skipped": False, "seconds": seconds, "summary": summary}


def stage_metrics(repo: str | Path, stage: str) -> dict:
    """{metrics file: content} of the `metrics:` outputs dvc.yaml declares for `stage`."""
    import json

    out = {}
    for entry in read_pipeline(repo)[stage].get("metrics") or []:
        name = next(iter(entry)) if isinstance(entry, dict) else entry
        path = Path(repo) / name
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def _short(obj, n: int = 600) -> str:
    text = str(obj)
    return text if len(text) <= n else text[:n] + " ..."


def stage_task(stage: str):
    """The Prefect task of one stage: named after it, with its timeout, never cached (it holds models)."""
    return task(run_stage, name=stage, task_run_name=stage, cache_policy=NONE,
                timeout_seconds=TIMEOUTS.get(stage, 6 * 3600))


ingest = stage_task("ingest")
validate = stage_task("validate")
embed = stage_task("embed")
collab = stage_task("collab")
identifiers = stage_task("identifiers")
train = stage_task("train")
evaluate = stage_task("evaluate")
export = stage_task("export")

STAGE_TASKS = {t.name: t for t in (ingest, validate, embed, collab, identifiers, train, export, evaluate)}


def task_for(stage: str):
    """The task of a dvc.yaml stage (a stage added to dvc.yaml later gets a generic task)."""
    return STAGE_TASKS.get(stage) or stage_task(stage)
