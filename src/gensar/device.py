"""Where torch work runs: one rule for every stage."""
from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; any other name is returned as given."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def set_cpu_threads(device: str | torch.device, threads: int) -> None:
    """Use `threads` torch threads when working on the CPU (0 keeps torch's default)."""
    if str(device).startswith("cpu") and threads > 0:
        torch.set_num_threads(threads)
