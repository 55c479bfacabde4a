"""Identifier assignment: Sinkhorn re-assignment, disambiguation, incremental stability."""
import numpy as np

from gensar.ids.assign import assign_identifiers, assign_incremental, collision_stats, greedy_round, sinkhorn


def test_sinkhorn_plan_has_uniform_marginals():
    rng = np.random.default_rng(0)
    plan = sinkhorn(rng.random((4, 10)), epsilon=0.05, iters=200)
    assert np.allclose(plan.sum(1), 1 / 4, atol=1e-3) and np.allclose(plan.sum(0), 1 / 10, atol=1e-3)


def test_greedy_round_gives_distinct_codes():
    plan = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]])
    assert greedy_round(plan).tolist() == [0, 1]


def test_collisions_resolved_on_last_level_only():
    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(8, 4))
    codes = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 5], [0, 0, 0]])
    residual = rng.normal(size=(5, 4))
    ids, stats = assign_identifiers(codes, residual, codebook, epsilon=0.01, iters=50)
    assert stats["before"]["collision_rate"] == 1 - 3 / 5
    assert collision_stats(ids)["collision_rate"] == 0.0
    assert (ids[:, :2] == codes[:, :2]).all()           # prefixes (e.g. shared codes) never change
    assert ids[3, 2] == 5 and ids[4].tolist() == [0, 0, 0, 0]   # unique items keep their code, d = 0
    assert len({ids[i, 2] for i in range(4)}) == 4      # colliders moved to free codes, not onto item 3
    assert (ids[:, -1] == 0).all()                      # Sinkhorn alone sufficed: no disambiguation


def test_disambiguation_when_codes_run_out():
    codebook = np.eye(2)
    codes = np.zeros((5, 2), dtype=np.int64)            # 5 items, one prefix, only 2 last-level codes
    ids, stats = assign_identifiers(codes, np.zeros((5, 2)), codebook)
    assert collision_stats(ids)["collision_rate"] == 0.0
    assert stats["after_sinkhorn"]["collision_rate"] > 0 and ids[:, -1].max() >= 1
    assert ids.shape == (5, 3)                          # fixed length: disambiguation always present


def test_incremental_keeps_old_and_makes_new_unique():
    old = np.array([[1, 2, 0], [1, 3, 0], [1, 3, 1]])
    new_codes = np.array([[1, 3], [1, 3], [4, 4], [1, 2]])
    new = assign_incremental(old, new_codes)
    assert new[:, :2].tolist() == new_codes.tolist()     # base codes straight from the RQ-VAE
    both = np.concatenate([old, new])
    assert collision_stats(both)["collision_rate"] == 0.0
    assert new[:, -1].tolist() == [2, 3, 0, 1]
