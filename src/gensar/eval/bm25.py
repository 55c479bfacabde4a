"""Okapi BM25 over item texts: the `bm25s` library's index, our tokenizer and a dense score matrix.

For a query q and a document d:

    score(q, d) = sum_{t in q} idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))         (the non-negative Lucene form)

`bm25s` (method `lucene`) computes the same sum without the constant (k1 + 1) factor, which changes
no ranking; it is multiplied back so scores read as the classic Okapi form above. Documents and
queries are tokenized by the same rule (lowercase alphanumeric words) that the rest of the project
uses for item text.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lowercase alphanumeric words; the same for documents and queries."""
    return _TOKEN.findall(text.lower())


class BM25:
    """Okapi BM25 index over `docs` (k1=1.2, b=0.75 by default), backed by `bm25s`."""

    def __init__(self, docs: Sequence[str], k1: float = 1.2, b: float = 0.75):
        import bm25s

        self.k1, self.b, self.n_docs = k1, b, len(docs)
        self.index = bm25s.BM25(k1=k1, b=b, method="lucene")
        self.index.index([tokenize(d) for d in docs], show_progress=False)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """Dense (n_queries, n_docs) BM25 scores; a query without words scores 0 everywhere."""
        out = np.zeros((len(queries), self.n_docs), dtype=np.float64)
        for i, q in enumerate(queries):
            words = tokenize(q)
            if words:
                out[i] = self.index.get_scores(words) * (self.k1 + 1.0)
        return out
