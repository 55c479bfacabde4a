"""Logging for the stage and CLI entry points: our own INFO lines, third-party chatter only from WARNING."""
from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
NOISY = ("great_expectations", "httpx", "httpcore", "urllib3", "filelock", "fsspec", "asyncio",
         "sentence_transformers", "transformers", "torch.distributed")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=FORMAT)
    for name in NOISY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def progress(iterable=None, *, disable: bool = False, **kwargs):
    """A tqdm bar on a terminal; nothing when stderr is not one (Prefect logs, CI, a log file), where a
    bar redrawn every few seconds is noise: the stages log what they did in INFO lines instead."""
    return tqdm(iterable, disable=disable or not sys.stderr.isatty(), **kwargs)
