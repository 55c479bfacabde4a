"""benchmarks/path_scores.py: per-level conditionals that multiply back to item distributions."""
import random

import numpy as np
import pytest
import torch

from benchmarks.path_scores import (
    rank_metrics,
    sasrec_conditionals,
    t5_conditionals,
    trie_children,
)
from gensar.config import TrainConfig
from gensar.model.distill import prefix_groups
from gensar.model.generate import GenSARModel
from tests.conftest import random_events, tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tiny_world(tmp_path_factory.mktemp("paths"), n_items=60)
    gm = GenSARModel(w["model"], w["tokenizer"], w["ids"], TrainConfig(id_loss="level", causal=True))
    items = list(gm.ids.item_ids)
    tokens = np.array([gm.codes["cid"][i] for i in items])                 # [N, depth] token ids
    codes = gm.levels.local_of[tokens]
    groups = prefix_groups(codes)
    return gm, items, tokens, codes, groups


def test_sasrec_conditionals_multiply_back_to_the_item_probabilities(world):
    _, items, _, codes, groups = world
    p = torch.softmax(torch.randn(3, len(items), dtype=torch.float64) * 3, -1)
    rows = np.tile(np.arange(len(items)), (3, 1))
    cond = sasrec_conditionals(p, codes, groups, rows)                      # [3, N, depth]
    assert cond.shape == (3, len(items), codes.shape[1])
    assert torch.allclose(cond.sum(-1).exp(), p)
    assert (cond <= 1e-12).all()


def test_t5_in_trie_scores_are_a_distribution_over_items_and_decoded_scores_leak_mass(world):
    gm, items, tokens, codes, groups = world
    children = trie_children(codes, groups, [len(g) for g in gm.levels.space["cid"]])
    sources = gm.sources("rec", [random_events(random.Random(s), items, 6) for s in range(2)])
    rows = np.tile(np.arange(len(items)), (2, 1))                           # every item is a candidate
    decoded, in_trie = t5_conditionals(gm, sources, torch.as_tensor(tokens[rows]), codes, groups, children, rows)
    total = in_trie.double().sum(-1).exp().sum(1)                           # sum over items of p(item)
    assert torch.allclose(total, torch.ones(2, dtype=torch.float64), atol=1e-4)
    assert (decoded <= in_trie + 1e-6).all() and (decoded < in_trie - 1e-4).any()
    assert decoded.double().sum(-1).exp().sum(1).max() < 1                  # mass outside the trie is lost
    # the decoded conditionals are the beam's scores: the same as teacher forcing one path alone
    alone, _ = t5_conditionals(gm, sources[:1], torch.as_tensor(tokens[rows[:1, 5:6]]), codes, groups, children,
                               rows[:1, 5:6])
    assert torch.allclose(alone[0, 0], decoded[0, 5], atol=1e-5)


def test_rank_metrics_count_the_candidates_above_the_target():
    score = torch.tensor([[5.0, 1, 2, 3], [0.0] + list(range(1, 12))[:3]])   # target first: rank 1, rank 4
    r5, r10, n10 = rank_metrics(score)
    assert (r5, r10) == (1.0, 1.0)
    assert n10 == pytest.approx((1 + 1 / np.log2(5)) / 2)
    worse = torch.cat([torch.zeros(1, 1), torch.arange(1, 12, dtype=torch.float32)[None]], 1)   # 11 above
    assert rank_metrics(worse) == (0.0, 0.0, 0.0)
