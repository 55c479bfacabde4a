"""Quality gate, publish and the monitoring artifacts of a flow run.

gate      compare metrics/eval.json with published/version.json (gensar.publish.gate); a failed gate
          attaches its report as a markdown artifact and raises, so the flow run ends Failed and
          published/ stays as it was.
publish   copy the candidate into published/, `dvc add published`, `dvc push`, git commit + tag.
report    table artifacts: metrics, identifier report, data statistics, stage timings.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from gensar.config import load_params
from gensar.publish import (
    GateError,
    flatten_metrics,
    gate,
    metrics_markdown,
    model_metrics,
    read_version,
    training_markdown,
    write_published,
)
from tasks import notify, run_logger
from tasks.versioning import (
    ARTIFACT,
    STAGE,
    dvc_add,
    dvc_push,
    git_push,
    git_version,
    next_version,
    version_tag,
)


@task(name="quality-gate", cache_policy=NONE)
def quality_gate(repo: str, params: str = "params.yaml") -> dict:
    """Pass when every gate metric of the candidate >= published - tolerance; else raise GateError."""
    log = run_logger(__name__)
    repo = Path(repo)
    cfg = load_params(repo / params).gate
    eval_path = repo / "metrics" / "eval.json"
    if not eval_path.exists():
        raise FileNotFoundError(f"gate: {eval_path} not found (the evaluate stage writes it)")
    candidate = model_metrics(json.loads(eval_path.read_text()), cfg, str(eval_path))
    record = read_version(repo / "published")
    published = model_metrics(record["metrics"].get("eval", {}), cfg, "published/version.json") if record else None
    result = gate(candidate, published, cfg, record["version"] if record else None)
    create_markdown_artifact(result.markdown(), key="quality-gate", description=result.summary())
    if not result.passed:
        log.error("%s", result.summary())
        notify("gensar.gate.failed", repo, {"summary": result.summary(), "published_version": result.published_version,
                                            "failures": [r.metric for r in result.failures]})
        raise GateError(result.summary())
    log.info("%s", result.summary())
    return {"passed": True, "summary": result.summary(), "result": result}


@task(name="write-published", cache_policy=NONE, timeout_seconds=3600)
def write_published_task(repo: str, version: int, gate_result: dict, extra: dict) -> dict:
    repo = Path(repo)
    return write_published(version, repo / "models" / "onnx", repo / "metrics", repo / "published",
                           gate_result.get("result"), extra=extra)


def publish(repo: str, gate_result: dict, flow: str, run_name: str, note: str = "") -> dict:
    """Make the candidate the published version: copy, dvc add + push, git commit + registry tags
    (`gensar-onnx@v<N>.0.0`, assigned to `prod`).

    A plain function calling tasks, so each step (and its retries) shows in the flow run.
    """
    log = run_logger(__name__)
    repo = Path(repo)
    version = next_version(repo)
    extra = {"flow": flow, "flow_run": run_name, "parent_commit": _head(repo), "note": note}
    data_md5 = dvc_add(str(repo), "data") if (repo / "data").exists() else None
    write_published_task(str(repo), version, gate_result, {**extra, "data_md5": data_md5})
    published_md5 = dvc_add(str(repo), "published")
    pushed = dvc_push(str(repo))
    rows = gate_result["result"].rows if gate_result.get("result") is not None else []
    headline = ", ".join(f"{r.metric}={r.candidate:.4f}" + (f" (was {r.published:.4f})" if r.published is not None
                                                          else "") for r in rows) or "no gate metrics"
    tag = version_tag(version)
    message = (f"{tag}: {flow} run {run_name}\n\n{gate_result.get('summary', '')}\n"
               f"{headline}\ndata md5 {data_md5}, published md5 {published_md5}\n{note}").strip()
    commit = git_version(str(repo), version, message)
    git_push(str(repo))          # from the deployments' checkout back to the repository (else nothing)
    out = {"version": version, "tag": tag, "stage": STAGE, "commit": commit, "pushed": pushed,
           "published_md5": published_md5, "data_md5": data_md5}
    create_markdown_artifact(
        f"# Published {tag} ({STAGE})\n\n- commit `{commit}`\n- tags `{tag}`, `{ARTIFACT}#{STAGE}#...` (GTO)\n"
        f"- data md5 `{data_md5}`\n- published md5 `{published_md5}`\n"
        f"- files pushed to the DVC remote: {pushed}\n"
        f"- restore: `git checkout {tag} && dvc checkout` (or `dvc pull`); the export alone: "
        f"`dvc artifacts get <repo> {ARTIFACT} --stage {STAGE}`\n\n{gate_result.get('summary', '')}\n",
        key="version", description=tag)
    log.info("publish: %s published and assigned to %s (commit %s)", tag, STAGE, commit[:10])
    return out


@task(name="report", cache_policy=NONE)
def report(repo: str, stage_runs: list[dict]) -> None:
    """Monitoring artifacts: stage timings, metrics table, identifier report, data statistics."""
    repo = Path(repo)
    create_table_artifact(
        [{"stage": s["stage"], "status": "skipped (up to date)" if s["skipped"] else "ran",
          "seconds": s["seconds"]} for s in stage_runs], key="stages", description="stages of this run")
    eval_path = repo / "metrics" / "eval.json"
    if eval_path.exists():
        record = read_version(repo / "published") or {}
        create_markdown_artifact(
            "# Evaluation: GenSAR and the baselines\n\n" + metrics_markdown(
                json.loads(eval_path.read_text()), (record.get("metrics") or {}).get("eval"),
                published_version=record.get("version")),
            key="metrics", description="model x metric tables per task and protocol (metrics/eval.json)")
    docs = repo / "reports" / "validation-docs" / "index.html"
    if docs.exists():
        create_link_artifact(f"file://{docs}", link_text="Great Expectations data docs of the last validation",
                             key="data-docs", description="reports/validation-docs/ (one page per suite)")
    history = repo / "models" / "t5" / "history.json"
    if history.exists():
        create_markdown_artifact(training_markdown(json.loads(history.read_text())), key="training-curve",
                                 description="the training curve: one row per validation (models/t5/history.json)")
    for name, key, desc in [("ids", "identifier-report", "identifier report (metrics/ids.json)"),
                            ("data", "data-statistics", "dataset statistics (metrics/data.json)"),
                            ("train", "training", "training metrics (metrics/train.json)")]:
        path = repo / "metrics" / f"{name}.json"
        if not path.exists():
            continue
        flat = flatten_metrics(json.loads(path.read_text()))
        if flat:
            create_table_artifact([{"metric": k, "value": round(v, 6)} for k, v in flat.items()],
                                  key=key, description=desc)


def _head(repo: Path) -> str | None:
    from tasks.versioning import git

    try:
        return git(repo, "rev-parse", "HEAD")
    except RuntimeError:
        return None
