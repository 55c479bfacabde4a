"""The personalised search baselines: BM25 fused with / re-ranked by SASRec-CE, knobs fit on validation."""
import json

import numpy as np
import pandas as pd
import pytest

from gensar.config import load_params
from gensar.eval.baselines import FusionRanker, RerankRanker, fit_hybrid
from gensar.eval.evaluate import EvalData, ScoreRanker, evaluate_model
from gensar.stages.evaluate import run
from tests.test_eval_candidates import tables  # noqa: F401  (fixture)
from tests.test_eval_stage import write_stage_inputs

ABCD = ["a", "b", "c", "d"]
LEX4, COL4 = [2.0, 0.0, 2.0, 0.0], [0.0, 4.0, 2.0, 2.0]   # z: [1, -1, 1, -1] and [-sqrt2, sqrt2, 0, 0]
LEX5, COL5 = [5.0, 4.0, 3.0, 0.0, 1.0], [0.0, 1.0, 2.0, 9.0, 3.0]
I5 = [f"i{j}" for j in range(5)]


class Fixed(ScoreRanker):
    """A stand-in BM25 / SASRec ranker giving every case the same score row."""

    def __init__(self, item_ids, row):
        super().__init__(item_ids)
        self.row = np.asarray(row, dtype=np.float64)

    def score_search(self, queries, histories):
        return np.tile(self.row, (len(queries), 1))

    def score_rec(self, histories):
        return np.tile(self.row, (len(histories), 1))


def valid_cases(item_ids, targets, split="valid") -> EvalData:
    cases = pd.DataFrame({"behavior": "search", "split": split, "user_id": [f"u{i}" for i in range(len(targets))],
                          "step": 3, "item_id": targets, "query_id": "q0",
                          "history": [[("rec", item_ids[0], None, 0)]] * len(targets)})
    cases["candidates"] = [list(item_ids)] * len(targets)
    return EvalData(list(item_ids), list(item_ids), {"q0": "some query"}, cases)


def test_fusion_ranks_match_a_hand_computation():
    r2 = np.sqrt(2.0)
    ranker = FusionRanker(Fixed(ABCD, LEX4), Fixed(ABCD, COL4), weight=1.0)
    np.testing.assert_allclose(ranker.score_search(["q"], [[]]), [[1 - r2, r2 - 1, 1, -1]])
    assert ranker.rank_search(["q"], [[]], 4) == [["c", "b", "a", "d"]]
    assert ranker.rank_search(["q"], [[]], 3, candidates=[["d", "a", "b"]]) == [["b", "a", "d"]]
    ranker.weight = 0.5          # 1 - sqrt2/2 = .29 beats sqrt2/2 - 1 = -.29
    assert ranker.rank_search(["q"], [[]], 4) == [["c", "a", "b", "d"]]
    ranker.weight = 2.0          # 2 sqrt2 - 1 = 1.83 beats c's 1
    assert ranker.rank_search(["q"], [[]], 4) == [["b", "c", "d", "a"]]
    assert FusionRanker(Fixed(ABCD, [0.0] * 4), Fixed(ABCD, COL4)).rank_search(["q"], [[]], 1) == [["b"]]


def test_rerank_orders_bm25_top_n_by_sasrec_and_keeps_the_rest_in_bm25_order():
    ranker = RerankRanker(Fixed(I5, LEX5), Fixed(I5, COL5), depth=2)
    assert ranker.rank_search(["q"], [[]], 5) == [["i1", "i0", "i2", "i4", "i3"]]
    ranker.depth = 3
    assert ranker.rank_search(["q"], [[]], 5) == [["i2", "i1", "i0", "i4", "i3"]]


def test_knobs_are_chosen_on_validation_cases():
    # w=.5 ranks c, a, b; w=1 c, b, a; w=2 b, c: with targets c, c, b only w=1 has both c's first and b second
    fusion = FusionRanker(Fixed(ABCD, LEX4), Fixed(ABCD, COL4))
    valid = valid_cases(ABCD, ["c", "c", "b"])
    fit = fit_hybrid(fusion, valid, grid=(0.5, 1.0, 2.0), batch_size=2)
    assert fusion.weight == fit["chosen"] == 1.0 and fit["split"] == "valid" and fit["n_cases"] == 3
    assert fit["grid"]["1"]["search/full/ndcg@10"] == pytest.approx((2 + 1 / np.log2(3)) / 3)
    assert fit["grid"]["1"] == evaluate_model(fusion, valid, protocols=("full",))["metrics"]  # driver's numbers
    assert fit_hybrid(fusion, valid_cases(ABCD, ["a"]), grid=(0.5, 1.0, 2.0))["chosen"] == 0.5
    assert fit_hybrid(fusion, valid_cases(ABCD, ["b"]), grid=(0.5, 1.0, 2.0))["chosen"] == 2.0
    # i3 is SASRec's best and BM25's last: only the deepest re-rank finds it; BM25's best two want N=2
    rerank = RerankRanker(Fixed(I5, LEX5), Fixed(I5, COL5))
    assert fit_hybrid(rerank, valid_cases(I5, ["i3"]), grid=(2, 3, 5))["chosen"] == 5 == rerank.depth
    assert fit_hybrid(rerank, valid_cases(I5, ["i0", "i1"]), grid=(2, 3, 5))["chosen"] == 2
    with pytest.raises(ValueError, match="validation"):
        fit_hybrid(rerank, valid_cases(I5, ["i0"], split="test"))


def test_stage_fits_the_hybrids_on_the_validation_split(tables, tmp_path):  # noqa: F811
    canon = write_stage_inputs(tables, tmp_path)
    params = load_params(None, {"evaluate.baselines": ["bm25", "sasrec", "bm25+sasrec",
                                                                         "bm25>sasrec"], "evaluate.device": "cpu"})
    report = tmp_path / "report.json"
    summary = run(params, canonical=canon, model=None, sasrec=tmp_path / "sasrec", candidates=tmp_path / "cands",
                  out=tmp_path / "eval.json", report=report)
    metrics = summary["metrics"]
    assert set(metrics) == {"bm25", "sasrec", "bm25+sasrec", "bm25>sasrec"}
    assert {k.split("/")[0] for k in metrics["bm25+sasrec"]} == {"search"}
    details = json.loads(report.read_text())["models"]
    for name, param, grid in (("bm25+sasrec", "weight", FusionRanker.grid), ("bm25>sasrec", "depth", RerankRanker.grid)):
        fit = details[name]["fit"]
        assert fit["param"] == param and fit["chosen"] in grid and fit["split"] == "valid" and fit["n_cases"] == 12
        assert len(fit["grid"]) == len(grid)
    assert "fit" not in details["bm25"]
