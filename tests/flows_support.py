"""Helpers of the orchestration tests and benchmark: tiny real datasets and throw-away repo copies.

Tests never commit into the real checkout: `make_repo` copies the pipeline definition (dvc.yaml,
params.yaml, src/ for the dependency hashes) into a fresh git + DVC repository with its own local
remote, next to the test's temporary files.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OFFICE = Path(os.environ.get("GENSAR_OFFICE", ROOT.parent / "shared" / "data" / "office"))

# Small but real: every stage runs in seconds on 2 CPU cores.
TINY = {
    "collab": {"hidden": 16, "layers": 1, "max_len": 10, "epochs": 2, "patience": 1, "batch_size": 64,
               "device": "cpu", "cpu_threads": 1},
    "ids": {"codebook_size": 16, "shared_dim": 16, "specific_dim": 8, "hidden": [32], "epochs": 5,
            "batch_size": 256, "sinkhorn_iters": 10, "device": "cpu", "cpu_threads": 1},
    "embed": {"device": "cpu", "cpu_threads": 1},
    "model": {"size": "custom", "d_model": 32, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1,
              "num_heads": 2, "d_kv": 16, "vocab_size": 500},
    "train": {"epochs": 1, "batch_size": 64, "eval_users": 10, "eval_beams": 4, "device": "cpu", "cpu_threads": 1,
              "precision": "fp32", "history_len": 3, "max_input_tokens": 64,
              "tasks": {"rec": 0.5, "search": 0.5, "query": 0.1, "adhoc": 0.1, "align": 0.1}},
    "evaluate": {"n_candidates": 20, "beams": 4, "max_users": 20},
}


def shared_subset(src: Path, out: Path, n_users: int, seed: int = 0, name: str | None = None) -> Path:
    """The first `n_users` users (in file order) of a shared-format dataset, with their items."""
    name = name or src.name
    inter = json.loads((src / f"{src.name}.inter.json").read_text())
    items = json.loads((src / f"{src.name}.item.json").read_text())
    users = list(inter)[:n_users]
    sub = {u: inter[u] for u in users}
    used = {str(i) for seq in sub.values() for i in seq}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.inter.json").write_text(json.dumps(sub))
    (out / f"{name}.item.json").write_text(json.dumps({i: items[i] for i in items if i in used}))
    return out


def synthetic_shared(out: Path, n_users: int, seed: int = 0) -> Path:
    """A dataset in the shared format of `../shared/data` (`<name>.inter.json`: each user's items
    oldest first; `<name>.item.json`: title, description, brand, categories), made by the synthetic
    generator: what the orchestration tests run on where the real office data is absent."""
    import numpy as np

    from gensar.config import SyntheticConfig
    from gensar.data.synthetic import make_interactions, make_items

    cfg = SyntheticConfig(n_users=n_users, n_items=n_users, n_topics=4, seed=seed)   # ~37 items of 40 users after 5-core
    rng = np.random.default_rng(seed)
    items = make_items(cfg, rng)
    inter = make_interactions(items, cfg, rng).sort_values(["user", "timestamp"], kind="stable")
    number = {item: str(i) for i, item in enumerate(items["item_id"])}       # office-like ids "0", "1", ...
    seqs = {u: [int(number[i]) for i in g["item"]] for u, g in inter.groupby("user", sort=False)}
    meta = {number[r.item_id]: {"title": r.title, "description": r.description, "brand": r.brand,
                                "categories": [r.categories.split(" > ")]} for r in items.itertuples()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{out.name}.inter.json").write_text(json.dumps(seqs))
    (out / f"{out.name}.item.json").write_text(json.dumps(meta))
    return out


def source_subset(out: Path, n_users: int) -> Path:
    """`n_users` users of the real office data when `../shared/data/office` is there (or
    GENSAR_OFFICE names it), else a synthetic dataset of that many users in the same format."""
    return shared_subset(OFFICE, out, n_users) if OFFICE.exists() else synthetic_shared(out, n_users)


def split_batch(src: Path, base: Path, batch: Path, frac: float = 0.05, seed: int = 0) -> tuple[Path, Path]:
    """Split a shared-format dataset by users: `1 - frac` of them form the base snapshot, the rest a
    new batch (their interactions, and the items nobody in the base has seen; where there are none,
    the batch's three rarest items are taken out of the base, as products new this week)."""
    name = src.name if (src / f"{src.name}.inter.json").exists() else \
        next(src.glob("*.inter.json")).name[: -len(".inter.json")]
    inter = json.loads((src / f"{name}.inter.json").read_text())
    items = json.loads((src / f"{name}.item.json").read_text())
    users = list(inter)
    rng = random.Random(seed)
    new = set(rng.sample(users, max(1, round(frac * len(users)))))
    base_inter = {u: s for u, s in inter.items() if u not in new}
    batch_inter = {u: s for u, s in inter.items() if u in new}
    base_items = {str(i) for s in base_inter.values() for i in s}
    batch_items = {str(i) for s in batch_inter.values() for i in s} - base_items
    if not batch_items:          # (small synthetic data: every item is popular) products new this week:
        clicks = Counter(str(i) for s in inter.values() for i in s)         # the batch's 3 rarest items,
        fresh = set(sorted({str(i) for s in batch_inter.values() for i in s}, key=lambda i: (clicks[i], i))[:3])
        base_inter = {u: [i for i in s if str(i) not in fresh] for u, s in base_inter.items()}  # unseen before
        base_items -= fresh
        batch_items = fresh
    for folder, part, keep in [(base, base_inter, base_items), (batch, batch_inter, batch_items)]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.inter.json").write_text(json.dumps(part))
        (folder / f"{name}.item.json").write_text(json.dumps({i: items[i] for i in items if i in keep}))
    return base, batch


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        d[k] = deep_update(dict(d.get(k) or {}), v) if isinstance(v, dict) else v
    return d


def make_repo(root: Path, source: Path | str, overrides: dict | None = None,
              stages: list[str] | None = None, project: bool = False) -> Path:
    """A fresh git + DVC copy of the pipeline in `root/repo` with its remote in `root/remote`.

    `source` becomes data.source; `overrides` are merged into params.yaml; `stages` keeps only those
    dvc.yaml stages (default: all); `project` also copies flows/, tasks/ and prefect.yaml (to deploy).
    """
    repo = root / "repo"
    repo.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", repo / "src", ignore=ignore)
    if project:
        for name in ("flows", "tasks"):
            shutil.copytree(ROOT / name, repo / name, ignore=ignore)
        shutil.copy2(ROOT / "prefect.yaml", repo / "prefect.yaml")
    for name in (".gitignore", ".dvcignore"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, repo / name)
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    if stages is not None:
        pipeline["stages"] = {k: v for k, v in pipeline["stages"].items() if k in stages}
        pipeline.pop("artifacts", None)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = deep_update(deep_update(params, overrides or {}), {"data": {"source": str(source)}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "metrics").mkdir()
    (repo / "metrics" / ".gitkeep").write_text("")
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "test@localhost"], repo)
    run(["git", "config", "user.name", "gensar-test"], repo)
    dvc = str(Path(ROOT / ".venv" / "bin" / "dvc"))
    run([dvc, "init", "-q"], repo)
    run([dvc, "config", "core.analytics", "false"], repo)
    run([dvc, "config", "core.check_update", "false"], repo)
    run([dvc, "remote", "add", "-d", "local", str(root / "remote")], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "pipeline"], repo)
    return repo


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}: {proc.stderr or proc.stdout}")
    return proc.stdout


def tree_hashes(folder: Path) -> dict[str, str]:
    """relative path -> md5 of every file under `folder` (what a restore must reproduce)."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# one Prefect test server and one trained tiny repository per test session, shared by modules
# --------------------------------------------------------------------------------------------
_SESSION: dict = {}


def prefect_session(request):
    """Enter `prefect_test_harness` once per pytest session (14-21 s), leave it at session end."""
    if "harness" not in _SESSION:
        from prefect.testing.utilities import prefect_test_harness

        cm = prefect_test_harness(server_startup_timeout=120)
        cm.__enter__()
        _SESSION["harness"] = cm
        request.session.config.add_cleanup(lambda: cm.__exit__(None, None, None))
    return _SESSION["harness"]


# tiny models are noisy: a loose gate in the tests (the failed-gate test sets its own)
TEST_PARAMS = {**TINY, "data": {"text_max_chars": 96},
               "evaluate": {**TINY["evaluate"], "baselines": ["popularity"]},
               "gate": {"tolerance": 1.0}}


def trained_repo(tmp_path_factory, n_users: int = 60) -> dict:
    """A tiny repo (office users, or synthetic ones without ../shared) after one full `retrain`
    (published gensar-onnx@v1.0.0), built once per session.

    Returns {"repo", "root", "v1": {path: hashes}, "out": the flow's result}.
    """
    if "trained" not in _SESSION:
        from flows.retrain import retrain

        root = tmp_path_factory.mktemp("trained")
        full = source_subset(root / "office_full" / "office", n_users)
        base, batch = split_batch(full, root / "office_base" / "office", root / "batch" / "week1", frac=0.1)
        repo = make_repo(root, base, TEST_PARAMS)
        out = retrain(repo=str(repo))
        _SESSION["trained"] = {"repo": repo, "root": root, "batch": batch, "out": out,
                               "v1": snapshot_hashes(repo)}
    return _SESSION["trained"]


def snapshot_hashes(repo: Path) -> dict[str, dict[str, str]]:
    """File hashes of what a version must restore: raw data, canonical data, identifiers, model, export."""
    parts = ["data", "prepared/canonical", "models/ids", "models/onnx", "published"]
    return {p: tree_hashes(repo / p) for p in parts if (repo / p).exists()}


def incremental_done(trained: dict) -> dict:
    """Run the incremental flow with the session's 10% batch once (gensar-onnx@v2.0.0); its result."""
    if "incremental" not in _SESSION:
        from flows.incremental import incremental

        out = incremental(batch=str(trained["batch"]), repo=str(trained["repo"]))
        _SESSION["incremental"] = out
        trained["v2"] = snapshot_hashes(trained["repo"])
    return _SESSION["incremental"]
