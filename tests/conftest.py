"""Shared fixtures: tiny input folders written by the tests themselves (no real data needed)."""
from __future__ import annotations

import dataclasses
import gzip
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

# Prefect's events fixtures: capture emitted events without a server (tasks.notify)
from prefect.testing.fixtures import asserting_events_worker, mock_should_emit_events  # noqa: F401

from gensar.config import ModelConfig, Params, SyntheticConfig, TrainConfig, to_dict
from gensar.model.prompts import IdentifierMap


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> dict:
    """A tiny canonical dataset with its identifier map and a 300-piece tokenizer (read-only: shared by
    the model tests). Keys: the dataset paths (canonical, ids, ...), ids_dir, items, inter, queries,
    ids (IdentifierMap), tok."""
    from gensar.model.tokenizer import train_tokenizer
    from tests.test_model_data import make_tiny_dataset

    paths = make_tiny_dataset(tmp_path_factory.mktemp("tiny_corpus"))
    c = paths["canonical"]
    items, inter, queries = (pd.read_parquet(c / f"{n}.parquet") for n in ("items", "interactions", "queries"))
    ids = IdentifierMap.load(paths["ids"])
    tok = train_tokenizer(items["text"].tolist() + queries["text"].tolist(), ids.tokens(), vocab_size=300)
    return {**paths, "ids_dir": paths["ids"], "items": items, "inter": inter, "queries": queries, "ids": ids,
            "tok": tok}


@pytest.fixture(scope="session")
def teacher_path(tiny_corpus, tmp_path_factory):
    """A SASRec-CE checkpoint over the tiny items (random weights: a real model, any distribution)."""
    from gensar.ids.sasrec import SASRec, SASRecConfig, save_sasrec

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=len(tiny_corpus["ids"]), hidden=16, inner=32, max_len=8)).eval()
    with torch.no_grad():                  # spread its scores so that the distribution is far from uniform
        model.item_emb.weight.mul_(40)
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    save_sasrec(model, path, list(reversed(tiny_corpus["ids"].item_ids)))    # another item order than ours
    return path


@pytest.fixture
def params() -> Params:
    """Default params with a tiny synthetic dataset (fast everywhere)."""
    p = Params()
    syn = SyntheticConfig(n_users=40, n_items=30, n_topics=4, events_per_user=(4, 8), seed=0)
    return dataclasses.replace(p, data=dataclasses.replace(p.data, synthetic=syn))


def write_log(folder, interactions: list[tuple], items: list[dict], fmt: str = "csv"):
    """A platform log: interactions (user, item, timestamp, behavior, query) + items."""
    folder.mkdir(parents=True, exist_ok=True)
    inter = pd.DataFrame(interactions, columns=["user", "item", "timestamp", "behavior", "query"])
    meta = pd.DataFrame(items)
    if fmt == "csv":
        inter.to_csv(folder / "interactions.csv", index=False)
        meta.to_csv(folder / "items.csv", index=False)
    else:
        inter.to_parquet(folder / "interactions.parquet", index=False)
        meta.to_parquet(folder / "items.parquet", index=False)
    return folder


def small_log(n_users: int = 6, n_items: int = 5, events: int = 5) -> tuple[list[tuple], list[dict]]:
    """A clean log: every user clicks `events` items, alternating rec and search."""
    items = [{"item_id": f"i{i}", "title": f"Item {i} &amp; co", "description": "<b>nice</b> thing",
              "brand": "B", "categories": "Home > Kitchen > Mugs"} for i in range(n_items)]
    inter = [(f"u{u}", f"i{(u + k) % n_items}", 1_600_000_000 + 100 * k,
              "search" if k % 2 else "rec", "kitchen mugs" if k % 2 else "")
             for u in range(n_users) for k in range(events)]
    return inter, items


def write_shared(folder, name: str, inter: dict, items: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter.json").write_text(json.dumps(inter))
    (folder / f"{name}.item.json").write_text(json.dumps(items))
    return folder


def write_lines(path, lines: list[str]):
    """JSON-lines (or dict-literal lines), gzipped when the name ends with .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data)
    return path


# one valid Amazon 2014 metadata line (a Python dict literal, as in the real dumps)
AMAZON_META_OK = [str({"asin": "x", "title": "X", "categories": [["Toys", "Games"]]})]


# --------------------------------------------------------------------------------------------
# a tiny random GenSAR (export, serving and CLI tests)
# --------------------------------------------------------------------------------------------
WORDS = ["desk", "lamp", "paper", "pen", "stapler", "ink", "toner", "chair", "folder", "binder", "label", "tape", "marker", "notebook", "envelope", "calculator", "clip", "eraser", "ruler", "scissors"]


def _identifiers(rng: np.random.Generator, n: int, codebook: int) -> list[list[int]]:
    """2 shared + 2 specific codes and a disambiguation code that makes every identifier unique."""
    codes = rng.integers(0, codebook, size=(n, 4)).tolist()
    seen: dict[tuple, int] = {}
    out = []
    for c in codes:
        d = seen.get(tuple(c), 0)
        seen[tuple(c)] = d + 1
        out.append(c + [d])
    return out


def tiny_world(root, n_items: int = 120, codebook: int = 6, seed: int = 0) -> dict:
    """models/t5, models/ids and prepared/canonical/items.parquet of a random tiny GenSAR under `root`."""
    from gensar.model.t5 import build_model, save_model
    from gensar.model.tokenizer import train_tokenizer

    rng = np.random.default_rng(seed)
    item_ids = [f"it{i:03d}" for i in range(n_items)]
    titles = [" ".join(rng.choice(WORDS, size=3)) + f" model {i}" for i in range(n_items)]
    sid = _identifiers(rng, n_items, codebook)
    cid = [s[:2] + c for s, c in zip(sid, (x[:2] for x in _identifiers(rng, n_items, codebook)))]
    cid = [c + [0] for c in cid]
    seen: dict[tuple, int] = {}
    for c in cid:                         # disambiguate the CIDs too
        c[4] = seen.get(tuple(c[:4]), 0)
        seen[tuple(c[:4])] = c[4] + 1
    ids_dir, model_dir, canonical = root / "models" / "ids", root / "models" / "t5", root / "prepared" / "canonical"
    for d in (ids_dir, model_dir, canonical):
        d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"item_id": item_ids, "sid": sid, "cid": cid}).to_parquet(ids_dir / "identifiers.parquet")
    meta = {"sid_kinds": ["h", "h", "s", "s", "d"], "cid_kinds": ["h", "h", "c", "c", "d"],
            "codebook_size": codebook, "disambiguation_size": 4, "mode": "gensar"}
    (ids_dir / "meta.json").write_text(json.dumps(meta))
    items = pd.DataFrame({"item_id": item_ids, "title": titles})
    items.to_parquet(canonical / "items.parquet")

    ids = IdentifierMap.load(ids_dir)
    tok = train_tokenizer(titles + WORDS, ids.tokens(), vocab_size=200)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(size="tiny", dropout=0.0), len(tok), tok.pad_token_id, tok.eos_token_id)
    save_model(model, tok, model_dir, {"train": to_dict(TrainConfig()), "data_version": "tiny-test"})
    return {"root": root, "model": model.eval(), "tokenizer": tok, "ids": ids, "items": items,
            "model_dir": model_dir, "ids_dir": ids_dir, "canonical": canonical}


def random_events(rng: random.Random, item_ids, n: int) -> list[tuple]:
    """A history of `n` events, mixing recommendation clicks and search sessions."""
    out = []
    for _ in range(n):
        item = rng.choice(item_ids)
        if rng.random() < 0.5:
            out.append(("rec", item, None))
        else:
            out.append(("search", item, " ".join(rng.sample(WORDS, 2))))
    return out


def exported_world(root, n_items: int) -> dict:
    """`tiny_world` exported by the real export stage into `<root>/models/onnx` (world["out"])."""
    from gensar.stages.export import run

    torch.set_num_threads(2)
    world = tiny_world(root, n_items=n_items)
    out = world["root"] / "models" / "onnx"
    run(Params(), model=world["model_dir"], ids=world["ids_dir"], canonical=world["canonical"], out=out)
    world["out"] = out
    return world
