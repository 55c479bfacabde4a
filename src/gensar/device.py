"""Where torch work runs: one rule for every stage."""
from __future__ import annotations

import os

import torch


def resolve_device(name: str = "auto") -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; any other name is returned as given."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup_torch(device: str | torch.device, threads: int) -> None:
    """One rule for every torch stage: `threads` torch threads on the CPU (0 keeps torch's default, the
    machine's cores) and deterministic algorithms, so that the same data, params, machine and thread
    count give the same numbers (with the seeds each stage sets)."""
    if str(device).startswith("cpu") and threads > 0:
        torch.set_num_threads(threads)
    if str(device).startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(True, warn_only=True)        # warn, not fail, where none exists
