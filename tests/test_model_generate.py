"""Constrained beam search: only valid items, ranked, candidates respected, scores are log-probs."""
from __future__ import annotations

import shutil

import pytest
import torch

from gensar.config import ModelConfig, TrainConfig, to_dict
from gensar.model.generate import GenSARModel
from gensar.model.prompts import IdentifierMap
from gensar.model.t5 import build_model, save_model
from gensar.model.tokenizer import train_tokenizer
from tests.test_model_data import make_tiny_dataset


@pytest.fixture(scope="module")
def gm(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    paths = make_tiny_dataset(root)
    ids = IdentifierMap.load(paths["ids"])
    tok = train_tokenizer(["office desk lamp", "gel pen", "office chair"] * 3, ids.tokens(), 200)
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="tiny", dropout=0.0), len(tok), tok.pad_token_id, tok.eos_token_id)
    m = GenSARModel(model.eval(), tok, ids, TrainConfig(id_loss="full"), beams=12)   # whole-vocabulary scores (HF generate)
    m.root, m.ids_dir = root, paths["ids"]
    return m


HIST = [("rec", "I001", None), ("search", "I002", "office lamp"), ("rec", "I005", None)]


def test_recommend_returns_valid_distinct_ranked_items(gm):
    out = gm.recommend(HIST, k=10)
    items = [i for i, _ in out]
    scores = [s for _, s in out]
    assert len(out) == 10 and len(set(items)) == 10
    assert all(i in gm.ids for i in items)
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    search = gm.search("office lamp", HIST, k=5)
    assert len(search) == 5 and all(i in gm.ids for i, _ in search)


def test_candidates_are_respected_and_fewer_candidates_than_k(gm):
    cands = ["I003", "I007", "I011", "I020"]
    out = gm.recommend(HIST, k=10, candidates=cands)
    assert sorted(i for i, _ in out) == sorted(cands)      # all of them, nothing else
    full = dict(gm.recommend(HIST, k=24))                   # every item: 24 in the tiny catalogue
    assert len(full) == 24
    for item, score in out:                                  # same model, same sequence: same score
        assert score == pytest.approx(full[item], abs=1e-4)
    with pytest.raises(KeyError, match="no identifier"):
        gm.search("lamp", HIST, k=3, candidates=["I003", "nope"])


def test_batch_matches_single_requests(gm):
    hists = [HIST, HIST[:1], []]
    batch = gm.recommend_batch(hists, k=5)
    for h, got in zip(hists, batch):
        single = gm.recommend(h, k=5)
        assert [i for i, _ in got] == [i for i, _ in single]
        assert [s for _, s in got] == pytest.approx([s for _, s in single], abs=1e-4)
    cands = [["I001", "I002", "I003"], ["I004", "I005", "I006", "I007"]]
    got = gm.search_batch(["office pen", "office chair"], [HIST, []], k=3, candidates=cands)
    assert {i for i, _ in got[0]} == set(cands[0])          # k == number of candidates: all
    assert {i for i, _ in got[1]} < set(cands[1]) and len(got[1]) == 3


def test_score_is_the_total_log_probability_of_identifier_and_eos(gm):
    item, score = gm.recommend(HIST, k=1)[0]
    from gensar.model import prompts
    from gensar.model.levels import t5_hidden

    src = prompts.rec_input(HIST, gm.ids, causal=gm.cfg.causal)
    enc = gm.encode_sources([src])
    labels = torch.tensor([gm.codes["cid"][item] + [gm.eos]])
    with torch.no_grad():
        hidden = t5_hidden(gm.model, enc["input_ids"], enc["attention_mask"], labels, causal=gm.cfg.causal)
        logits = hidden @ gm.model.lm_head.weight.T                       # (1, depth+1, vocab)
    logp = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).sum().item()
    assert score == pytest.approx(logp, abs=1e-4)


def test_tries_built_once_and_saved_model_reloads_identically(gm, tmp_path):
    tries = dict(gm.tries)
    gm.recommend(HIST, k=3)
    assert gm.tries["cid"] is tries["cid"] and gm.tries["sid"] is tries["sid"]
    out = tmp_path / "t5"
    save_model(gm.model, gm.tokenizer, out, {"train": to_dict(gm.cfg)})   # the config it decodes with
    shutil.copytree(gm.ids_dir, out / "ids")
    again = GenSARModel.load(out, beams=12)
    assert again.model.config._attn_implementation == "eager"
    a, b = again.recommend(HIST, k=5), gm.recommend(HIST, k=5)
    assert [i for i, _ in a] == [i for i, _ in b]
    assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-5)
