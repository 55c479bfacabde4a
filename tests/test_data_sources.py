import dataclasses
import json

import pandas as pd
import pytest
from conftest import small_log, write_lines, write_log, write_shared

from gensar.config import DataConfig, QueriesConfig
from gensar.data.sources import detect_format, k_core, read_source

D, Q = DataConfig(k_core=2), QueriesConfig(mode="paper")


def test_shared_format_positions_twins_and_clean_text(tmp_path):
    items = {"0": {"title": "AT&amp;T <i>Phone</i>", "categories": [["Office", "Phones"]],
                   "description": "", "brand": ""},
             "1": {"title": "Pen", "categories": [["Office"]]}}  # no brand/description, no query
    write_shared(tmp_path / "s", "toy", {"u1": [0, 1, 0], "u2": [1, 0]}, items)
    t = read_source(tmp_path / "s", D, Q)
    assert t.info["format"] == "shared"
    assert t.items.set_index("item_id").loc["0", "title"] == "AT&T Phone"
    u1 = t.interactions[t.interactions.user_id == "u1"]
    assert list(u1.step) == [0, 0, 1, 2, 2] and list(u1.timestamp) == [0, 0, 1, 2, 2]
    assert list(u1.behavior) == ["rec", "search", "rec", "rec", "search"]  # item 1 has no query
    assert list(t.queries.text) == ["office phones"]


AMAZON_2014_REVIEWS = [
    json.dumps({"reviewerID": u, "asin": a, "unixReviewTime": t, "overall": 5.0})
    for u, a, t in [("A", "x", 30), ("A", "y", 10), ("A", "z", 20), ("B", "x", 5), ("B", "y", 6), ("B", "z", 7),
                    ("C", "x", 1), ("D", "w", 1)]]  # D and w fall out of the 2-core
AMAZON_2014_META = [
    str({"asin": "x", "title": "X &amp; Co", "categories": [["Beauty", "Skin Care"]], "brand": "BX"}),
    str({"asin": "y", "title": "Y", "categories": [["Beauty", "Hair", "Shampoo"], ["Beauty"]]}),
    str({"asin": "z", "title": "Z", "categories": [["Beauty", "Nails"]], "description": "long"}),
    str({"asin": "w", "title": "W", "categories": [["Beauty", "Tools"]]}),
]


def test_amazon_2014_dict_literals_kcore_and_time_order(tmp_path):
    write_lines(tmp_path / "a" / "reviews_Beauty_5.json.gz", AMAZON_2014_REVIEWS)
    write_lines(tmp_path / "a" / "meta_Beauty.json.gz", AMAZON_2014_META)
    t = read_source(tmp_path / "a", D, Q)
    assert t.info["format"] == "amazon" and t.info["k_core"]["interactions_removed"] == 2
    assert set(t.items.item_id) == {"x", "y", "z"}  # w removed by the k-core, and C (1 event) too
    a = t.interactions[(t.interactions.user_id == "A") & (t.interactions.behavior == "rec")]
    assert list(a.item_id) == ["y", "z", "x"] and list(a.timestamp) == [10, 20, 30]
    assert "C" not in set(t.interactions.user_id)
    assert t.items.set_index("item_id").loc["x", "text"].startswith("X & Co. Brand: BX")


def test_amazon_2018_json_meta_with_category_list(tmp_path):
    reviews = [json.dumps({"reviewerID": u, "asin": a, "unixReviewTime": t})
               for u, a, t in [("A", "x", 1), ("A", "y", 2), ("B", "x", 3), ("B", "y", 4)]]
    meta = [json.dumps({"asin": "x", "title": "X", "category": ["All Beauty", "Hair Care"],
                        "description": ["First.", "<br>Second."]}),
            json.dumps({"asin": "y", "title": "Y", "category": []})]
    write_lines(tmp_path / "b" / "All_Beauty.json", reviews)  # 2018 full file name
    write_lines(tmp_path / "b" / "meta_All_Beauty.json", meta)
    t = read_source(tmp_path / "b", D, Q)
    x = t.items.set_index("item_id").loc["x"]
    assert x.description == "First. Second." and [list(p) for p in x.categories] == [["All Beauty", "Hair Care"]]
    assert set(t.queries.text) == {"all beauty hair care"}


def test_k_core_is_iterative():
    # one pass keeps (a,x), (b,x), (b,z), (c,z); then y-less a has 1 event, ... until nothing is left
    inter = pd.DataFrame({"user_id": list("aabbc"), "item_id": list("xyxzz")})
    assert len(k_core(inter, 2)) == 0
    dense = pd.DataFrame({"user_id": list("aabbcc"), "item_id": list("xyxyxz")})
    out = k_core(dense, 2)  # only z (one event) goes, then c (one event left) goes
    assert sorted(zip(out.user_id, out.item_id)) == [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_log_with_real_queries_and_category_strings(tmp_path, fmt):
    inter, items = small_log(n_users=2, n_items=3, events=3)
    items[0]["categories"] = '[["Home", "Kitchen"], ["Gifts", "Mugs"]]'
    items[1]["categories"] = "Home > Kitchen | Gifts > Cups"
    write_log(tmp_path / "l", inter, items, fmt)
    t = read_source(tmp_path / "l", DataConfig(), Q)
    cats = t.items.set_index("item_id").categories
    assert [list(p) for p in cats["i0"]] == [["Home", "Kitchen"], ["Gifts", "Mugs"]]
    assert [list(p) for p in cats["i1"]] == [["Home", "Kitchen"], ["Gifts", "Cups"]]
    assert t.info["format"] == "log" and len(t.interactions) == 6  # no twins: the log has its own
    assert list(t.queries.text) == ["kitchen mugs"]
    s = t.interactions[t.interactions.behavior == "search"]
    assert (s.query_id == t.queries.query_id[0]).all()


def test_batches_append_new_items_and_interactions(tmp_path):
    base = write_shared(tmp_path / "snap", "toy", {"u1": [0, 1]},
                        {"0": {"title": "A", "categories": [["X", "Y"]]},
                         "1": {"title": "B", "categories": [["X", "Z"]]}})
    write_shared(base / "batches" / "2024-01", "toy", {"u1": [2], "u2": [0, 2]},
                 {"2": {"title": "C", "categories": [["X", "W"]]},
                  "0": {"title": "A renamed", "categories": [["X", "Y"]]}})
    t = read_source(base, D, Q)
    assert sorted(t.items.item_id) == ["0", "1", "2"]
    assert t.items.set_index("item_id").loc["0", "title"] == "A"  # the base item is kept
    u1 = t.interactions[(t.interactions.user_id == "u1") & (t.interactions.behavior == "rec")]
    assert list(u1.item_id) == ["0", "1", "2"] and list(u1.step) == [0, 1, 2]
    assert t.info["batches"][0]["name"] == "2024-01"


def test_detect_format(tmp_path):
    inter, items = small_log()
    assert detect_format(write_log(tmp_path / "l", inter, items)) == "log"
    assert detect_format(write_shared(tmp_path / "s", "x", {}, {})) == "shared"
    write_lines(tmp_path / "a" / "reviews_Toys_5.json.gz", AMAZON_2014_REVIEWS)
    assert detect_format(tmp_path / "a") == "amazon"
    cfg = dataclasses.replace(D, format="log")
    assert read_source(tmp_path / "l", cfg, Q).info["format"] == "log"
