"""A small Okapi BM25 over item texts, vectorised with scipy.sparse.

For a query q and a document d:

    score(q, d) = sum_{t in q} idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))         (the non-negative Lucene form)

The document side of that sum does not depend on the query, so it is precomputed once as a sparse
(n_docs, vocab) matrix W; scoring a batch of queries is then one sparse product Q @ W.T, where Q
holds the query term counts (a repeated query word counts repeatedly, as in Okapi).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lowercase alphanumeric words; the same for documents and queries."""
    return _TOKEN.findall(text.lower())


class BM25:
    """Okapi BM25 index over `docs` (k1=1.2, b=0.75 by default)."""

    def __init__(self, docs: Sequence[str], k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.vocab: dict[str, int] = {}
        rows, cols = [], []
        for i, doc in enumerate(docs):
            for tok in tokenize(doc):
                rows.append(i)
                cols.append(self.vocab.setdefault(tok, len(self.vocab)))
        n_docs = len(docs)
        # term frequencies, duplicates are summed by the COO -> CSR conversion
        tf = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)),
                           shape=(n_docs, max(len(self.vocab), 1)))
        tf.sum_duplicates()
        dl = np.asarray(tf.sum(1)).ravel()                               # (n_docs,)
        avgdl = dl.mean() if n_docs else 1.0
        df = np.bincount(tf.indices, minlength=tf.shape[1])               # docs containing each term
        self.idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))            # (vocab,)
        # W[d, t] = idf(t) * tf (k1+1) / (tf + k1 (1 - b + b dl/avgdl)), only where tf > 0
        norm = k1 * (1.0 - b + b * dl / max(avgdl, 1e-9))                # (n_docs,)
        row_of = np.repeat(np.arange(n_docs), np.diff(tf.indptr))        # row of each stored value
        data = tf.data * (k1 + 1.0) / (tf.data + norm[row_of]) * self.idf[tf.indices]
        self.W = sp.csr_matrix((data, tf.indices, tf.indptr), shape=tf.shape)
        self.n_docs = n_docs

    def query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        """(n_queries, vocab) term counts; words unknown to the index are dropped (they score 0)."""
        rows, cols = [], []
        for i, q in enumerate(queries):
            for tok in tokenize(q):
                j = self.vocab.get(tok)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
        m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(queries), self.W.shape[1]))
        m.sum_duplicates()
        return m

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """Dense (n_queries, n_docs) BM25 scores."""
        return np.asarray((self.query_matrix(queries) @ self.W.T).todense())
