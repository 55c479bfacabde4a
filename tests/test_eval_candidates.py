"""Evaluation cases (no twin leakage), saved candidate lists, and the driver on real baselines."""
import numpy as np
import pandas as pd
import pytest

from gensar.eval.baselines import BM25Ranker, PopularityRanker
from gensar.eval.candidates import build_cases, ensure_candidates, history_items, make_candidates
from gensar.eval.evaluate import EvalData, evaluate_model, load_eval_data
from gensar.io import write_parquet

N_ITEMS, N_USERS = 150, 12


@pytest.fixture()
def tables():
    rng = np.random.default_rng(0)
    cats = ["pens ink", "paper notebooks", "desk staplers"]
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(N_ITEMS)],
                          "text": [f"item {j} {cats[j % 3]} brand{j % 7}" for j in range(N_ITEMS)]})
    queries = pd.DataFrame({"query_id": ["q0", "q1", "q2"], "text": cats})
    rows = []
    for u in range(N_USERS):
        seq = rng.choice(N_ITEMS, size=6, replace=False)
        for step, j in enumerate(seq):
            split = "test" if step == 5 else "valid" if step == 4 else "train"
            # paper mode: each click is a rec event and a search event at the same step
            rows.append((f"u{u}", f"i{j}", step, step, "rec", None, split))
            rows.append((f"u{u}", f"i{j}", step, step, "search", f"q{j % 3}", split))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "step", "behavior", "query_id", "split"])
    return items, inter, queries


def test_history_is_strictly_before_the_target_step(tables):
    _, inter, queries = tables
    for behavior in ("rec", "search"):
        cases = build_cases(inter, "test", behavior, queries)
        assert len(cases) == N_USERS
        for u, step, target, hist in zip(cases["user_id"], cases["step"], cases["item_id"], cases["history"]):
            seq = inter[(inter.user_id == u) & (inter.behavior == "rec")].sort_values("step")["item_id"].tolist()
            assert history_items(hist) == seq[:5] and target == seq[5]
            assert all(ev[3] < step for ev in hist)             # twin (same step) never in the history
            assert [ev[0] for ev in hist[:2]] == ["rec", "search"] and hist[1][2] in set(queries.text)
    valid = build_cases(inter, "valid", "rec", queries)
    assert all(len(history_items(h)) == 4 and len(h) == 8 for h in valid["history"])


def test_candidates_follow_the_protocol_and_are_reproducible(tables, tmp_path):
    items, inter, queries = tables
    cands = make_candidates(inter, items, queries, n=100, seed=3)
    again = make_candidates(inter, items, queries, n=100, seed=3)
    assert cands["candidates"].map(tuple).tolist() == again["candidates"].map(tuple).tolist()
    seen = inter.groupby("user_id")["item_id"].agg(set)
    for row in cands.itertuples():
        c = list(row.candidates)
        assert len(c) == 100 and len(set(c)) == 100 and row.item_id in c
        if row.behavior == "rec":    # negatives are items the user never interacted with
            assert not (set(c) - {row.item_id}) & seen[row.user_id]
        else:                        # the 50 items of the query's category path come first in BM25
            cat = queries.set_index("query_id").loc[row.query_id, "text"]
            same = set(items[items.text.str.contains(cat)].item_id)
            assert same <= set(c)
    assert cands["candidates"].map(lambda c: c[0]).nunique() > 1     # shuffled, target not always first
    saved = ensure_candidates(inter, items, queries, tmp_path / "cands", n=100, seed=3)
    assert saved["history"].tolist() == cands["history"].tolist()        # events survive the Parquet trip
    canon = tmp_path / "canonical"
    write_parquet(items, canon / "items.parquet")
    write_parquet(queries, canon / "queries.parquet")
    data = load_eval_data(str(canon), str(tmp_path / "cands"), split="test", max_users=5, seed=0)
    assert data.cases["user_id"].nunique() == 5 and len(data.cases) == 10


def test_driver_scores_baselines_on_both_protocols(tables):
    items, inter, queries = tables
    cands = make_candidates(inter, items, queries, n=100, seed=0)
    data = EvalData(items["item_id"].tolist(), items["text"].tolist(),
                    dict(zip(queries.query_id, queries.text)), cands[cands.split == "test"])
    bm25 = evaluate_model(BM25Ranker(data.item_ids, data.item_texts), data)
    assert set(bm25["metrics"]) == {f"search/{p}/{m}" for p, ms in
                                    [("sampled", ["hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10"]),
                                     ("full", ["recall@5", "recall@10", "ndcg@5", "ndcg@10"])] for m in ms}
    pop = evaluate_model(PopularityRanker(data.item_ids, inter), data)
    assert {"rec/full/recall@10", "search/sampled/hr@10"} <= set(pop["metrics"])
    for res in (bm25, pop):
        for name, v in res["metrics"].items():
            assert 0.0 <= v <= 1.0, name
            if "hr@10" in name or "recall@10" in name:   # @10 dominates @5 dominates @1
                assert v >= res["metrics"][name.replace("@10", "@5")]

    class Oracle:   # ranks the target first: every metric must be exactly 1
        name, tasks = "oracle", ("rec",)
        def rank_rec(self, histories, k, candidates=None):
            return [[t] for t in targets[: len(histories)]]
    targets = data.task_cases("rec")["item_id"].tolist()
    assert set(evaluate_model(Oracle(), data, batch_size=1000)["metrics"].values()) == {1.0}
