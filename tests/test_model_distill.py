"""Distillation from SASRec-CE (`train.distill`): the teacher's per-level code distributions multiply
back to its item distribution, reach each rec target of the causal sequences, and enter the loss."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gensar.config import load_params
from gensar.model import prompts
from gensar.model.distill import cid_teacher
from gensar.model.examples import ExampleBuilder, user_events
from gensar.model.levels import LevelVocab
from gensar.model.train import Collate, tokenize_epoch


def test_level_distributions_multiply_back_to_the_teachers_item_distribution(tiny_corpus, teacher_path):
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    teacher = cid_teacher(str(teacher_path), tok, ids)
    hist = ids.item_ids[3:6]
    p = teacher.probs([hist])[0].numpy()                                   # [N] in ids.item_ids order
    q = teacher.level_targets([hist] * len(ids), ids.item_ids).astype(np.float64)    # [N, depth, width]
    codes = teacher.codes.numpy()
    assert q.shape == (len(ids), len(ids.cid_kinds), teacher.width)
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=2e-3)
    chain = np.array([np.prod([q[i, t, codes[i, t]] for t in range(codes.shape[1])]) for i in range(len(ids))])
    np.testing.assert_allclose(chain, p, rtol=2e-2, atol=1e-5)
    assert p.max() > 5 * p.min()                                           # not a uniform teacher
    # level t puts mass only on codes that follow the target's true prefix
    for i in range(len(ids)):
        for t in range(codes.shape[1]):
            children = {int(codes[j, t]) for j in range(len(ids)) if (codes[j, :t] == codes[i, :t]).all()}
            assert set(np.nonzero(q[i, t] > 0)[0].tolist()) <= children


def test_each_rec_target_carries_the_teacher_rows_of_its_whole_history(tiny_corpus, teacher_path):
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    teacher = cid_teacher(str(teacher_path), tok, ids)
    events = user_events(tiny_corpus["inter"], tiny_corpus["queries"])
    user = max(events, key=lambda u: sum(e.split == "train" for e in events[u]))
    cfg = dataclasses.replace(load_params(None).train, history_len=1, causal=True)
    builder = ExampleBuilder({user: events[user]}, tiny_corpus["items"], ids, cfg, teacher=teacher)
    clicks = [c[0][1] for c in prompts.history_clicks([e for e in events[user] if e.split == "train"], "rec")]
    assert len(clicks) >= 3 and len(builder.pools["rec"]) == len(clicks)
    for a, (chunk, n_context, soft) in enumerate(builder.pools["rec"]):
        assert len(soft) == 1                                 # history_len 1: one target per chunk, clicks[a]
        expected = teacher.level_targets([clicks[:a]], [clicks[a]])     # its whole history, not the chunk's
        np.testing.assert_array_equal(soft, expected)
    # the rows travel with the example into the collated batch, at its identifier positions
    examples = [e for e in builder.epoch(0) if e.task == "rec"]
    data = tokenize_epoch(tok, examples, 128, 40, causal=True)
    batch = Collate(tok.pad_token_id, causal=True)([data[2]])
    depth = len(ids.cid_kinds)
    np.testing.assert_allclose(batch["soft"][0, :depth].numpy(), builder.pools["rec"][2][2][0].astype(np.float32))


def test_distill_loss_mixes_the_click_and_the_teacher(tiny_corpus):
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    levels = LevelVocab(tok, ids)
    torch.manual_seed(0)
    weight = torch.randn(len(tok), 8)
    labels = torch.as_tensor([tok.convert_tokens_to_ids(ids.cid_tokens(i)) for i in ids.item_ids[:3]])   # [3, depth]
    hidden = torch.randn(*labels.shape, 8)
    width = max(len(g) for g in levels.space["cid"])
    onehot = torch.zeros(*labels.shape, width).scatter_(2, torch.as_tensor(levels.local_of[labels.numpy()])[..., None], 1)
    plain = levels.loss(hidden, labels, weight)
    assert torch.allclose(levels.loss(hidden, labels, weight, soft=onehot, distill=0.7), plain)   # teacher = click
    uniform = torch.zeros_like(onehot)
    for t, toks in enumerate(levels.space["cid"]):
        uniform[:, t, :len(toks)] = 1 / len(toks)
    mixed = levels.loss(hidden, labels, weight, soft=uniform, distill=0.5)
    assert not torch.allclose(mixed, plain)
    assert torch.allclose(levels.loss(hidden, labels, weight, soft=uniform, distill=0.0), plain)
    # half the click, half the teacher: the mean of the two losses
    alone = levels.loss(hidden, labels, weight, soft=uniform, distill=1.0)
    assert torch.allclose(mixed, (plain + alone) / 2, atol=1e-6)
    # rows without a teacher keep the click's loss
    part = uniform.clone()
    part[1:] = 0
    rows = [levels.loss(hidden[i:i + 1], labels[i:i + 1], weight) for i in range(3)]
    first = levels.loss(hidden[:1], labels[:1], weight, soft=uniform[:1], distill=0.5)
    assert torch.allclose(levels.loss(hidden, labels, weight, soft=part, distill=0.5), (first + rows[1] + rows[2]) / 3,
                          atol=1e-6)


def test_stage_trains_with_a_teacher_and_says_when_it_is_missing(tiny_corpus, teacher_path, tmp_path):
    from gensar.stages.train import run

    params = load_params(None, {"model.size": "tiny", "model.vocab_size": 200, "train.epochs": 1,
                                         "train.batch_size": 16, "train.eval_users": 2, "train.eval_beams": 4,
                                         "train.device": "cpu", "train.distill": 0.5})
    args = (params, tiny_corpus["canonical"], tiny_corpus["ids_dir"], tmp_path / "t5", tmp_path / "m.json", None)
    with pytest.raises(FileNotFoundError, match="teacher"):
        run(*args)
    res = run(*args, teacher=teacher_path)
    assert res["steps"] > 0 and np.isfinite(res["train/loss"])
    # the same run without the teacher: the same steps, another loss
    plain = dataclasses.replace(params, train=dataclasses.replace(params.train, distill=0.0))
    base = run(plain, *args[1:3], tmp_path / "plain", tmp_path / "p.json", None)
    assert base["steps"] == res["steps"] and base["train/loss"] != pytest.approx(res["train/loss"], rel=1e-3)
