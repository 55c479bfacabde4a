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
    for a, (chunk, n_context, soft, paths) in enumerate(builder.pools["rec"]):
        assert len(soft) == 1 and paths is None   # train.distill_paths 0                                 # history_len 1: one target per chunk, clicks[a]
        expected = teacher.level_targets([clicks[:a]], [clicks[a]])     # its whole history, not the chunk's
        np.testing.assert_array_equal(soft, expected)
    # the rows travel with the example into the collated batch, at its identifier positions
    examples = [e for e in builder.epoch(0) if e.task == "rec"]
    data = tokenize_epoch(tok, examples, 128, 40, causal=True)
    batch = Collate(tok.pad_token_id, causal=True)([data[2]])
    depth = len(ids.cid_kinds)
    np.testing.assert_allclose(batch["soft"][0, :depth].numpy(), builder.pools["rec"][2][2][0].astype(np.float32))


def test_drawn_paths_are_other_items_with_the_teachers_rows_along_their_own_codes(tiny_corpus, teacher_path):
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    teacher = cid_teacher(str(teacher_path), tok, ids)
    hist = ids.item_ids[3:6]
    targets = ids.item_ids[:8]
    soft, drawn = teacher.teach([hist] * len(targets), targets, paths=3, seed=1)
    depth, codes = len(ids.cid_kinds), teacher.codes.numpy()
    assert soft.shape == (len(targets), 4, depth, teacher.width) and len(drawn) == len(targets)
    np.testing.assert_array_equal(soft[:, 0], teacher.level_targets([hist] * len(targets), targets))
    p = teacher.probs([hist])[0].numpy()
    row = {item: i for i, item in enumerate(ids.item_ids)}
    for i, (target, items) in enumerate(zip(targets, drawn)):
        assert len(set(items)) == 3 and target not in items           # other items, without replacement
        for k, item in enumerate(items, start=1):                     # the rows of the drawn item's own path
            j = row[item]
            chain = np.prod([float(soft[i, k, t, codes[j, t]]) for t in range(depth)])
            assert chain == pytest.approx(p[j], rel=2e-2, abs=1e-5)
    # seeded: the same draw again, another seed another draw
    assert teacher.teach([hist] * len(targets), targets, paths=3, seed=1)[1] == drawn
    assert teacher.teach([hist] * len(targets), targets, paths=3, seed=2)[1] != drawn
    # the teacher's likely items are drawn more often than its unlikely ones
    many = teacher.teach([hist] * 400, [targets[0]] * 400, paths=1, seed=0)[1]
    counts = np.bincount([row[x[0]] for x in many], minlength=len(ids))
    likely, unlikely = np.argsort(-p)[:3], np.argsort(p)[:len(ids) // 2]
    assert counts[[j for j in likely if ids.item_ids[j] != targets[0]]].mean() > counts[unlikely].mean()


def test_drawn_paths_travel_as_extra_blocks_that_read_what_their_target_reads(tiny_corpus, teacher_path):
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    teacher = cid_teacher(str(teacher_path), tok, ids)
    events = user_events(tiny_corpus["inter"], tiny_corpus["queries"])
    user = max(events, key=lambda u: sum(e.split == "train" for e in events[u]))
    base = dataclasses.replace(load_params(None).train, history_len=3, causal=True)
    plain = ExampleBuilder({user: events[user]}, tiny_corpus["items"], ids, base, teacher=teacher)
    drawn = ExampleBuilder({user: events[user]}, tiny_corpus["items"], ids,
                           dataclasses.replace(base, distill_paths=2), teacher=teacher)
    one = [e for e in plain.epoch(0) if e.task == "rec"]
    two = [e for e in drawn.epoch(0) if e.task == "rec"]
    a = tokenize_epoch(tok, one, 128, 40, causal=True)
    b = tokenize_epoch(tok, two, 128, 40, causal=True)
    assert [s for s, _ in a] == [s for s, _ in b]                      # the same sources
    for (_, blocks), (_, more), example in zip(a, b, two):
        assert len(more) == 3 * len(blocks)
        for j, (codes, visible, soft) in enumerate(blocks):
            assert more[3 * j][0] == codes and more[3 * j][1] == visible   # the target first, as without paths
            np.testing.assert_array_equal(more[3 * j][2], soft)
            for k in (1, 2):
                extra_codes, extra_visible, rows = more[3 * j + k]
                item = example.paths[0][j][k - 1]
                assert extra_visible == visible and extra_codes != codes
                assert extra_codes == tok(item, add_special_tokens=False).input_ids
                np.testing.assert_array_equal(rows, example.paths[1][j][k - 1])
    batch = Collate(tok.pad_token_id, causal=True)([b[0]])
    depth = len(ids.cid_kinds)
    np.testing.assert_allclose(batch["soft"][0, depth:2 * depth].numpy(), b[0][1][1][2].astype(np.float32))


def test_a_share_of_the_targets_shows_its_drawn_paths_a_new_draw_each_epoch(tiny_corpus, teacher_path):
    tok, ids = tiny_corpus["tok"], tiny_corpus["ids"]
    teacher = cid_teacher(str(teacher_path), tok, ids)
    events = user_events(tiny_corpus["inter"], tiny_corpus["queries"])
    base = dataclasses.replace(load_params(None).train, history_len=3, causal=True, distill_paths=1)
    every = ExampleBuilder(events, tiny_corpus["items"], ids, base, teacher=teacher)
    half = ExampleBuilder(events, tiny_corpus["items"], ids, dataclasses.replace(base, distill_share=0.5),
                          teacher=teacher)

    def shown(builder, epoch):    # [rec targets] whether each shows its drawn path, and the examples
        rec = sorted((e for e in builder.epoch(epoch) if e.task == "rec"), key=lambda e: e.source)
        return np.array([len(row) > 0 for e in rec for row in e.paths[0]]), rec

    full, _ = shown(every, 0)
    assert full.all() and len(full) > 40
    first, rec = shown(half, 0)
    assert 0.3 < first.mean() < 0.7                                    # about half of the targets
    again, _ = shown(half, 0)
    later, _ = shown(half, 1)
    np.testing.assert_array_equal(first, again)                        # seeded by (seed, epoch)
    assert (first != later).any()                                      # another draw the next epoch
    blocks = tokenize_epoch(tok, rec, 128, 40, causal=True)
    assert sum(len(b) for _, b in blocks) == len(first) + first.sum()  # a target, plus its path when shown
    with pytest.raises(ValueError, match="distill_share must be in"):
        ExampleBuilder(events, tiny_corpus["items"], ids, dataclasses.replace(base, distill_share=0.0),
                       teacher=teacher)


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
    no_teacher = dataclasses.replace(params, train=dataclasses.replace(params.train, distill=0.0, distill_paths=1))
    with pytest.raises(ValueError, match="distill_paths = 1 needs train.distill"):
        run(no_teacher, *args[1:], teacher=teacher_path)
    assert res["steps"] > 0 and np.isfinite(res["train/loss"])
    # the same run without the teacher: the same steps, another loss
    plain = dataclasses.replace(params, train=dataclasses.replace(params.train, distill=0.0))
    base = run(plain, *args[1:3], tmp_path / "plain", tmp_path / "p.json", None)
    assert base["steps"] == res["steps"] and base["train/loss"] != pytest.approx(res["train/loss"], rel=1e-3)
    # drawn paths: the same steps (they ride in the rec sequences' decoder rows), another loss
    drawn = dataclasses.replace(params, train=dataclasses.replace(params.train, distill_paths=1))
    more = run(drawn, *args[1:3], tmp_path / "drawn", tmp_path / "d.json", None, teacher=teacher_path)
    assert more["steps"] == res["steps"] and np.isfinite(more["train/loss"])
    assert more["train/loss"] != pytest.approx(res["train/loss"], rel=1e-3)
