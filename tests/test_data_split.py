"""Leave-one-out splits and the no-leakage guarantee of histories."""
import pandas as pd
import pytest

from gensar.config import QueriesConfig
from gensar.data.queries import derive_events
from gensar.data.sources import read_source
from gensar.data.split import assign_splits, history
from gensar.data.synthetic import generate
from gensar.data.validate import validate_tables


def _paper_events(n_users=30, max_len=9):
    """Paper-mode twins: every click is a rec event and a search event at the same step."""
    rows = [(f"u{u}", f"i{(u * 7 + k) % 11}", k, k) for u in range(n_users) for k in range(2 + u % max_len)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "step"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(11)],
                          "categories": [[["Cat", f"Sub {i % 3}"]] for i in range(11)]})
    events, _, _ = derive_events(inter, items, QueriesConfig(mode="paper"))
    events["split"] = assign_splits(events)
    return events


def test_last_is_test_second_last_is_valid_per_user_and_behavior():
    ev = _paper_events()
    for (user, behavior), g in ev.groupby(["user_id", "behavior"]):
        g = g.sort_values("step")
        if len(g) < 3:
            assert (g.split == "train").all()
        else:
            assert list(g.split.iloc[-2:]) == ["valid", "test"] and (g.split.iloc[:-2] == "train").all()
    # twins share their split in paper mode
    both = ev.pivot_table(index=["user_id", "step"], columns="behavior", values="split", aggfunc="first")
    assert (both["rec"] == both["search"]).all()


@pytest.mark.parametrize("mode", ["paper", "split"])
def test_histories_never_leak_targets_or_twins(mode):
    ev = _paper_events() if mode == "paper" else None
    if ev is None:
        rows = [(f"u{u}", f"i{k % 11}", k, k) for u in range(20) for k in range(3 + u % 7)]
        inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "step"])
        items = pd.DataFrame({"item_id": [f"i{i}" for i in range(11)], "categories": [[["A", "B"]]] * 11})
        ev, _, _ = derive_events(inter, items, QueriesConfig(mode="split", search_prob=0.5))
        ev["split"] = assign_splits(ev)
    targets = ev[ev.split.isin(["valid", "test"])]
    assert len(targets) > 0
    for t in targets.itertuples():
        h = history(ev, t.user_id, t.step)
        assert (h.step < t.step).all()                    # neither the target nor its twin
        assert t.step not in set(h.step)
        train_h = history(ev, t.user_id, t.step, splits_allowed=("train",))
        assert (train_h.split == "train").all()
    # training targets with train-only histories never see a valid/test event
    for t in ev[ev.split == "train"].head(200).itertuples():
        h = history(ev, t.user_id, t.step, splits_allowed=("train",))
        assert not h.split.isin(["valid", "test"]).any() and (h.step < t.step).all()


def test_canonical_synthetic_tables_have_leak_free_valid_and_test_targets(tmp_path, params):
    generate(tmp_path / "syn", params.data.synthetic)
    tables = read_source(tmp_path / "syn", params.data, params.queries)
    canonical, _, _ = validate_tables(tables, params.validate)
    ev = canonical.interactions
    for t in ev[ev.split == "test"].itertuples():
        h = history(ev, t.user_id, t.step)
        assert len(h) and (h.step < t.step).all()
        # the valid target of the same behavior comes strictly before the test target
        v = ev[(ev.user_id == t.user_id) & (ev.behavior == t.behavior) & (ev.split == "valid")]
        assert (v.step < t.step).all()
