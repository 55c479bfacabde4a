"""Item tokens (`train.item_tokens`): a history entry also shows the item's own input token, its
embedding started from SASRec-CE's item vector; targets, the causal prefix rule, the export and the
onnxruntime runtime all follow the identifier map's setting."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gensar.config import ModelConfig, load_params
from gensar.ids.sasrec import load_sasrec
from gensar.model import prompts
from gensar.model.examples import Event, eval_requests, user_events
from gensar.model.levels import LevelVocab, first_code_logp, init_item_embeddings, t5_hidden
from gensar.model.prompts import IdentifierMap
from gensar.model.t5 import build_model
from gensar.model.tokenizer import check_single_tokens, train_tokenizer
from gensar.model.train import Collate, validate


@pytest.fixture(scope="module")
def with_items(tiny_corpus):
    """The tiny corpus' identifier map with item tokens, and a tokenizer that has them."""
    frame = pd.read_parquet(tiny_corpus["ids_dir"] / "identifiers.parquet")
    ids = IdentifierMap(frame, tiny_corpus["ids"].meta, item_tokens=True)
    texts = tiny_corpus["items"]["text"].tolist() + tiny_corpus["queries"]["text"].tolist()
    tok = train_tokenizer(texts, ids.tokens() + ids.all_item_tokens(), vocab_size=300)
    return ids, tok


def test_history_entries_show_the_item_token_after_the_identifier(tiny_corpus, with_items):
    ids, tok = with_items
    plain = tiny_corpus["ids"]
    a, b = ids.item_ids[:2]
    hist = [Event("rec", a, None, 0), Event("search", b, "desk lamp", 1)]
    cid, sid = "".join(ids.cid_tokens(a)), "".join(ids.sid_tokens(b))
    assert prompts.render_history(hist, ids, twins="rec") == \
        f"<rec> {cid} <item_{a}> <query> desk lamp <click> {sid} <item_{b}>"
    assert prompts.render_history(hist, plain) == f"<rec> {cid} <query> desk lamp <click> {sid}"   # off: as before
    # targets stay identifiers; every item token is one token of the tokenizer, apart from the codes
    assert prompts.id_target(a, "cid", ids) == prompts.id_target(a, "cid", plain) == cid
    item_ids = check_single_tokens(tok, ids.all_item_tokens())
    assert len(set(item_ids)) == len(ids) and not set(item_ids) & set(check_single_tokens(tok, ids.tokens()))
    assert plain.all_item_tokens() == []
    # the causal rule holds with them: the inference input of a history is the training sequence's prefix
    clicks = prompts.history_clicks([Event("rec", i, None, s) for s, i in enumerate(ids.item_ids[:4])])
    source, targets = prompts.rec_sequence(clicks, ids)
    assert len(targets) == 4 and all("<item_" not in t for t in targets)
    for k in range(1, 4):
        prefix = prompts.rec_input([c[0] for c in clicks[:k]], ids, causal=True)
        assert source.startswith(prefix) and prefix.count("<item_") == k
    with pytest.raises(KeyError, match="no identifier"):
        ids.item_token("no-such-item")


def test_without_history_codes_the_item_token_stands_alone(tiny_corpus, with_items):
    """`train.history_codes: false`: a click shows its behavior and its item token, not its identifier;
    the causal prefix rule still holds and targets stay identifiers."""
    frame = pd.read_parquet(tiny_corpus["ids_dir"] / "identifiers.parquet")
    ids = IdentifierMap(frame, tiny_corpus["ids"].meta, item_tokens=True, history_codes=False)
    tok = with_items[1]
    a, b = ids.item_ids[:2]
    hist = [Event("rec", a, None, 0), Event("search", b, "desk lamp", 1)]
    assert prompts.render_history(hist, ids) == f"<rec> <item_{a}> <query> desk lamp <click> <item_{b}>"
    long = prompts.render_history(hist, with_items[0])
    assert len(tok(long)["input_ids"]) - len(tok(prompts.render_history(hist, ids))["input_ids"]) == 10   # 2 x 5 codes
    clicks = prompts.history_clicks([Event("rec", i, None, s) for s, i in enumerate(ids.item_ids[:4])])
    source, targets = prompts.rec_sequence(clicks, ids)
    assert targets[1] == "".join(ids.cid_tokens(ids.item_ids[1])) and "<h0_" not in source
    for k in range(1, 4):
        assert source.startswith(prompts.rec_input([c[0] for c in clicks[:k]], ids, causal=True))
    with pytest.raises(ValueError, match="history_codes false needs train.item_tokens"):
        IdentifierMap(frame, tiny_corpus["ids"].meta, history_codes=False)


def test_item_ids_that_cannot_be_tokens_are_refused(tiny_corpus):
    frame = pd.read_parquet(tiny_corpus["ids_dir"] / "identifiers.parquet")
    frame.loc[3, "item_id"] = "two words"
    IdentifierMap(frame, tiny_corpus["ids"].meta)                          # fine without item tokens
    with pytest.raises(ValueError, match="1 item ids cannot be item tokens.*two words"):
        IdentifierMap(frame, tiny_corpus["ids"].meta, item_tokens=True)


def test_item_embeddings_start_from_the_sasrec_vectors(with_items):
    ids, tok = with_items
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="tiny", vocab_size=300), len(tok), tok.pad_token_id, tok.eos_token_id)
    rng = np.random.default_rng(0)
    vectors = {i: rng.standard_normal(16).astype(np.float32) for i in ids.item_ids[1:]}   # item 0: no vector
    a, b, c = ids.item_ids[1:4]
    vectors[b] = vectors[a] + 1e-3                                   # a and b nearly equal for SASRec-CE
    before = model.get_input_embeddings().weight.detach().clone()
    assert init_item_embeddings(model, tok, ids, vectors) == len(ids) - 1
    w = model.get_input_embeddings().weight.detach()
    row = dict(zip(ids.item_ids, check_single_tokens(tok, ids.all_item_tokens())))
    assert torch.dist(w[row[a]], w[row[b]]) < 0.05 * torch.dist(w[row[a]], w[row[c]])
    set_rows = [row[i] for i in ids.item_ids[1:]]
    assert w[set_rows].std() == pytest.approx(float(before.std()), rel=0.05)
    others = torch.ones(len(w), dtype=torch.bool)
    others[set_rows] = False
    assert torch.equal(w[others], before[others])                    # codes, text and item 0 untouched


def test_rec_first_items_scores_a_cids_first_code_as_the_mass_of_its_items(tiny_corpus, with_items):
    """`train.rec_first: items`: a CID target's first position is a softmax over the item rows (loss: the
    clicked item), its first code the summed probability of the items under it; SID targets and the
    lower CID levels keep their level softmax."""
    ids, tok = with_items
    levels = LevelVocab(tok, ids, first_items=True)
    with pytest.raises(ValueError, match="rec_first: items .* needs train.item_tokens"):
        LevelVocab(tok, tiny_corpus["ids"], first_items=True)                   # a map without item tokens
    a, b = ids.item_ids[3], ids.item_ids[5]
    cid = check_single_tokens(tok, ids.cid_tokens(a)) + [tok.eos_token_id]
    sid = check_single_tokens(tok, ids.sid_tokens(b)) + [tok.eos_token_id]
    batch = Collate(tok.pad_token_id, levels=levels)([([5, 6], [(cid, 2, None)]), ([5, 6], [(sid, 2, None)])])
    items = batch["items"]
    assert items[0, 0] == 3 and (items[0, 1:] == -1).all() and (items[1] == -1).all()   # the CID's item, once
    torch.manual_seed(0)
    weight = torch.randn(len(tok), 8)
    hidden = torch.randn(2, len(cid), 8)
    labels = batch["labels"]
    # p(c_0): the item softmax summed under each first code, a distribution over the codes
    logp = levels.first_logp(hidden[:, 0], weight)                                  # [2, K]
    assert torch.allclose(torch.logsumexp(logp, -1), torch.zeros(2), atol=1e-5)
    p_items = torch.softmax(hidden[0, 0] @ weight[torch.as_tensor(levels.item_tokens)].T, -1)
    code = levels.item_first[3]
    assert torch.isclose(logp[0, code].exp(), p_items[torch.as_tensor(levels.item_first == code)].sum(), atol=1e-6)
    # the loss: the clicked item over the item rows at the CID's first position, level codes elsewhere
    plain = levels.loss(hidden, labels, weight)
    group0 = torch.as_tensor(levels.space["cid"][0])
    code_ce = torch.nn.functional.cross_entropy(hidden[0, 0] @ weight[group0].T, torch.tensor(int(code)))
    item_ce = -torch.log(p_items[3])
    n = (labels >= 0).sum() - 2                                                      # the EOS after each identifier
    assert torch.allclose(levels.loss(hidden, labels, weight, items=items), plain + (item_ce - code_ce) / n, atol=1e-5)
    # a teacher's first-code distribution is matched by the marginals
    soft = torch.zeros(2, len(cid), 256)
    soft[0, 0, code] = 1.0
    taught = levels.loss(hidden, labels, weight, soft=soft, distill=1.0, items=items)
    assert torch.allclose(taught, plain + (-logp[0, code] - code_ce) / n, atol=1e-5)


def test_first_code_marginals_stay_finite_far_below_the_best_item():
    """A code whose items all sit 200 nats below the best item keeps a finite log-mass and gradient (a plain
    exp would underflow to log 0 and 0/0); codes without items are -inf and pass no NaN back."""
    logits = torch.tensor([[0.0, -200.0, -201.0, 3.0]], requires_grad=True)       # items -> codes 0, 1, 1, 0
    first = torch.tensor([0, 1, 1, 0])
    logp = first_code_logp(logits, first, 3)                                       # code 2: no item
    lse = torch.logsumexp(logits, -1)
    assert torch.allclose(logp[0, 1], torch.logsumexp(logits[0, 1:3], 0) - lse)
    assert torch.isfinite(logp[0, :2]).all() and logp[0, 2] == float("-inf")
    (-logp[0, 1].clamp(min=-1e4)).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 1] < 0


def test_one_identifier_for_both_tasks_decodes_both_from_the_item_rows(tiny_corpus, with_items):
    """With `ids.mode` semantic / collaborative a search target is the same identifier as a rec target, so
    `rec_first: items` trains it from the item rows: decoding either space must read them too."""
    ids, tok = with_items
    assert ids.cid_spaces() == ("cid",)                                  # gensar: SID and CID differ below h1
    frame = pd.read_parquet(tiny_corpus["ids_dir"] / "identifiers.parquet")
    frame["cid"] = frame["sid"]
    one = IdentifierMap(frame, {**ids.meta, "cid_kinds": ids.meta["sid_kinds"]}, item_tokens=True)
    assert one.cid_spaces() == ("sid", "cid")
    levels = LevelVocab(tok, one, first_items=True)
    assert levels.item_spaces == ("sid", "cid") and levels.item_label(check_single_tokens(tok, one.sid_tokens(one.item_ids[2]))) == 2


@pytest.mark.parametrize("history_codes,rec_first", [(True, "codes"), (False, "codes"), (False, "items")])
def test_stage_export_and_runtime_follow_the_item_tokens(tiny_corpus, teacher_path, tmp_path, history_codes,
                                                         rec_first):
    """`train.item_tokens: sasrec` end to end: the stage starts the rows from the teacher, needs it,
    and the exported runtime renders item tokens (with or without the history's codes,
    `train.history_codes`) and scores a CID's first code (`train.rec_first`) as the PyTorch model does
    (same top items, same scores)."""
    from gensar.model.generate import GenSARModel
    from gensar.serve.runtime import Runtime
    from gensar.stages.export import run as export
    from gensar.stages.train import run as train

    params = load_params(None, {"model.size": "tiny", "model.vocab_size": 200, "train.epochs": 1,
                                "train.batch_size": 16, "train.eval_users": 2, "train.eval_beams": 4,
                                "train.device": "cpu", "train.distill": 0.0, "train.item_tokens": "sasrec",
                                "train.history_codes": history_codes, "train.rec_first": rec_first})
    args = (params, tiny_corpus["canonical"], tiny_corpus["ids_dir"], tmp_path / "t5", tmp_path / "m.json")
    with pytest.raises(FileNotFoundError, match="item_tokens = sasrec"):
        train(*args)
    res = train(*args, teacher=teacher_path)
    assert res["steps"] > 0 and np.isfinite(res["train/loss"])
    gm = GenSARModel.load(tmp_path / "t5", beams=8)
    assert gm.ids.item_tokens and gm.ids.history_codes == history_codes   # the saved training config says so
    # the item rows moved one epoch away from SASRec-CE's projected vectors: still its neighbourhoods
    net, sas_items = load_sasrec(teacher_path)
    vec = dict(zip(sas_items, net.item_embeddings()))
    rows = gm.model.get_input_embeddings().weight.detach()[check_single_tokens(gm.tokenizer, gm.ids.all_item_tokens())]
    sas = torch.as_tensor(np.stack([vec[i] for i in gm.ids.item_ids]))
    cos = torch.nn.functional.cosine_similarity
    sim_t5 = cos(rows[:, None], rows[None], dim=-1)
    sim_sas = cos(sas[:, None], sas[None], dim=-1)
    off = ~torch.eye(len(rows), dtype=torch.bool)
    assert np.corrcoef(sim_t5[off].numpy(), sim_sas[off].numpy())[0, 1] > 0.5
    # export + runtime: the same sources (with item tokens) and the same answers as PyTorch
    export(params, model=tmp_path / "t5", ids=tiny_corpus["ids_dir"], canonical=tiny_corpus["canonical"],
           out=tmp_path / "onnx")
    rt = Runtime.load(tmp_path / "onnx", beams=8)
    assert rt.ids.item_tokens and rt.ids.history_codes == history_codes
    events = user_events(tiny_corpus["inter"], tiny_corpus["queries"])
    reqs = [r for r in eval_requests(events, "test") if r.history][:6]
    histories = [r.history for r in reqs]
    sources = gm.sources("rec", histories)
    assert all("<item_" in s and ("<h0_" in s) == history_codes for s in sources)
    assert (rt.first_items is not None) == (rec_first == "items") and gm.cfg.rec_first == rec_first
    got = rt.recommend_batch(histories, 5)
    want = gm.recommend_batch(histories, 5)
    assert [[h.item_id for h in g] for g in got] == [[w[0] for w in ws] for ws in want]
    assert max(abs(h.score - w[1]) for g, ws in zip(got, want) for h, w in zip(g, ws)) < 1e-4
    if rec_first == "items":
        # the first code's teacher-forced accuracy reads the same marginals; its argmax is the code with most mass
        free, in_trie = gm.level_accuracy(sources, "cid", [r.target for r in reqs])
        assert all(0 <= f <= t <= 1 for f, t in zip(free, in_trie))
        # the item head alone ranks the items by the first position's item softmax (whatever the CID)
        head = gm.first_item_ranking(sources, 4)
        labels = torch.tensor([gm.codes["cid"][r.target] for r in reqs])
        enc = gm.encode_sources(sources)
        with torch.no_grad():
            h0 = t5_hidden(gm.model, enc["input_ids"], enc["attention_mask"], labels, causal=gm.cfg.causal)[:, 0]
            logits = h0 @ gm.model.lm_head.weight[torch.as_tensor(gm.levels.item_tokens)].T
        assert head == [[gm.ids.item_ids[j] for j in row] for row in logits.topk(4, -1).indices.tolist()]
        out = validate(gm, reqs, k=5, beams=8, show=False)
        assert 0 <= out["rec/items/recall@5"] <= 1 and "rec/items/ndcg@5" in out
