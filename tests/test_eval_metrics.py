"""Metrics, BM25 and top-k selection: exact values on hand-computed cases."""
import math

import numpy as np

from gensar.eval.bm25 import BM25
from gensar.eval.metrics import metrics_from_ranks, ranks_from_matrix, target_ranks, topk_from_scores


def test_ranks_and_metrics_match_hand_computed_values():
    ranked = [["a", "b", "c"], ["x", "t", "y"], ["p", "q"], []]
    ranks = target_ranks(ranked, ["a", "t", "z", "a"])
    assert ranks.tolist() == [1, 2, 0, 0]
    m = metrics_from_ranks(ranks, "sampled", "rec")
    assert m["rec/sampled/hr@1"] == 0.25
    assert m["rec/sampled/hr@10"] == 0.5
    assert math.isclose(m["rec/sampled/ndcg@10"], (1.0 + 1 / math.log2(3)) / 4)
    full = metrics_from_ranks(np.array([6, 5, 11]), "full", "search")
    assert set(full) == {"search/full/recall@5", "search/full/recall@10", "search/full/ndcg@5",
                         "search/full/ndcg@10"}
    assert math.isclose(full["search/full/recall@5"], 1 / 3)
    assert math.isclose(full["search/full/recall@10"], 2 / 3)
    assert math.isclose(full["search/full/ndcg@10"], (1 / math.log2(7) + 1 / math.log2(6)) / 3)


def test_vectorised_ranks_equal_list_ranks():
    rng = np.random.default_rng(0)
    mat = np.stack([rng.permutation(50)[:10] for _ in range(200)])
    tgt = rng.integers(0, 50, 200)
    assert (ranks_from_matrix(mat, tgt) == target_ranks(mat.tolist(), tgt.tolist())).all()


def test_topk_is_stable_on_ties_and_exact_with_partial_selection():
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0] + [0.0] * 40])
    assert topk_from_scores(scores, 4).tolist() == [[1, 2, 4, 5]]     # ties keep column order
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, size=(30, 100)).astype(float)               # many ties
    assert (topk_from_scores(s, 10) == np.argsort(-s, axis=1, kind="stable")[:, :10]).all()


def test_bm25_matches_the_okapi_formula():
    docs = ["red pen pen", "blue pen", "red paper stapler"]
    bm = BM25(docs)
    s = bm.scores(["red pen", "stapler", "unknown words"])
    n, avgdl, k1, b = 3, 8 / 3, 1.2, 0.75
    idf = lambda df: math.log(1 + (n - df + 0.5) / (df + 0.5))
    term = lambda tf, dl, df: idf(df) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))
    close = lambda a, want: math.isclose(a, want, rel_tol=1e-6)     # bm25s scores in float32
    assert close(s[0, 0], term(1, 3, 2) + term(2, 3, 2))
    assert close(s[0, 1], term(1, 2, 2))
    assert close(s[1, 2], term(1, 3, 1)) and s[1, :2].sum() == 0
    assert (s[2] == 0).all() and (bm.scores(["", "!!"]) == 0).all()
    assert s[0].argmax() == 0
