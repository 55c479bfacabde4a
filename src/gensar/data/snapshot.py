"""The raw input snapshot in `data/`: what DVC versions (data.dvc) and ingestion reads.

`make_snapshot` fills the snapshot folder from `data.source`: the deterministic synthetic generator
(the offline default) or a copy of a real source folder (shared Amazon format, raw Amazon dumps, a
platform log). `add_batch` appends an incremental batch as `batches/<name>/`. Both write a complete
new folder beside the old one and swap it in, so a failure never leaves a half-copied snapshot.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from gensar.config import DataConfig
from gensar.io import atomic_path

log = logging.getLogger(__name__)


def make_snapshot(cfg: DataConfig, out: str | Path = "data", keep_batches: bool = True) -> Path:
    """Write the raw snapshot for `cfg.source` into `out` (replacing it as a whole).

    Incremental batches already appended to `out/batches/` are carried over unless `keep_batches`
    is false, so refreshing the base source never drops data that arrived since.
    """
    out = Path(out)
    old_batches = out / "batches"
    with atomic_path(out) as tmp:
        if cfg.source == "synthetic":
            from gensar.data.synthetic import generate

            log.info("snapshot: generating the SYNTHETIC dataset into %s", out)
            generate(tmp, cfg.synthetic)
        else:
            src = Path(cfg.source)
            if not src.exists():
                raise FileNotFoundError(
                    f"data.source: {src} does not exist (give `synthetic`, a ../shared/data/<name> "
                    "folder, a folder of raw Amazon dumps or a platform log folder)")
            log.info("snapshot: copying %s into %s", src, out)
            if src.is_dir():
                shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".*"))
            else:
                tmp.mkdir()
                shutil.copy2(src, tmp / src.name)
        if keep_batches and old_batches.is_dir():
            shutil.rmtree(tmp / "batches", ignore_errors=True)
            shutil.copytree(old_batches, tmp / "batches")
            log.info("snapshot: kept %d incremental batches", len(list(old_batches.iterdir())))
    return out


def add_batch(batch: str | Path, snapshot: str | Path = "data", name: str | None = None) -> Path:
    """Copy an incremental batch (a file or a folder in the snapshot's format) to `batches/<name>/`."""
    batch, snapshot = Path(batch), Path(snapshot)
    if not batch.exists():
        raise FileNotFoundError(f"batch {batch} does not exist")
    name = name or batch.stem
    target = snapshot / "batches" / name
    if target.exists():
        raise FileExistsError(f"{target} exists: batch '{name}' was already added (give another name)")
    with atomic_path(target) as tmp:
        if batch.is_dir():
            shutil.copytree(batch, tmp, ignore=shutil.ignore_patterns(".*"))
        else:
            tmp.mkdir()
            shutil.copy2(batch, tmp / batch.name)
    log.info("snapshot: added batch %s as %s", batch, target)
    return target
