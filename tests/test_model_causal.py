"""The causal encoder (`train.causal`): one rec sequence trains every click of a history in one pass,
and computes for each of its targets what the inference input of that history computes."""
from __future__ import annotations

import pytest
import torch

from gensar.config import ModelConfig, TrainConfig
from gensar.model import prompts
from gensar.model.examples import Event, Example, ExampleBuilder, rec_chunks, user_events
from gensar.model.generate import GenSARModel
from gensar.model.levels import LevelVocab, Seq2SeqLoss, t5_hidden
from gensar.model.t5 import build_model
from gensar.model.train import Collate, tokenize_epoch


@pytest.fixture(scope="module")
def tiny(tiny_corpus):
    """The shared tiny corpus (conftest) and a tiny T5 without dropout."""
    tok = tiny_corpus["tok"]
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="tiny", vocab_size=300, dropout=0.0), len(tok), tok.pad_token_id,
                        tok.eos_token_id).eval()
    return {**tiny_corpus, "model": model}


def _clicks(ids, n):
    items = ids.item_ids
    evs = [Event("rec", items[k % len(items)], None, k) for k in range(n)]
    evs.insert(2, Event("search", items[5], "desk lamp", 1))          # a search-only click: history only
    evs = [e._replace(step=k) for k, e in enumerate(evs)]
    return prompts.history_clicks(evs, "rec"), evs


def test_chunks_make_each_click_a_target_once():
    clicks = [[("rec", str(i), None)] for i in range(23)]
    chunks = rec_chunks(clicks, 10)
    targets = [c[0][1] for piece, n in chunks for c in piece[n:]]
    assert targets == [str(i) for i in range(23)]
    assert [n for _, n in chunks] == [0, 10, 10] and max(len(p) for p, _ in chunks) == 20


def test_sequence_prefix_is_the_inference_input(tiny):
    """Up to and including its k-th `<rec>`, a rec sequence tokenizes like `rec_input` of the clicks
    before that click (causal inputs carry no EOS)."""
    ids, tok = tiny["ids"], tiny["tok"]
    clicks, evs = _clicks(ids, 6)
    source, targets = prompts.rec_sequence(clicks, ids, n_context=2)
    assert len(targets) == 6 and targets[:2] == (None, None)        # 6 rec clicks; the search click has none
    assert prompts.rec_targets(clicks, 2) == [3, 4, 5, 6]             # clicks[2] is the search click
    src = tok(source, add_special_tokens=False).input_ids
    rec = tok.convert_tokens_to_ids("<rec>")
    marks = [p for p, t in enumerate(src) if t == rec]
    rec_at = [k for k, c in enumerate(clicks) if c[0][0] == "rec"]
    for m, k, target in zip(marks, rec_at, targets):
        alone = tok(prompts.rec_input(evs[:k], ids, history_len=50, causal=True), add_special_tokens=False).input_ids
        assert src[:m + 1] == alone
        if target is not None:
            assert target == prompts.id_target(evs[k].item_id, "cid", ids)


def test_packed_targets_compute_what_each_target_alone_does(tiny):
    """Decoder states of the targets packed into one row (Collate's masks) equal those of each target
    decoded alone from its own inference input, with the same causal encoder."""
    ids, tok, model = tiny["ids"], tiny["tok"], tiny["model"]
    clicks, _ = _clicks(ids, 5)
    source, targets = prompts.rec_sequence(clicks, ids)
    ex = [Example("rec", source, targets)]
    data = tokenize_epoch(tok, ex, 512, 40, causal=True)
    (src, blocks), = data
    assert len(blocks) == 5
    batch = Collate(tok.pad_token_id, causal=True)(data)
    assert int(batch.pop("n_targets")) == 5
    with torch.no_grad():
        packed = t5_hidden(model, **batch, causal=True)                               # [1, 5 * L, D]
        at = 0
        for tgt, vis, soft in blocks:
            assert soft is None                                                       # no teacher
            alone_src = torch.tensor([src[:vis]])
            mask = torch.ones_like(alone_src)
            labels = torch.tensor([tgt])
            alone = t5_hidden(model, alone_src, mask, labels, causal=True)
            torch.testing.assert_close(packed[0, at:at + len(tgt)], alone[0], atol=1e-5, rtol=1e-4)
            at += len(tgt)
    # the loss runs on the packed batch and its gradient reaches the encoder
    loss = Seq2SeqLoss(model, LevelVocab(tok, ids), causal=True)(**batch)
    loss.backward()
    assert torch.isfinite(loss) and model.encoder.block[0].layer[0].SelfAttention.q.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_causal_builder_and_generation(tiny):
    """train.causal: rec examples are sequences (fewer examples, as many targets), the others keep their
    templates; GenSARModel decodes valid identifiers through the causal encoder."""
    events = user_events(tiny["inter"], tiny["queries"])
    ids, tok, model = tiny["ids"], tiny["tok"], tiny["model"]
    plain = ExampleBuilder(events, tiny["items"], ids, TrainConfig(history_len=3, tasks={"rec": 1.0}, causal=False))
    causal = ExampleBuilder(events, tiny["items"], ids, TrainConfig(history_len=3, tasks={"rec": 1.0}, causal=True))
    seqs = causal.epoch(0)
    n_targets = sum(1 for e in seqs for t in e.target if t is not None)
    assert n_targets == len(plain.epoch(0)) and len(seqs) < n_targets
    both = {"rec": 1.0, "search": 1.0}
    plain = ExampleBuilder(events, tiny["items"], ids, TrainConfig(history_len=3, tasks=both, causal=False))
    causal = ExampleBuilder(events, tiny["items"], ids, TrainConfig(history_len=3, tasks=both, causal=True))
    assert {t: len(p) for t, p in causal.pools.items() if t != "rec"} == \
        {t: len(p) for t, p in plain.pools.items() if t != "rec"}
    with pytest.raises(ValueError, match="history_twins"):
        ExampleBuilder(events, tiny["items"], ids, TrainConfig(history_twins="both"))
    cfg = TrainConfig(history_len=3, causal=True)
    gm = GenSARModel(model, tok, ids, cfg, beams=4)
    hist = [Event("rec", ids.item_ids[0], None, 0), Event("rec", ids.item_ids[1], None, 1)]
    src = gm.sources("rec", [hist])[0]
    assert src.endswith("<rec>") and tok.eos_token_id not in gm.encode_sources([src])["input_ids"][0].tolist()
    hits = gm.recommend(hist, k=3)
    assert len(hits) == 3 and all(i in ids for i, _ in hits)
    assert len(gm.search("desk lamp", hist, k=2)) == 2
    free, in_trie = gm.level_accuracy([src], "cid", [ids.item_ids[2]])
    assert len(free) == len(in_trie) == len(ids.cid_kinds)


def test_causal_export_serves_what_pytorch_ranks(tiny, tmp_path):
    """The ONNX export of a causal model (causal encoder graph, inputs without EOS) matches PyTorch:
    graph diffs within 1e-4 and the runtime's top items and scores equal GenSARModel's."""
    from gensar.export.onnx import write_export
    from gensar.serve.runtime import Runtime

    ids, tok, model = tiny["ids"], tiny["tok"], tiny["model"]
    gen = {"history_len": 3, "max_query_words": 16, "max_input_tokens": 48, "history_twins": "rec",
           "normalize": "level", "causal": True}
    meta = write_export(model, tok, tiny["ids_dir"], tiny["items"], tmp_path / "onnx", gen, {"data": "d", "identifiers": "i",
                                                                                        "model": "m"})
    assert max(meta["verification_max_abs_diff"].values()) < 1e-4
    rt = Runtime(tmp_path / "onnx", beams=6)
    gm = GenSARModel(model, tok, ids, TrainConfig(history_len=3, causal=True, max_input_tokens=48), beams=6)
    hist = [Event("rec", ids.item_ids[k], None, k) for k in (0, 3, 1)]
    ours = rt.recommend(hist, k=4)
    ref = gm.recommend(hist, k=4)
    assert [h.item_id for h in ours] == [i for i, _ in ref]
    assert all(abs(h.score - s) < 1e-3 for h, (_, s) in zip(ours, ref))
    ours = rt.search("desk lamp", hist, k=3)
    assert [h.item_id for h in ours] == [i for i, _ in gm.search("desk lamp", hist, k=3)]
    # a history too long for max_input_tokens loses the same oldest clicks in the runtime
    long = [Event("search", ids.item_ids[k], "desk lamp pen " * 8, k) for k in range(3)]
    fitted = prompts.search_input("red pen", long, ids, **rt.prompt_kw)
    assert fitted == gm.sources("search", [long], ["red pen"])[0] and fitted.count("<query>") < 3
    assert [h.item_id for h in rt.search("red pen", long, k=3)] == [i for i, _ in gm.search("red pen", long, k=3)]

