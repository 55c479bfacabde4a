"""The training recipe of issue 14: click histories, identifier-aware loss and decoding, schedules,
the wall-clock budget, codebook-initialised code embeddings and the validation diagnostics."""
from __future__ import annotations

import itertools
import math
import time

import pandas as pd
import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from gensar.config import ModelConfig, TrainConfig
from gensar.model import prompts
from gensar.model.examples import Event, ExampleBuilder, eval_requests, user_events
from gensar.model.generate import GenSARModel
from gensar.model.levels import LevelVocab, Seq2SeqLoss, init_code_embeddings, t5_hidden
from gensar.model.prompts import IdentifierMap
from gensar.model.t5 import build_model
from gensar.model.train import Dist, cooldown, ema_update, fit, lr_multiplier, validate


def _model(tok, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(size="tiny", vocab_size=300, dropout=0.0), len(tok), tok.pad_token_id,
                       tok.eos_token_id)


# --------------------------------------------------------------------------------------------
def test_twin_events_are_one_click(tiny_corpus):
    """Paper mode: the rec and search twins of a click share a step; history_len counts clicks and
    each click is rendered once (its CID, its query + SID, or both by `twins`)."""
    ids = tiny_corpus["ids"]
    a, b, c = ids.item_ids[:3]
    hist = [Event("rec", a, None, 0), Event("search", a, "desk lamp", 0),
            Event("rec", b, None, 1), Event("search", b, "pen", 1), Event("rec", c, None, 2)]
    cid = {i: "".join(ids.cid_tokens(i)) for i in (a, b, c)}
    sid = {i: "".join(ids.sid_tokens(i)) for i in (a, b, c)}
    assert prompts.render_history(hist, ids, history_len=2) == f"<rec> {cid[b]} <rec> {cid[c]}"
    assert prompts.render_history(hist, ids, history_len=2, twins="search") == \
        f"<query> pen <click> {sid[b]} <rec> {cid[c]}"
    both = prompts.render_history(hist, ids, history_len=2, twins="both")
    assert both == f"<rec> {cid[b]} <query> pen <click> {sid[b]} <rec> {cid[c]}"
    assert len(prompts.history_clicks(hist)) == 3
    # API histories (no steps) are one click per event, whatever repeats
    api = [("rec", a, None), ("rec", a, None)]
    assert prompts.render_history(api, ids, history_len=5) == f"<rec> {cid[a]} <rec> {cid[a]}"
    with pytest.raises(ValueError, match="twins"):
        prompts.render_history(hist, ids, twins="neither")


def test_examples_show_history_len_clicks(tiny_corpus):
    """A training example's history has `history_len` clicks even though each click is two events."""
    events = user_events(tiny_corpus["inter"], tiny_corpus["queries"])
    cfg = TrainConfig(history_len=2, history_twins="rec", tasks={"rec": 1.0}, causal=False)
    builder = ExampleBuilder(events, tiny_corpus["items"], tiny_corpus["ids"], cfg)
    shown = [ex.source.count("<rec>") for ex in builder.epoch(0)]
    assert max(shown) == 2 and "<query>" not in "".join(ex.source for ex in builder.epoch(0))
    # evaluation requests render the same way: two twins at the target's step are never in the history
    req = eval_requests(events, "valid")[0]
    assert all(e.step < min(x.step for x in events[req.user_id] if x.split == "valid") for e in req.history)


def test_long_histories_lose_their_oldest_clicks(tiny_corpus):
    """An input over train.max_input_tokens loses its oldest clicks, never its end (the query, the final
    `<rec>`): at inference and in the training examples alike."""
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    items = ids.item_ids
    hist = [Event("search", items[k], f"desk lamp pen {k}", k) for k in range(8)]
    cfg = TrainConfig(history_len=8, max_input_tokens=48)
    gm = GenSARModel(_model(tok), tok, ids, cfg, beams=4)

    def n_tokens(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])   # a causal model's inputs carry no EOS
    unfitted = prompts.search_input("red pen", hist, ids, history_len=8, causal=True)
    assert n_tokens(unfitted) > 48                                        # right truncation would cut the query
    src = gm.sources("search", [hist], ["red pen"])[0]
    assert n_tokens(src) <= 48 and src.endswith("query: red pen search:")
    assert "desk lamp pen 7" in src and "desk lamp pen 0" not in src   # the newest clicks stay
    rec = gm.sources("rec", [hist])[0]
    assert n_tokens(rec) <= 48 and rec.endswith("<rec>") and "desk lamp pen 7" in rec
    # training examples: every history-reading input fits, ending as its template does
    events = user_events(tiny_corpus["inter"], tiny_corpus["queries"])
    small = TrainConfig(history_len=10, max_input_tokens=32, causal=False,
                        tasks={"rec": 1.0, "search": 1.0, "query": 1.0})
    builder = ExampleBuilder(events, tiny_corpus["items"], ids, small, gm.count)
    plain = ExampleBuilder(events, tiny_corpus["items"], ids, small)
    fitted, cut = builder.epoch(0), plain.epoch(0)
    assert sum(n_tokens(ex.source) + 1 > 32 for ex in cut) >= 10   # + EOS: a bidirectional model's input
    # each fits, or no click fits beside its template and query (it shows none; truncation remains)
    assert all(n_tokens(ex.source) + 1 <= 32 or " none " in ex.source for ex in fitted)
    assert sum("<rec>" in ex.source or "<query>" in ex.source for ex in fitted) > len(fitted) // 2
    assert all(ex.source.endswith(("recommend:", "search:", "query:")) for ex in fitted)


def test_level_loss_is_a_softmax_over_each_levels_codes(tiny_corpus):
    """Seq2SeqLoss(level) == cross-entropy computed by hand: identifier positions over their level's
    codes, text positions over the vocabulary, the EOS after an identifier not scored."""
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    model = _model(tok)
    levels = LevelVocab(tok, ids)
    item = ids.item_ids[0]
    sources = ["recommend: history: none recommend:", "describe: item describe:"]
    targets = [prompts.id_target(item, "cid", ids), "desk lamp"]
    enc = tok(sources, return_tensors="pt", padding=True)
    tgt = tok(targets, return_tensors="pt", padding=True)
    labels = tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)
    loss = Seq2SeqLoss(model, levels)(enc.input_ids, enc.attention_mask, labels)

    with torch.no_grad():
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).logits
    terms = []
    code_ids = tok.convert_tokens_to_ids(ids.cid_tokens(item))
    for t, token in enumerate(code_ids):                   # row 0: each code over its level's codes
        group = torch.as_tensor(levels.space["cid"][t])
        terms.append(-(logits[0, t, token] - torch.logsumexp(logits[0, t, group], 0)))
    assert labels[0, len(code_ids)] == tok.eos_token_id    # ... and its EOS is not scored
    for t in range(int((labels[1] >= 0).sum())):           # row 1: text over the whole vocabulary
        terms.append(-torch.log_softmax(logits[1, t], -1)[labels[1, t]])
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)
    # the full-vocabulary objective is HF's own loss
    full = Seq2SeqLoss(model)(enc.input_ids, enc.attention_mask, labels)
    assert torch.allclose(full, model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                      labels=labels).loss)
    assert t5_hidden(model, enc.input_ids, enc.attention_mask, labels).shape[:2] == labels.shape


def test_schedules():
    warm, total = 10, 100
    assert lr_multiplier("constant", 3, warm, total) == pytest.approx(0.4)
    assert lr_multiplier("constant", 99, warm, total) == 1.0
    assert lr_multiplier("inverse_sqrt", 9, warm, total) == 1.0
    assert lr_multiplier("inverse_sqrt", 39, warm, total) == pytest.approx(math.sqrt(10 / 40))
    assert lr_multiplier("cosine", 100, warm, total) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier("linear", 0, warm, total)
    # train.cooldown: constant until the last share of training, then linear to 0
    assert cooldown(0.5, 0.0) == 1.0 and cooldown(1.0, 0.0) == 1.0
    assert cooldown(0.79, 0.2) == 1.0
    assert cooldown(0.9, 0.2) == pytest.approx(0.5)
    assert cooldown(1.0, 0.2) == 0.0 and cooldown(1.3, 0.2) == 0.0


def _fit_cooldown(tiny_corpus, tmp_path, timer=time.perf_counter, **kw):
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    events = user_events(tiny_corpus["inter"], tiny_corpus["queries"])
    base = {"batch_size": 8, "eval_beams": 4, "device": "cpu", "id_loss": "level", "history_len": 3,
            "schedule": "constant", "lr": 4e-3, "warmup_steps": 0, "warmup_ratio": 0.0}
    cfg = TrainConfig(**{**base, **kw})
    builder = ExampleBuilder(events, tiny_corpus["items"], ids, cfg)
    make = lambda m: GenSARModel(m, tok, ids, cfg, beams=4)
    return cfg, fit(_model(tok), tok, builder, make, eval_requests(events, "valid")[:4], cfg, tmp_path / "ckpt",
                    None, "fp", Dist(), timer=timer)


def test_cooldown_anneals_the_rate_at_the_end_of_training(tiny_corpus, tmp_path):
    """train.cooldown over epochs: the first epoch of two runs at the full rate, the second decays it to 0
    at the last step; over a wall-clock budget it decays on training time."""
    cfg, summary = _fit_cooldown(tiny_corpus, tmp_path / "epochs", epochs=2, cooldown=0.5)
    assert [r["lr"] for r in summary["history"]] == [pytest.approx(cfg.lr), pytest.approx(0.0)]
    # the trainer's clock advances 0.05 s per reading, so a step "takes" 0.05 s however loaded the machine is
    ticks = itertools.count(0.0, 0.05)
    cfg, summary = _fit_cooldown(tiny_corpus, tmp_path / "budget", timer=lambda: next(ticks), epochs=50,
                                 cooldown=1.0, max_minutes=0.01)
    assert summary["out_of_time"] and summary["steps"] >= 3
    assert summary["history"][-1]["lr"] < 0.5 * cfg.lr          # the last steps ran near the end of the budget
    with pytest.raises(ValueError, match="cooldown"):
        _fit_cooldown(tiny_corpus, tmp_path / "bad", epochs=1, cooldown=0.5, schedule="cosine")


def test_ema_update_warms_up_to_its_decay():
    """The first update copies, the next ones weigh the new weights by 1 - min(decay, (1 + n) / (10 + n))."""
    net = torch.nn.Linear(1, 1, bias=False)
    averaged = AveragedModel(net, multi_avg_fn=ema_update(0.9), use_buffers=True)
    expected = 0.0
    for n in range(100):
        net.weight.data.fill_(float(n))
        averaged.update_parameters(net)
        d = min(0.9, (1 + n) / (10 + n))
        expected = float(n) if n == 0 else d * expected + (1 - d) * n
        if n == 1:
            assert expected == pytest.approx(9 / 11)                # early: mostly the new weights
    assert averaged.module.weight.item() == pytest.approx(expected, rel=1e-5)
    assert 90 < expected < 92                                       # late: about the last 10 steps (n - 9)


def test_ema_keeps_the_averaged_weights(tiny_corpus, tmp_path):
    """train.ema: the one validation row scores the moving average, so the model fit ends with is the
    average saved in last.pt, not the raw weights of the last step."""
    _, summary = _fit_cooldown(tiny_corpus, tmp_path / "ema", epochs=1, ema=0.5, eval_raw=True)
    row = summary["history"][-1]                                # the same row scores both weights
    assert {"valid/ndcg@10", "valid/raw/ndcg@10", "valid/raw/rec/ndcg@10"} <= set(row)
    state = torch.load(tmp_path / "ema/ckpt/last.pt", map_location="cpu", weights_only=False)
    kept = torch.load(tmp_path / "ema/ckpt/best.pt", map_location="cpu", weights_only=True)
    name = "shared.weight"
    average = state["ema"]["module." + name]
    assert summary["steps"] >= 2 and torch.equal(kept[name], average)
    assert not torch.allclose(average, state["model"][name])      # the average trails the last step's weights
    _fit_cooldown(tiny_corpus, tmp_path / "plain", epochs=1)
    assert torch.load(tmp_path / "plain/ckpt/last.pt", map_location="cpu", weights_only=False)["ema"] is None
    with pytest.raises(ValueError, match="train.ema"):
        _fit_cooldown(tiny_corpus, tmp_path / "bad", epochs=1, ema=1.0)
    with pytest.raises(ValueError, match="train.eval_raw"):
        _fit_cooldown(tiny_corpus, tmp_path / "bad", epochs=1, eval_raw=True)


def test_codebook_init_places_close_codes_close(tiny_corpus):
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    model = _model(tok)
    levels = LevelVocab(tok, ids)
    k = len(levels.space["sid"][0])
    codebook = torch.randn(k, 8)
    codebook[1] = codebook[0] + 1e-3                              # codes 0 and 1 nearly equal in the RQ-VAE
    before = model.get_input_embeddings().weight.detach().clone()
    done = init_code_embeddings(model, levels, {"h0": codebook.numpy(), "zz9": codebook.numpy()})
    w = model.get_input_embeddings().weight.detach()
    rows = torch.as_tensor(levels.space["sid"][0])
    assert done == ["h0"]
    assert torch.dist(w[rows[0]], w[rows[1]]) < 0.05 * torch.dist(w[rows[0]], w[rows[2]])
    assert w[rows].std() == pytest.approx(float(before.std()), rel=0.05)
    others = torch.ones(len(w), dtype=torch.bool)
    others[rows] = False
    assert torch.equal(w[others], before[others])                  # text and other levels untouched


def test_budget_ends_training_cleanly_with_diagnostics(tiny_corpus, tmp_path):
    """train.max_minutes stops inside the first epoch, validates, keeps the best weights and reports
    the per-level diagnostics; resuming the finished run does nothing more."""
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    events = user_events(tiny_corpus["inter"], tiny_corpus["queries"])
    cfg = TrainConfig(epochs=50, batch_size=4, eval_beams=4, device="cpu", id_loss="level", history_len=3,
                      max_minutes=0.002, schedule="constant", lr=5e-3, warmup_steps=2)
    builder = ExampleBuilder(events, tiny_corpus["items"], ids, cfg)
    valid = eval_requests(events, "valid")[:6]
    model = _model(tok)
    make = lambda m: GenSARModel(m, tok, ids, cfg, beams=4)
    summary = fit(model, tok, builder, make, valid, cfg, tmp_path / "ckpt", None, "fp", Dist())
    assert summary["out_of_time"] and summary["epochs_run"] == 1 and summary["steps"] >= 1
    assert summary["steps"] < builder.epoch_size() // 4             # stopped inside the epoch
    row = summary["history"][-1]
    for task in ("rec", "search"):
        assert 0.0 <= row[f"valid/{task}/first_code_in_beam"] <= 1.0
        assert all(0.0 <= row[f"valid/{task}/acc/l{t}"] <= 1.0 for t in range(5))
        assert row[f"valid/{task}/acc/l4"] == 1.0                  # the disambiguation code is always 0 here
    again = fit(_model(tok, seed=1), tok, builder, make, valid, cfg, tmp_path / "ckpt", None, "fp", Dist())
    assert again["steps"] == summary["steps"] and len(again["history"]) == len(summary["history"])


def test_validate_diagnostics_on_a_perfect_and_a_hopeless_target(tiny_corpus):
    """first_code_in_beam is 1 when the beam keeps every first code (beams >= items), and accuracy
    at depth t counts the model's argmax over the level's codes."""
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    events = user_events(tiny_corpus["inter"], tiny_corpus["queries"])
    cfg = TrainConfig(id_loss="level")
    gm = GenSARModel(_model(tok), tok, ids, cfg, beams=len(ids))
    out = validate(gm, eval_requests(events, "valid")[:4], beams=len(ids), show=False)
    assert out["rec/first_code_in_beam"] == 1.0 and out["search/first_code_in_beam"] == 1.0
    acc, _ = gm.level_accuracy(gm.sources("rec", [[]] * 3), "cid", ids.item_ids[:3])
    assert len(acc) == 5 and acc[4] == 1.0
    # over the trie's allowed codes: never below the free argmax, and a code with one allowed value is hit
    sources = gm.sources("rec", [[]] * len(ids))
    free, in_trie = gm.level_accuracy(sources, "cid", ids.item_ids)
    assert all(b >= a for a, b in zip(free, in_trie)) and in_trie[4] == 1.0
    only_child = [i for i in ids.item_ids if len(gm.tries["cid"].allowed_after(gm.codes["cid"][i][:3])) == 1]
    if only_child:
        assert gm.level_accuracy(gm.sources("rec", [[]] * len(only_child)), "cid", only_child)[1][3] == 1.0
    assert out["rec/acc_trie/l0"] >= out["rec/acc/l0"]


def test_a_constant_final_code_can_be_left_out(tiny_corpus):
    """drop_constant_codes: a disambiguation code that is 0 for every item is left out of the
    identifiers (tries, targets, level groups), and only then."""
    frame = pd.read_parquet(tiny_corpus["ids_dir"] / "identifiers.parquet")
    full = tiny_corpus["ids"]
    short = IdentifierMap(frame, full.meta, drop_constant_codes=True)
    assert short.dropped == ["sid", "cid"] and short.sid_kinds == full.sid_kinds[:-1]
    item = full.item_ids[0]
    assert short.sid_tokens(item) == full.sid_tokens(item)[:-1]
    assert short.space_groups("cid") == full.space_groups("cid")[:-1]
    gm = GenSARModel(_model(tiny_corpus["tok"]), tiny_corpus["tok"], short, TrainConfig(), beams=4)
    assert gm.tries["sid"].depth == 4 and len(gm.recommend([], k=3)) == 3
    collided = frame.copy()
    collided.loc[0, "cid"] = list(frame.loc[0, "cid"][:-1]) + [1]       # one item needs its final code
    kept = IdentifierMap(collided, full.meta, drop_constant_codes=True)
    assert kept.dropped == ["sid"] and len(kept.cid_tokens(item)) == 5


def test_minute_validations_keep_their_grid_across_epoch_rows():
    """eval_every_minutes: a validation is due when training time passes the next multiple of N
    minutes since the last row, whatever rows the epoch ends added in between."""
    from gensar.model.train import _crossed, _recent

    st = {"history": [], "train_seconds": 14.9 * 60}
    assert not _crossed(st, 15)
    st["train_seconds"] = 15.1 * 60
    assert _crossed(st, 15)
    st["history"] = [{"train_minutes": 9.2}]               # an epoch ended at 9.2 minutes
    assert _crossed(st, 15)                                # ... the 15-minute validation still comes
    st["history"].append({"train_minutes": 15.1})
    st["train_seconds"] = 29.0 * 60
    assert not _crossed(st, 15)
    st["train_seconds"] = 30.2 * 60
    assert _crossed(st, 15)
    st["history"].append({"train_minutes": 59.9})          # an epoch ended just before the 60-minute mark:
    st["train_seconds"] = 60.6 * 60
    assert not _crossed(st, 15)                            # ... the grid point is skipped,
    st["train_seconds"] = 75.1 * 60
    assert _crossed(st, 15)                                # ... and the next one comes on time
    st["history"].append({"train_minutes": 75.1})          # a grid validation just before an epoch ends:
    st["train_seconds"] = 75.4 * 60
    assert _recent(st, 15) and not _recent(st, 0)          # ... the epoch end is not validated again
    st["train_seconds"] = 80.0 * 60
    assert not _recent(st, 15)


def test_single_task_models_are_validated_on_their_task_only():
    from gensar.stages.train import validated_behaviors

    assert validated_behaviors({"rec": 1.0, "search": 1.0, "query": 0.3}) == {"rec", "search"}
    assert validated_behaviors({"rec": 1.0, "search": 0.0, "align": 0.3}) == {"rec"}
    assert validated_behaviors({"search": 1.0, "query": 0.3}) == {"search"}
    assert validated_behaviors({"align": 1.0}) == {"rec", "search"}
