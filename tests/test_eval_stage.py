"""The evaluate stage end to end on tiny tables with real baselines, and the SASRec / dense wrappers."""
import json

import numpy as np
import torch

from gensar.config import load_params
from gensar.eval.baselines import DenseRanker, SASRecRanker, sentence_encoder
from gensar.io import write_parquet
from gensar.stages.evaluate import run
from tests.test_eval_candidates import tables  # noqa: F401  (fixture)


def _save_tiny_sasrec(path, item_ids):
    from gensar.ids.sasrec import SASRec, SASRecConfig, save_sasrec

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=len(item_ids), hidden=16, layers=1, heads=1, inner=32, max_len=8)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_sasrec(model, path, list(item_ids))
    return model


def test_sasrec_ranker_reorders_checkpoint_columns_to_the_items_table(tmp_path):
    ckpt_items = [f"i{j}" for j in range(20)]
    model = _save_tiny_sasrec(tmp_path / "model.pt", ckpt_items)
    ours = ckpt_items[::-1]                                  # the items table in another order
    ranker = SASRecRanker(ours, str(tmp_path / "model.pt"))
    hist = [["i3", "i5"], []]
    scores = ranker.score_rec(hist)
    with torch.no_grad():
        direct = model.item_scores(model(torch.tensor([[0] * 6 + [4, 6], [0] * 8]))[:, -1]).numpy()
    np.testing.assert_allclose(scores, direct[:, ::-1], rtol=1e-5)
    top = ranker.rank_rec(hist, 3)
    assert top[0][0] == ckpt_items[int(direct[0].argmax())]


def test_dense_ranker_finds_the_item_described_by_the_query():
    items = ["blue ballpoint pen with ink", "a4 printer paper ream", "heavy duty stapler", "desk lamp led"]
    encode = sentence_encoder()
    ranker = DenseRanker(["a", "b", "c", "d"], encode(items), encode)
    assert ranker.n_params > 1_000_000
    assert [r[0] for r in ranker.rank_search(["stapler", "paper for printer"], [[], []], 2)] == ["c", "b"]


def write_stage_inputs(tables, root):  # noqa: F811  (tables: the fixture's value)
    """The canonical tables and a tiny SASRec under `root`; returns the canonical folder."""
    items, inter, queries = tables
    canon = root / "canonical"
    for name, df in (("items", items), ("interactions", inter), ("queries", queries)):
        write_parquet(df, canon / f"{name}.parquet")
    _save_tiny_sasrec(root / "sasrec" / "model.pt", items["item_id"].tolist())
    return canon


def test_stage_writes_comparable_metrics_and_reuses_candidates(tables, tmp_path):  # noqa: F811
    canon = write_stage_inputs(tables, tmp_path)
    params = load_params(None, {"evaluate.baselines": ["popularity", "bm25", "sasrec"],
                                                  "evaluate.device": "cpu"})
    out = tmp_path / "metrics" / "eval.json"
    summary = run(params, canonical=canon, model=tmp_path / "no_model", ids=tmp_path / "ids",
                  sasrec=tmp_path / "sasrec", candidates=tmp_path / "cands", out=out)
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"popularity", "bm25", "sasrec"}
    assert "rec/full/recall@10" in metrics["sasrec"] and "search/sampled/hr@10" in metrics["bm25"]
    assert all(isinstance(v, float) for m in metrics.values() for v in m.values())   # numbers only: dvc diff
    assert summary["n_cases"] == 24
    meta = json.loads((tmp_path / "cands" / "meta.json").read_text())
    assert meta["cases"] == {"test/rec": 12, "test/search": 12, "valid/rec": 12, "valid/search": 12}
    mtime = (tmp_path / "cands" / "candidates.parquet").stat().st_mtime_ns
    run(params, canonical=canon, model=None, sasrec=tmp_path / "sasrec", candidates=tmp_path / "cands", out=out)
    assert (tmp_path / "cands" / "candidates.parquet").stat().st_mtime_ns == mtime   # reused, not rebuilt
    assert json.loads(out.read_text()) == metrics                                     # deterministic


def test_stage_scores_a_saved_gensar_model_within_its_candidates(tmp_path):
    """A (tiny, untrained) saved GenSAR T5 goes through the same stage: rankings are valid items,
    sampled rankings stay inside each case's candidate list, metrics exist for both tasks."""
    from gensar.config import ModelConfig
    from gensar.eval.baselines import GenSARRanker
    from gensar.eval.evaluate import load_eval_data
    from gensar.model.generate import GenSARModel
    from gensar.model.prompts import IdentifierMap
    from gensar.model.t5 import build_model, save_model
    from gensar.model.tokenizer import train_tokenizer
    from tests.test_model_data import make_tiny_dataset

    paths = make_tiny_dataset(tmp_path)
    ids = IdentifierMap.load(paths["ids"])
    tok = train_tokenizer(["office desk lamp", "gel pen", "office chair"] * 3, ids.tokens(), 200)
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="tiny", dropout=0.0), len(tok), tok.pad_token_id, tok.eos_token_id)
    save_model(model, tok, tmp_path / "t5", {"train": {}})
    params = load_params(None, {"evaluate.n_candidates": 10, "evaluate.beams": 10,
                                                  "evaluate.baselines": ["popularity"], "evaluate.device": "cpu"})
    out = tmp_path / "eval.json"
    run(params, canonical=paths["canonical"], model=tmp_path / "t5", ids=paths["ids"],
        sasrec=tmp_path / "none", candidates=tmp_path / "cands", out=out)
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"gensar", "popularity"}
    assert {"rec/sampled/hr@10", "rec/full/recall@10", "search/sampled/ndcg@10",
            "search/full/ndcg@5"} <= set(metrics["gensar"])
    assert metrics["gensar"]["rec/sampled/hr@10"] == 1.0        # 10 candidates: the target is always in the top 10
    se = metrics["gensar"]["se"]                                  # the gate's noise bound: per-case std / sqrt(n)
    assert se["rec/sampled/hr@10"] == 0.0 and 0.0 < se["rec/full/ndcg@10"] < 0.5 and "se" not in metrics["popularity"]

    data = load_eval_data(str(paths["canonical"]), str(tmp_path / "cands"), split="test")
    ranker = GenSARRanker(GenSARModel.load(tmp_path / "t5", paths["ids"], beams=10))
    cases = data.task_cases("search")
    ranked = ranker.rank_search([data.query_texts[q] for q in cases["query_id"]], cases["history"].tolist(), 5,
                                cases["candidates"].tolist())
    for got, cand in zip(ranked, cases["candidates"]):
        assert len(got) == 5 and set(got) <= set(cand)
