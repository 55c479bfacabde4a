import re

import pandas as pd

from gensar.config import QueriesConfig
from gensar.data.queries import derive_events, query_from_path, query_id


def _items():
    return pd.DataFrame({"item_id": ["a", "b", "c"],
                         "categories": [[["Beauty", "Skin Care", "Face"], ["Beauty", "Bath & Body"]],
                                        [["Beauty", "Skin Care", "Skin"]],
                                        [["Beauty"]]]})  # one level only: no query


def _inter():
    return pd.DataFrame({"user_id": ["u"] * 4 + ["v"] * 2, "item_id": ["a", "b", "c", "a", "b", "a"],
                         "timestamp": [0, 1, 2, 3, 0, 1], "step": [0, 1, 2, 3, 0, 1]})


def test_query_from_path_lowercases_and_drops_stop_and_repeated_words():
    assert query_from_path(["Beauty", "Skin Care", "Care for the Skin"]) == "beauty skin care"
    assert query_from_path(["Bath & Body", "Body Wash"]) == "bath body wash"
    qid = query_id("beauty skin care")
    assert qid == query_id("beauty skin care") and re.fullmatch(r"q[0-9a-f]{16}", qid)
    assert qid != query_id("beauty skin")


def test_paper_mode_makes_twins_and_rec_only_items():
    events, queries, summary = derive_events(_inter(), _items(), QueriesConfig(mode="paper"))
    assert set(queries["text"]) == {"beauty skin care face", "beauty bath body", "beauty skin care"}
    rec, search = events[events.behavior == "rec"], events[events.behavior == "search"]
    assert len(rec) == 6 and rec["query_id"].isna().all()
    # every interaction with an item that has a query has a search twin with the same step and item
    assert len(search) == 5 and (search["item_id"] != "c").all()
    twins = search.merge(rec, on=["user_id", "step"], suffixes=("_s", "_r"))
    assert (twins["item_id_s"] == twins["item_id_r"]).all() and len(twins) == 5
    assert set(search["query_id"]) <= set(queries["query_id"])
    assert summary["items_without_query"] == 1 and summary["interactions_rec_only"] == 1
    again, _, _ = derive_events(_inter(), _items(), QueriesConfig(mode="paper"))
    pd.testing.assert_frame_equal(events, again)  # deterministic


def test_split_mode_is_one_event_per_interaction_with_seeded_share():
    n = 2000
    inter = pd.DataFrame({"user_id": [f"u{i % 50}" for i in range(n)], "item_id": "a",
                          "timestamp": range(n), "step": [i // 50 for i in range(n)]})
    events, _, _ = derive_events(inter, _items(), QueriesConfig(mode="split", search_prob=0.3, seed=1))
    assert len(events) == n
    share = (events.behavior == "search").mean()
    assert 0.26 < share < 0.34
    assert events.loc[events.behavior == "search", "query_id"].notna().all()
    other, _, _ = derive_events(inter, _items(), QueriesConfig(mode="split", search_prob=0.3, seed=2))
    assert not other["behavior"].equals(events["behavior"])  # the seed matters
