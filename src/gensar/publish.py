"""Quality gate and the published version: pure bookkeeping, no Prefect, no DVC, no git.

The candidate model lives in the workspace (`models/onnx` + `metrics/*.json`). The published model lives
in `published/`:

    published/onnx/          a copy of models/onnx (what serving loads)
    published/metrics/       a copy of metrics/*.json at publish time
    published/version.json   the version record: {"version": N, "created": ..., "metrics": {...}, ...}

`gate(candidate, published, cfg)` compares the metrics named in `params.yaml: gate.metrics`: the candidate
passes when, for every metric, `candidate >= published - allowed`, where
`allowed = max(tolerance, z * sqrt(se_candidate^2 + se_published^2))` and `se` is the standard error of
the metric over the test cases (`se/<metric>` in eval.json): a drop that the sample of test cases
alone explains is not a regression (retrains of identical data and params differ by that much). The orchestration (tasks/, flows/)
turns a failed gate into a failed flow run and a report; DVC and git bookkeeping lives in
`tasks/versioning.py`.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gensar.config import GateConfig
from gensar.io import atomic_path, write_json

logger = logging.getLogger(__name__)

VERSION_FILE = "version.json"


class GateError(RuntimeError):
    """The candidate model is worse than the published one by more than the tolerance."""


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def flatten_metrics(obj: dict, prefix: str = "") -> dict[str, float]:
    """{"rec": {"ndcg@10": 0.1}} -> {"rec/ndcg@10": 0.1}; keeps numbers only (bools dropped)."""
    flat: dict[str, float] = {}
    for key, value in obj.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def model_metrics(eval_json: dict, cfg: GateConfig, where: str = "metrics/eval.json") -> dict[str, float]:
    """The flattened metrics of the gated model (`gate.model`, e.g. `gensar`) in an eval.json."""
    if not cfg.model:
        return flatten_metrics(eval_json)
    if cfg.model not in eval_json:
        raise KeyError(f"gate: {where} has no entry '{cfg.model}' (params.yaml gate.model); "
                       f"entries: {sorted(eval_json)}")
    return flatten_metrics(eval_json[cfg.model])


def lookup(metrics: dict[str, float], name: str) -> float | None:
    """Value of `name` in flattened metrics; `rec/ndcg@10` also matches a longer key ending in it
    (e.g. `test/rec/ndcg@10` or `candidates100/rec/ndcg@10`) when exactly one such key exists."""
    if name in metrics:
        return metrics[name]
    hits = [k for k in metrics if k.endswith("/" + name)
            and (name.startswith("se/") or not k.startswith("se/"))]    # a metric, not its standard error
    if len(hits) == 1:
        return metrics[hits[0]]
    if len(hits) > 1:
        raise KeyError(f"gate: metric '{name}' is ambiguous, it matches {sorted(hits)}; "
                       "name it fully in params.yaml gate.metrics")
    return None


# --------------------------------------------------------------------------------------------
# the metrics as a person reads them
# --------------------------------------------------------------------------------------------
TABLE_COLUMNS = {"full": ("recall@5", "ndcg@5", "recall@10", "ndcg@10"),
                 "sampled": ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10")}
PROTOCOL_TITLES = {"full": "full ranking over all items", "sampled": "100 candidates (target + 99 negatives)"}


def metrics_markdown(eval_json: dict, published_eval: dict | None = None, model: str = "gensar",
                     published_version: int | None = None) -> str:
    """eval.json as one model x metric table per task and protocol: the gated model first, then every
    baseline; a row with the change against the published model, and one with the gap to the best
    baseline (the best value of each column in bold)."""
    lines = []
    for task in ("rec", "search"):
        for protocol, cols in TABLE_COLUMNS.items():
            keys = [f"{task}/{protocol}/{c}" for c in cols]
            rows = {name: m for name, m in eval_json.items() if isinstance(m, dict) and keys[0] in m}
            if not rows:
                continue
            order = sorted(rows, key=lambda n: (n != model, n))
            best = {k: max(rows[n][k] for n in rows) for k in keys}
            lines += [f"### {task}, {PROTOCOL_TITLES[protocol]}", "",
                      "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
            for n in order:
                cells = [f"**{rows[n][k]:.4f}**" if rows[n][k] == best[k] else f"{rows[n][k]:.4f}" for k in keys]
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            pub = (published_eval or {}).get(model) or {}
            if model in rows and all(k in pub for k in keys):
                tag = f"v{published_version}" if published_version else "published"
                lines.append(f"| change against {tag} | " + " | ".join(
                    f"{rows[model][k] - pub[k]:+.4f}" for k in keys) + " |")
            baselines = [n for n in rows if n != model]
            if model in rows and baselines:
                lines.append("| gap to the best baseline | " + " | ".join(
                    f"{rows[model][k] - max(rows[n][k] for n in baselines):+.4f}" for k in keys) + " |")
            lines.append("")
    return "\n".join(lines)


def training_markdown(history: list[dict]) -> str:
    """The training curve as a table: one row per validation (training minutes, step, loss, validation
    NDCG@10 of rec and search), the best row marked."""
    def num(row, key, fmt):
        return format(row[key], fmt) if isinstance(row.get(key), (int, float)) else "-"
    best = max(range(len(history)), key=lambda i: history[i].get("valid/ndcg@10", -1.0)) if history else -1
    lines = ["# Training curve", "", "| validation | train min | step | loss | rec NDCG@10 | search NDCG@10 | best |",
             "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(history):
        lines.append(f"| {i} | {num(r, 'train_minutes', '.1f')} | {r.get('step', '-')} | {num(r, 'train/loss', '.4f')} | "
                     f"{num(r, 'valid/rec/ndcg@10', '.4f')} | {num(r, 'valid/search/ndcg@10', '.4f')} | "
                     f"{'**best**' if i == best else ''} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the gate
# --------------------------------------------------------------------------------------------
@dataclass
class GateRow:
    metric: str
    candidate: float
    published: float | None     # None: nothing published yet
    delta: float | None         # candidate - published
    ok: bool
    allowed: float | None = None  # the drop allowed: max(tolerance, z * standard error of the difference)


@dataclass
class GateResult:
    passed: bool
    tolerance: float
    published_version: int | None
    rows: list[GateRow] = field(default_factory=list)

    @property
    def failures(self) -> list[GateRow]:
        return [r for r in self.rows if not r.ok]

    def summary(self) -> str:
        """One line a user reads in the flow's final state."""
        if self.published_version is None:
            return "quality gate passed: nothing published yet, the candidate becomes the first version"
        if self.passed:
            return (f"quality gate passed against published v{self.published_version} "
                    f"(tolerance {self.tolerance:g})")
        worse = "; ".join(f"{r.metric} {r.candidate:.4f} < published {r.published:.4f} - allowed {r.allowed:.4f}"
                          for r in self.failures)
        return (f"quality gate FAILED against published v{self.published_version}: {worse}. "
                f"The published model v{self.published_version} stays.")

    def markdown(self) -> str:
        """The report the flow attaches as a Prefect markdown artifact."""
        lines = [f"# Quality gate: {'PASSED' if self.passed else 'FAILED'}", "", self.summary(), "",
                 "| metric | published | candidate | delta | allowed drop | ok |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for r in self.rows:
            pub = "-" if r.published is None else f"{r.published:.4f}"
            delta = "-" if r.delta is None else f"{r.delta:+.4f}"
            allowed = "-" if r.allowed is None else f"{r.allowed:.4f}"
            lines.append(f"| {r.metric} | {pub} | {r.candidate:.4f} | {delta} | {allowed} | {'yes' if r.ok else 'NO'} |")
        lines += ["", (f"Rule: publish when every metric >= published - max(tolerance {self.tolerance:g}, "
                       "z x standard error of the difference).")]
        return "\n".join(lines) + "\n"


def gate(candidate: dict[str, float], published: dict[str, float] | None, cfg: GateConfig,
         published_version: int | None = None) -> GateResult:
    """Compare the candidate's flattened metrics with the published ones, metric by metric."""
    if not cfg.metrics:
        raise ValueError("params.yaml gate.metrics is empty: name at least one metric to compare")
    rows = []
    for name in cfg.metrics:
        cand = lookup(candidate, name)
        if cand is None or math.isnan(cand):
            raise KeyError(f"gate: metric '{name}' (params.yaml gate.metrics) is missing from the candidate's "
                           f"metrics; available: {sorted(candidate)[:20]}")
        pub = lookup(published, name) if published is not None else None
        if pub is None:
            rows.append(GateRow(name, cand, None, None, True))
            continue
        delta = cand - pub
        se_c, se_p = lookup(candidate, "se/" + name), lookup(published, "se/" + name)
        allowed = cfg.tolerance
        if cfg.z > 0 and se_c is not None and se_p is not None:   # the noise of the test sample
            allowed = max(allowed, cfg.z * math.hypot(se_c, se_p))
        rows.append(GateRow(name, cand, pub, delta, cand >= pub - allowed, allowed))
    if published is None:
        published_version = None
    return GateResult(all(r.ok for r in rows), cfg.tolerance, published_version, rows)


# --------------------------------------------------------------------------------------------
# the published version
# --------------------------------------------------------------------------------------------
def read_version(published: str | Path = "published") -> dict | None:
    """The version record of `published/`, or None when nothing was published yet."""
    path = Path(published) / VERSION_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


ARTIFACT = "gensar-onnx"     # the model registry's artifact: the `artifacts:` entry of dvc.yaml (models/onnx)


def version_name(version: int) -> str:
    """The registry's (GTO's) name of published version N: `v<N>.0.0` (its versions are semantic)."""
    return f"v{version}.0.0"


def version_number(name: str) -> int:
    """N of a registry version name `v<N>.0.0`."""
    return int(name.lstrip("v").split(".")[0])


def version_tag(version: int) -> str:
    """The registry tag of published version N: `gensar-onnx@v<N>.0.0`."""
    return f"{ARTIFACT}@{version_name(version)}"


def write_published(version: int, onnx: str | Path = "models/onnx", metrics: str | Path = "metrics",
                    out: str | Path = "published", gate_result: GateResult | None = None,
                    extra: dict | None = None) -> dict:
    """Replace `out` as a whole by a copy of the candidate model, its metrics and a version record."""
    onnx, metrics, out = Path(onnx), Path(metrics), Path(out)
    if not onnx.is_dir() or not any(onnx.iterdir()):
        raise FileNotFoundError(f"publish: {onnx} is missing or empty (run the export stage first)")
    all_metrics = {}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        shutil.copytree(onnx, tmp / "onnx")
        (tmp / "metrics").mkdir()
        for f in sorted(metrics.glob("*.json")):
            shutil.copy2(f, tmp / "metrics" / f.name)
            all_metrics[f.stem] = json.loads(f.read_text())
        record = {
            "version": version,
            "tag": version_tag(version),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "gate": asdict(gate_result) if gate_result is not None else None,
            "metrics": all_metrics,
            **(extra or {}),
        }
        write_json(record, tmp / VERSION_FILE)
    logger.info("publish: wrote %s (version %d)", out, version)
    return record
