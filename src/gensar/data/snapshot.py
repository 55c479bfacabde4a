"""The raw input snapshot in `data/`: what DVC versions (data.dvc) and ingestion reads.

`make_snapshot` fills the snapshot folder from `data.source`: the deterministic synthetic generator
(the offline default) or a copy of a real source folder (shared Amazon format, raw Amazon dumps, a
platform log). `add_batch` appends an incremental batch as `batches/<name>/` (a batch is
identified by its content: one re-sent under another name is not added twice). Both write a complete
new folder beside the old one and swap it in, so a failure never leaves a half-copied snapshot.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from gensar.config import DataConfig
from gensar.io import atomic_path, file_hash

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


class BatchError(ValueError):
    """An incremental batch cannot be added as given (its name is taken by other content, ...)."""


def content_hash(path: str | Path) -> str:
    """SHA-256 of a batch's content: every file's path (relative to the batch) and bytes.

    A batch is identified by what it holds, not by its name: the same files re-sent under another
    name hash the same. A single file counts as a folder holding that file (how it is stored).
    """
    path = Path(path)
    files = [(p.name, p) for p in [path]] if path.is_file() else \
        [(p.relative_to(path).as_posix(), p) for p in sorted(path.rglob("*"))
         if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    h = hashlib.sha256()
    for rel, p in files:
        h.update(f"{rel}\0{file_hash(p, length=64)}\0".encode())
    return h.hexdigest()


def find_batch(batch: str | Path, snapshot: str | Path = "data") -> Path | None:
    """The batch already in `snapshot/batches/` with the same content as `batch`, or None."""
    batches = Path(snapshot) / "batches"
    if not batches.is_dir():
        return None
    digest = content_hash(batch)
    return next((p for p in sorted(batches.iterdir()) if p.is_dir() and content_hash(p) == digest), None)


def add_batch(batch: str | Path, snapshot: str | Path = "data", name: str | None = None) -> Path:
    """Copy an incremental batch (a file or a folder in the snapshot's format) to `batches/<name>/`.

    A batch whose content is already in the snapshot (re-sent, under any name) is a no-op: the
    existing batch folder is returned and nothing is written. A name already used by other
    content is a `BatchError`.
    """
    batch, snapshot = Path(batch), Path(snapshot)
    if not batch.exists():
        raise FileNotFoundError(f"batch {batch} does not exist")
    same = find_batch(batch, snapshot)
    if same is not None:
        log.warning("snapshot: batch %s has the same content as %s, added before: nothing to add", batch, same)
        return same
    name = name or batch.stem
    if not name or name.startswith(".") or "/" in name:
        raise BatchError(f"batch {batch}: {name!r} is not a usable batch name (give --name)")
    target = snapshot / "batches" / name
    if target.exists():
        raise BatchError(f"batch {batch}: the name '{name}' is already used by another batch with different "
                         f"content ({target}); give this batch another name (--name)")
    with atomic_path(target) as tmp:
        if batch.is_dir():
            shutil.copytree(batch, tmp, ignore=shutil.ignore_patterns(".*"))
        else:
            tmp.mkdir()
            shutil.copy2(batch, tmp / batch.name)
    log.info("snapshot: added batch %s as %s", batch, target)
    return target
