"""The onnxruntime runtime: trie tables, constrained beam search parity with PyTorch generate, batching,
cold start and errors, on a tiny random GenSAR exported by the real export stage."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import WORDS, exported_world, random_events, tiny_world

from gensar.config import Params, TrainConfig
from gensar.model.generate import GenSARModel
from gensar.model.trie import IdentifierTrie
from gensar.serve.beam import best_candidates
from gensar.serve.runtime import Runtime, UnknownItemsError
from gensar.serve.session import choose_providers

BEAMS = 20


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    world = exported_world(tmp_path_factory.mktemp("serve"), n_items=150)
    out = world["out"]
    world["runtime"] = Runtime.load(out, beams=BEAMS)
    world["reference"] = GenSARModel(world["model"], world["tokenizer"], world["ids"], beams=BEAMS)
    return world


def _requests(world, n: int, seed: int = 0):
    rng = random.Random(seed)
    items = world["ids"].item_ids
    histories = [random_events(rng, items, rng.randint(0, 7)) for _ in range(n)]
    queries = [" ".join(rng.sample(WORDS, rng.randint(1, 3))) for _ in range(n)]
    return histories, queries


# --------------------------------------------------------------------------------------------
def test_best_candidates_equal_a_full_sort():
    """The top-k over the allowed (row, token) pairs only == sorting every allowed candidate of each
    request; a request with fewer allowed candidates than k is padded with -inf (dead beams)."""
    rng = np.random.default_rng(0)
    b, per, v, keep = 4, 5, 9, 6
    allowed = rng.random((b * per, v)) < 0.3
    allowed[per:2 * per] = False
    allowed[per + 2, 3] = True                              # request 1: a single allowed candidate
    allowed[3 * per:] = False                               # request 3: none at all
    score = rng.standard_normal(b * per).astype(np.float32)
    logp = rng.standard_normal((b * per, v)).astype(np.float32)
    logp[~allowed] = np.nan                                 # never read (the allowed-only graph gives NaN rows)
    src, tok, best = best_candidates(allowed, score, logp, b, keep)
    assert src.shape == tok.shape == best.shape == (b * keep,)
    for i in range(b):
        cand = sorted(((float(score[r] + logp[r, t]), r, t) for r in range(i * per, (i + 1) * per)
                       for t in range(v) if allowed[r, t]), key=lambda c: -c[0])[:keep]
        got = slice(i * keep, (i + 1) * keep)
        n = len(cand)
        assert list(zip(src[got][:n], tok[got][:n])) == [(r, t) for _, r, t in cand]
        assert np.allclose(best[got][:n], [c[0] for c in cand])
        assert np.isneginf(best[got][n:]).all() and (src[got][n:] // per == i).all()   # padding stays in its request
    assert (best[keep:2 * keep] > -np.inf).sum() == 1 and np.isneginf(best[3 * keep:]).all()


def test_topk_equals_pytorch_generate(served):
    """Parity: top-10 items of the runtime == HF generate (same beams) for >= 99% of requests."""
    rt, ref = served["runtime"], served["reference"]
    histories, queries = _requests(served, 30)
    k = 10
    got = rt.recommend_batch(histories, k) + rt.search_batch(queries, histories, k)
    want = ref.recommend_batch(histories, k) + ref.search_batch(queries, histories, k)
    same = sum([h.item_id for h in g] == [w[0] for w in ws] for g, ws in zip(got, want))
    assert same / len(want) >= 0.99, f"{same}/{len(want)} requests with identical top-{k}"
    # and the scores are HF's scores (summed log-probs including the forced EOS)
    diff = max(abs(h.score - w[1]) for g, ws in zip(got, want) for h, w in zip(g, ws))
    assert diff < 1e-3
    assert all(len(g) == k for g in got)
    assert got[0][0].title == served["items"].set_index("item_id").loc[got[0][0].item_id, "title"]


def test_tokenization_equals_the_pytorch_path(served):
    rt = served["runtime"]
    sources = ["recommend: history: none recommend:", "search: " + " ".join(WORDS * 20) + " search:",
               "search: history: <rec> <h0_1><h1_2><c2_3><c3_4><d4_0> query: pen search:"]
    ids, mask = rt.encode_sources(sources)
    ref = served["tokenizer"](sources, padding=True, truncation=True, max_length=rt.max_input_tokens,
                              return_tensors="np", add_special_tokens=not rt.causal)   # causal: no EOS
    assert ids.shape[1] == rt.max_input_tokens                 # the long source was truncated
    assert np.array_equal(ids, ref["input_ids"]) and np.array_equal(mask, ref["attention_mask"])


def test_batching_does_not_change_answers(served):
    rt = served["runtime"]
    histories, queries = _requests(served, 6, seed=1)
    ks = [1, 5, 10, 3, 20, 7]
    batched = rt.search_batch(queries, histories, ks)
    for q, h, k, b in zip(queries, histories, ks, batched):
        single = rt.search(q, h, k)
        assert [x.item_id for x in single] == [x.item_id for x in b] and len(b) == k
        assert np.allclose([x.score for x in single], [x.score for x in b], atol=1e-4)


def test_cold_start_unknown_items_and_allowed_normalisation(served):
    rt = served["runtime"]
    cold = rt.recommend([], k=5)                           # a new user: served from the empty history
    assert len(cold) == 5 and len({h.item_id for h in cold}) == 5
    assert [h.score for h in cold] == sorted((h.score for h in cold), reverse=True)
    with pytest.raises(UnknownItemsError, match="'nope'"):
        rt.recommend([("rec", "nope", None)], k=5)
    # allowed-only normalisation: valid distinct items, log-probs <= 0, and the best item of each
    # request is scored at least as high as under the full softmax (a smaller normaliser)
    allowed = Runtime.load(served["root"] / "models" / "onnx", beams=BEAMS, normalize="allowed")
    histories, queries = _requests(served, 5, seed=2)
    a = allowed.search_batch(queries, histories, 10)
    f = rt.search_batch(queries, histories, 10)
    for ha, hf in zip(a, f):
        assert len({h.item_id for h in ha}) == 10 and all(h.item_id in served["ids"] for h in ha)
        assert all(h.score <= 1e-6 for h in ha) and ha[0].score >= hf[0].score


def test_providers_are_explicit():
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    if not torch.cuda.is_available():
        assert choose_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(RuntimeError, match="CUDA"):
            choose_providers("cuda")
    with pytest.raises(ValueError, match="provider"):
        choose_providers("tpu")


def test_exhaustive_beam_search_equals_brute_force_scores(tmp_path):
    """With as many beams as items the search is exhaustive: both normalisations must give every
    item exactly the score computed from the PyTorch model's logits token by token."""
    from gensar.model import prompts
    from gensar.model.levels import t5_hidden
    from gensar.stages.export import run

    world = tiny_world(tmp_path, n_items=30, seed=3)
    run(Params(), model=world["model_dir"], ids=world["ids_dir"], canonical=world["canonical"], out=tmp_path / "onnx")
    model, tok, ids = world["model"], world["tokenizer"], world["ids"]
    history = [("rec", ids.item_ids[0], None), ("search", ids.item_ids[1], "desk lamp")]
    causal = Params().train.causal                  # the encoder the export stage writes (params.yaml's)
    source = prompts.rec_input(history, ids, causal=causal)
    seqs = {i: tok.convert_tokens_to_ids(ids.cid_tokens(i)) for i in ids.item_ids}
    trie = IdentifierTrie(list(seqs.values()), list(seqs))
    enc = tok([source], return_tensors="pt", add_special_tokens=not causal)
    dec = torch.tensor([[model.config.decoder_start_token_id] + s + [tok.eos_token_id] for s in seqs.values()])
    mask = enc["attention_mask"].repeat(len(dec), 1)
    with torch.no_grad():
        hidden = t5_hidden(model, enc["input_ids"].repeat(len(dec), 1), mask, dec[:, 1:],
                           decoder_input_ids=dec[:, :-1], causal=causal)
        logits = hidden @ model.lm_head.weight.T                              # [n, L+1, V]
    groups = ids.level_groups()
    level_ids = [torch.tensor(tok.convert_tokens_to_ids(groups[g])) for g in ids.space_groups("cid")]
    expected = {"full": {}, "allowed": {}, "level": {}}
    for row, (item, seq) in enumerate(seqs.items()):
        full = allowed = level = 0.0
        for t, token in enumerate(seq + [tok.eos_token_id]):
            lp = torch.log_softmax(logits[row, t], -1)
            full += float(lp[token])
            if t < len(seq):      # renormalised over the tokens the trie allows after seq[:t] / over the level's codes
                ok = torch.tensor(trie.allowed_after(seq[:t]))
                allowed += float(logits[row, t, token] - torch.logsumexp(logits[row, t, ok], 0))
                level += float(logits[row, t, token] - torch.logsumexp(logits[row, t, level_ids[t]], 0))
        expected["full"][item], expected["allowed"][item], expected["level"][item] = full, allowed, level
    for norm in ("full", "allowed", "level"):
        rt = Runtime.load(tmp_path / "onnx", beams=len(seqs), normalize=norm)
        hits = rt.recommend(history, k=len(seqs))
        assert sorted(h.item_id for h in hits) == sorted(seqs)
        assert max(abs(h.score - expected[norm][h.item_id]) for h in hits) < 1e-4, norm
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # the PyTorch path of a model trained with id_loss=level scores the same level distribution
    gm = GenSARModel(model, tok, ids, TrainConfig(id_loss="level"), beams=len(seqs))
    ref = gm.recommend(history, k=len(seqs))
    assert sorted(i for i, _ in ref) == sorted(seqs)
    assert max(abs(score - expected["level"][i]) for i, score in ref) < 1e-4


def test_an_export_of_another_format_is_refused(served, tmp_path):
    """A models/onnx written by an older exporter (other graph inputs) fails at load with what to do."""
    import json
    import shutil

    old = tmp_path / "onnx"
    shutil.copytree(served["root"] / "models" / "onnx", old)
    meta = json.loads((old / "meta.json").read_text())
    meta["format"] = "gensar-onnx/2"
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="gensar-onnx/2.*re-run"):
        Runtime.load(old)


def test_candidates_rank_only_their_items_as_pytorch_does(served):
    """The sampled protocol through the runtime: each request ranks its own candidates only, with the
    PyTorch path's answers."""
    rt, ref = served["runtime"], served["reference"]
    histories, queries = _requests(served, 6, seed=2)
    rng = random.Random(2)
    cands = [rng.sample(served["ids"].item_ids, 12) for _ in histories]
    got = rt.recommend_batch(histories, 5, candidates=cands) + rt.search_batch(queries, histories, 5, candidates=cands)
    want = ref.recommend_batch(histories, 5, candidates=cands) + ref.search_batch(queries, histories, 5, candidates=cands)
    for g, c in zip(got, cands + cands):
        assert len(g) == 5 and {h.item_id for h in g} <= set(c)
    same = sum([h.item_id for h in g] == [w[0] for w in ws] for g, ws in zip(got, want))
    assert same == len(want)
    with pytest.raises(UnknownItemsError):
        rt.recommend_batch(histories[:1], 5, candidates=[["nope"]])


def test_suggestions_equal_pytorch_next_query(served):
    """Parity of the next-query task: the runtime's greedy tokens == HF generate (1 beam), token by token."""
    from gensar.model import prompts

    rt, ref = served["runtime"], served["reference"]
    histories, _ = _requests(served, 20, seed=3)
    sources = [prompts.query_input(h, ref.ids, **ref._kw()) for h in histories]
    got = rt.greedy_tokens(sources, max_new_tokens=12)
    enc = ref.tokenizer(sources, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = ref.model.generate(**enc, num_beams=1, do_sample=False, max_new_tokens=12)[:, 1:].numpy()

    def until_eos(row, eos=rt.eos_id):
        row = list(row)
        return row[: row.index(eos) + 1] if eos in row else row
    same = sum(until_eos(g) == until_eos(w) for g, w in zip(got, want))
    assert same / len(sources) >= 0.95 and max(len(until_eos(g)) for g in got) > 1, (same, got[:2], want[:2])
    text = rt.suggest_batch(histories, max_new_tokens=12)
    assert text == [rt.tokenizer.decode(g, skip_special_tokens=True).strip() for g in got]
    assert rt.suggest(histories[0]) == rt.suggest_batch(histories[:1])[0]
    assert rt.suggest_batch([]) == []
    with pytest.raises(UnknownItemsError):
        rt.suggest([("rec", "no-such-item", None)])
