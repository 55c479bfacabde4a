"""The evaluation driver: every model goes through the same cases, candidates and metric code.

A model is any object with a `name` and one or both of

    rank_rec(histories, k, candidates=None) -> list[list[item_id]]
    rank_search(queries, histories, k, candidates=None) -> list[list[item_id]]

histories: per case the events before the target, oldest first, as (behavior, item_id, query,
step) tuples (gensar.eval.candidates; `history_items` reduces them to item ids); queries: list of
query texts; candidates: None for full ranking over all items, else one candidate list per case
(the sampled protocol). The return is
the model's top-k item ids per case, best first. A model without `rank_search` is simply not
evaluated on search (and the other way round).

`ScoreRanker` turns a model that scores every item (popularity, BM25, dense retrieval, SASRec)
into that interface: it ranks all items (full) or gathers the candidates' scores (sampled).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gensar.eval.candidates import history_items, read_candidates
from gensar.eval.metrics import MAX_K, metrics_from_ranks, standard_errors, target_ranks, topk_from_scores
from gensar.logs import progress

logger = logging.getLogger(__name__)

TASKS = ("rec", "search")
PROTOCOLS = ("sampled", "full")


@dataclass
class EvalData:
    """Everything the driver needs: the catalogue, query texts and the cases with candidates."""
    item_ids: list[str]
    item_texts: list[str]
    query_texts: dict[str, str]
    cases: pd.DataFrame          # candidates.CASE_COLUMNS + `candidates`, one split

    def task_cases(self, task: str) -> pd.DataFrame:
        return self.cases[self.cases["behavior"] == task].reset_index(drop=True)

    def case_queries(self, cases: pd.DataFrame) -> list[str]:
        """The query text of each case ('' for rec cases, which have none)."""
        return [self.query_texts.get(q, "") if isinstance(q, str) else "" for q in cases["query_id"]]


def load_eval_data(canonical: str, candidates_path: str, split: str = "test",
                   max_users: int = 0, seed: int = 0) -> EvalData:
    """Read the canonical tables and the saved candidates; optionally subsample users (seeded)."""
    from pathlib import Path

    canonical = Path(canonical)
    items = pd.read_parquet(canonical / "items.parquet")
    queries = pd.read_parquet(canonical / "queries.parquet")
    path = Path(candidates_path)
    if path.is_dir():
        path = path / "candidates.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: candidates not found (run the evaluate stage's candidate step)")
    return make_eval_data(items, queries, read_candidates(path), split, max_users, seed, source=str(path))


def prepare_eval_data(canonical, candidates_dir, cfg) -> tuple[EvalData, EvalData, pd.DataFrame]:
    """What the evaluate stage and the benchmark score on: the canonical tables, the candidate lists
    (built once with `cfg.n_candidates` and `cfg.seed`, then reused) and the cases of `cfg.split`
    (at most `cfg.max_users` users). Returns that EvalData, the EvalData of the validation split
    (the same case code and user sampling; baselines with a knob choose it there, never on test) and
    the interactions (baselines fit on them).
    """
    from pathlib import Path

    from gensar.eval.candidates import ensure_candidates

    canonical = Path(canonical)
    items = pd.read_parquet(canonical / "items.parquet")
    inter = pd.read_parquet(canonical / "interactions.parquet")
    queries = pd.read_parquet(canonical / "queries.parquet")
    cands = ensure_candidates(inter, items, queries, candidates_dir, n=cfg.n_candidates, seed=cfg.seed)
    source = str(Path(candidates_dir) / "candidates.parquet")
    data = make_eval_data(items, queries, cands, cfg.split, cfg.max_users, cfg.seed, source=source)
    valid = make_eval_data(items, queries, cands, "valid", cfg.max_users, cfg.seed, source=source)
    return data, valid, inter


def make_eval_data(items: pd.DataFrame, queries: pd.DataFrame, cases: pd.DataFrame, split: str,
                   max_users: int = 0, seed: int = 0, source: str = "candidates") -> EvalData:
    """EvalData of one split of the candidate cases; optionally a seeded sample of `max_users` users.

    The same users are kept for both tasks, so the rec and search numbers describe one population.
    """
    cases = cases[cases["split"] == split].reset_index(drop=True)
    if cases.empty:
        raise ValueError(f"{source}: no cases for split {split!r}")
    if max_users and cases["user_id"].nunique() > max_users:
        users = np.sort(cases["user_id"].unique())
        keep = set(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
        cases = cases[cases["user_id"].isin(keep)].reset_index(drop=True)
    return EvalData(items["item_id"].tolist(), items["text"].tolist(),
                    dict(zip(queries["query_id"], queries["text"])), cases)


class ScoreRanker:
    """Base class for models that give a score to every item; subclasses implement
    `score_rec(histories) -> (n, n_items)` and/or `score_search(queries, histories) -> (n, n_items)`
    with columns in `item_ids` order; histories reach them as item-id lists (one per step)."""

    name = "score"

    def __init__(self, item_ids: Sequence[str]):
        self.item_ids = list(item_ids)
        self.index = {it: i for i, it in enumerate(self.item_ids)}

    def _rank(self, scores: np.ndarray, k: int, candidates) -> list[list[str]]:
        if candidates is None:
            top = topk_from_scores(scores, k)                              # (n, k) item columns
            return [[self.item_ids[j] for j in row] for row in top]
        # gather each case's candidate scores: (n, n_cand); candidates are equal-length lists
        cols = np.array([[self.index[c] for c in cand] for cand in candidates], dtype=np.int64)
        cand_scores = np.take_along_axis(scores, cols, axis=1)
        top = topk_from_scores(cand_scores, k)
        return [[cand[j] for j in row] for cand, row in zip(candidates, top)]

    def rank_rec(self, histories, k, candidates=None):
        return self._rank(self.score_rec([history_items(h) for h in histories]), k, candidates)

    def rank_search(self, queries, histories, k, candidates=None):
        return self._rank(self.score_search(queries, [history_items(h) for h in histories]), k, candidates)


def supports(model, task: str) -> bool:
    return callable(getattr(model, f"rank_{task}", None)) and (
        not hasattr(model, "tasks") or task in model.tasks)


def evaluate_model(model, data: EvalData, protocols: Sequence[str] = PROTOCOLS,
                   batch_size: int = 256, k: int = MAX_K) -> dict:
    """Metrics of one model on every task it supports and every protocol, plus timings.

    Returns {"metrics": {"rec/full/recall@10": ..., ...}, "se": {same keys: standard errors},
             "n_cases": {"rec": n, ...}, "eval_seconds": {"rec/full": s, ...}}.
    """
    metrics, se, n_cases, seconds = {}, {}, {}, {}
    for task in TASKS:
        if not supports(model, task):
            continue
        cases = data.task_cases(task)
        n_cases[task] = len(cases)
        queries = data.case_queries(cases)
        for protocol in protocols:
            t0 = time.perf_counter()
            ranked: list[list[str]] = []
            for start in progress(range(0, len(cases), batch_size), desc=f"{model.name} {task}/{protocol}",
                              leave=False, disable=len(cases) <= batch_size):
                sl = slice(start, start + batch_size)
                hist = cases["history"].iloc[sl].tolist()
                cand = cases["candidates"].iloc[sl].tolist() if protocol == "sampled" else None
                if task == "rec":
                    out = model.rank_rec(hist, k, cand)
                else:
                    out = model.rank_search(queries[sl], hist, k, cand)
                if len(out) != len(hist):
                    raise ValueError(f"{model.name}.rank_{task} returned {len(out)} lists for {len(hist)} cases")
                ranked += [list(r) for r in out]
            ranks = target_ranks(ranked, cases["item_id"].tolist())
            metrics.update(metrics_from_ranks(ranks, protocol, task))
            se.update(standard_errors(ranks, protocol, task))
            seconds[f"{task}/{protocol}"] = round(time.perf_counter() - t0, 2)
            logger.info("%s %s/%s: %s (%d cases, %.1fs)", model.name, task, protocol,
                        {m.split("/")[-1]: round(v, 4) for m, v in metrics.items()
                         if m.startswith(f"{task}/{protocol}/")}, len(cases), seconds[f"{task}/{protocol}"])
    return {"metrics": metrics, "se": se, "n_cases": n_cases, "eval_seconds": seconds}
