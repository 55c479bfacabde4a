"""Atomic file output: write to a temporary sibling, then rename over the target.

A crash or an exception in the middle of a stage therefore never leaves a half-written file
where a good one was: readers see either the old file or the complete new one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd


@contextlib.contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path next to `target`; on success rename it onto `target`.

    Works for files and directories (a directory target is replaced as a whole).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / target.name
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def file_hash(*paths: str | Path, length: int = 16) -> str:
    """Short SHA-256 of the files' bytes, in order: a version string that changes exactly when they do."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:length]


def value_hash(*parts, length: int = 16) -> str:
    """Short SHA-256 of JSON-able values (and bytes): a fingerprint of a configuration."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:length]


def carry_over(old: Path, new: Path, names) -> None:
    """Put `old/<name>` (a file or a folder) into `new/` for each name that exists, by hard links where
    the filesystem allows (instant, no extra space), else by copies: the outputs of a stage that
    swaps its folder as a whole keep what is not theirs to rewrite (a trainer's `checkpoints/`)."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for name in names:
        src = Path(old) / name
        if src.is_dir():
            shutil.copytree(src, Path(new) / name, copy_function=link)
        elif src.is_file():
            link(src, Path(new) / name)


def write_parquet(df: pd.DataFrame, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)


def write_json(obj, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(text: str, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
