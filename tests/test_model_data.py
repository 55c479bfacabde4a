"""Tiny canonical tables + identifier map for the model tests, and tests of prompts, tokenizer and
training examples (leakage above all)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from gensar.config import ModelConfig, Params, TrainConfig
from gensar.model import prompts
from gensar.model.examples import ExampleBuilder, eval_requests, user_events, validation_requests
from gensar.model.prompts import IdentifierMap
from gensar.model.tokenizer import check_single_tokens, extend_tokenizer, train_tokenizer

TOPICS = {
    "lamp": ["desk lamp", "led light", "reading lamp"],
    "chair": ["office chair", "mesh chair", "ergonomic seat"],
    "paper": ["printer paper", "copy paper", "notebook"],
    "pen": ["gel pen", "ballpoint pen", "marker"],
}


def make_tiny_dataset(root: Path, n_users: int = 16, n_items: int = 24, seed: int = 0,
                      ids_seed: int = 0, steps: tuple[int, int] = (4, 8)) -> dict:
    """Canonical tables in paper mode (every click is a rec and a search event at one step, split
    leave-one-out per user and behavior) and an identifier map with 2 shared + 2 specific levels
    + a disambiguation code. Returns the paths."""
    rng = random.Random(seed)
    topics = list(TOPICS)
    items = []
    for i in range(n_items):
        topic = topics[i % len(topics)]
        words = TOPICS[topic][i % 3]
        items.append({"item_id": f"I{i:03d}", "title": f"{words} model {i}", "description": "",
                      "brand": f"brand{i % 5}", "categories": [["office", topic]],
                      "text": f"{words} model {i} brand{i % 5} office {topic}"})
    items_df = pd.DataFrame(items)
    queries = {f"q_{t}": f"office {t}" for t in topics}
    rows = []
    for u in range(n_users):
        pref = topics[u % len(topics)]
        n = rng.randint(*steps)
        for step in range(n):
            topic = pref if rng.random() < 0.8 else rng.choice(topics)
            cands = [it for j, it in enumerate(items) if topics[j % len(topics)] == topic]
            item = rng.choice(cands)["item_id"]
            split = "test" if step == n - 1 else "valid" if step == n - 2 else "train"
            for behavior in ("rec", "search"):
                rows.append({"user_id": f"U{u:03d}", "item_id": item, "timestamp": step, "step": step,
                             "behavior": behavior, "query_id": f"q_{topic}" if behavior == "search" else None,
                             "split": split})
    inter = pd.DataFrame(rows)
    qdf = pd.DataFrame({"query_id": list(queries), "text": list(queries.values())})
    canonical = root / "canonical"
    canonical.mkdir(parents=True, exist_ok=True)
    items_df.to_parquet(canonical / "items.parquet", index=False)
    inter.to_parquet(canonical / "interactions.parquet", index=False)
    qdf.to_parquet(canonical / "queries.parquet", index=False)
    ids_dir = write_tiny_ids(root / "ids", items_df["item_id"].tolist(), ids_seed)
    return {"canonical": canonical, "ids": ids_dir}


def write_tiny_ids(ids_dir: Path, item_ids: list[str], seed: int = 0, codebook: int = 4) -> Path:
    """A random identifier map: unique SIDs and CIDs sharing their first two (shared) codes."""
    rng = random.Random(seed)
    sids, cids, seen_s, seen_c = [], [], set(), set()
    for _ in item_ids:
        while True:
            shared = [rng.randrange(codebook), rng.randrange(codebook)]
            s = tuple(shared + [rng.randrange(codebook), rng.randrange(codebook), 0])
            c = tuple(shared + [rng.randrange(codebook), rng.randrange(codebook), 0])
            if s not in seen_s and c not in seen_c:
                break
        seen_s.add(s)
        seen_c.add(c)
        sids.append(list(s))
        cids.append(list(c))
    ids_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"item_id": item_ids, "sid": sids, "cid": cids}).to_parquet(ids_dir / "identifiers.parquet",
                                                                           index=False)
    meta = {"sid_kinds": ["h", "h", "s", "s", "d"], "cid_kinds": ["h", "h", "c", "c", "d"],
            "codebook_size": codebook, "disambiguation_size": 1, "mode": "gensar"}
    (ids_dir / "meta.json").write_text(json.dumps(meta))
    return ids_dir


def tiny_params(**train) -> Params:
    """Tiny model, small batches, few epochs: seconds on 2 CPU cores."""
    base = {"epochs": 2, "batch_size": 32, "eval_beams": 8, "eval_users": 6, "patience": 5, "device": "cpu",
            "tasks": {"rec": 1.0, "search": 1.0, "query": 0.5, "adhoc": 0.5, "align": 0.25}}
    base.update(train)
    return Params(model=ModelConfig(size="tiny", vocab_size=300), train=TrainConfig(**base))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    paths = make_tiny_dataset(tmp_path_factory.mktemp("tiny"))
    c = paths["canonical"]
    return {**paths, "items": pd.read_parquet(c / "items.parquet"),
            "inter": pd.read_parquet(c / "interactions.parquet"),
            "queries": pd.read_parquet(c / "queries.parquet"), "idmap": IdentifierMap.load(paths["ids"])}


# --------------------------------------------------------------------------------------------
def test_history_rendering_uses_behavior_tokens_and_recent_events(tiny):
    ids = tiny["idmap"]
    hist = [("rec", "I000", None), ("search", "I001", "Office LAMP"), ("rec", "I002", None)]
    text = prompts.render_history(hist, ids, history_len=2)
    assert "I000" not in text and "".join(ids.cid_tokens("I000")) not in text  # only the 2 most recent
    assert text == ("<query> office lamp <click> " + "".join(ids.sid_tokens("I001")) + " <rec> "
                    + "".join(ids.cid_tokens("I002")))
    assert prompts.rec_input(hist, ids).startswith("recommend:")
    assert prompts.search_input("lamp", hist, ids).startswith("search:")
    assert prompts.render_history([], ids) == "none"
    with pytest.raises(ValueError, match="behavior"):
        prompts.render_history([("buy", "I000", None)], ids)


def test_tokenizer_keeps_every_identifier_token_whole(tiny):
    ids = tiny["idmap"]
    corpus = tiny["items"]["text"].tolist() + tiny["queries"]["text"].tolist()
    tok = train_tokenizer(corpus, ids.tokens(), vocab_size=300)
    id_tok = ids.tokens()
    token_ids = check_single_tokens(tok, id_tok)
    assert len(set(token_ids)) == len(id_tok)
    src = prompts.search_input("Desk LAMP", [("rec", "I003", None)], ids)
    pieces = tok.convert_ids_to_tokens(tok(src).input_ids)
    for t in ids.cid_tokens("I003") + ["<rec>", "search", ":"]:
        assert t in pieces
    assert tok.unk_token not in pieces
    assert pieces[-1] == tok.eos_token and "lamp" in pieces   # lowercased, EOS appended
    # extending keeps old ids and gives new tokens new ids
    before = dict(tok.get_vocab())
    assert extend_tokenizer(tok, ["<h0_99>", "<rec>"]) == 1
    assert all(tok.convert_tokens_to_ids(t) == i for t, i in before.items())
    assert tok.convert_tokens_to_ids("<h0_99>") == len(before)


def test_no_validation_or_test_event_leaks_into_training_examples(tiny):
    ids, inter = tiny["idmap"], tiny["inter"]
    events = user_events(inter, tiny["queries"])
    cfg = TrainConfig(history_len=50, tasks={"rec": 1.0, "search": 1.0, "query": 1.0, "adhoc": 1.0}, causal=False)
    builder = ExampleBuilder(events, tiny["items"], ids, cfg)
    held = inter[inter["split"] != "train"]
    # causal rec sequences hold train clicks only, each a target once
    causal = ExampleBuilder(events, tiny["items"], ids, TrainConfig(history_len=3, tasks={"rec": 1.0}))
    train_keys = {(e.item_id, e.step) for evs in events.values() for e in evs if e.split == "train"}
    seq_clicks = [c[0] for clicks, _ in causal.pools["rec"] for c in clicks]
    assert seq_clicks and all((e.item_id, e.step) in train_keys for e in seq_clicks)
    n_targets = sum(len(clicks) - n for clicks, n in causal.pools["rec"])
    assert n_targets == len({(u, e.step) for u, evs in events.items() for e in evs if e.split == "train"})
    # every target and every history event of every pool is a train event, strictly before the target
    n = 0
    for task in ("rec", "search", "query"):
        for hist, target in builder.pools[task]:
            assert target.split == "train"
            assert all(h.split == "train" and h.step < target.step for h in hist)
            n += 1
    train = inter[inter["split"] == "train"]
    assert n == (train["behavior"] == "rec").sum() + 2 * (train["behavior"] == "search").sum()
    # the held-out steps come after every train step of the user (leave-one-out), so no pool
    # history above can contain them
    for evs in events.values():
        held_steps = {e.step for e in evs if e.split != "train"}
        assert held_steps and min(held_steps) > max(e.step for e in evs if e.split == "train")
    examples = builder.epoch(0, seed=0)
    assert {e.task for e in examples} == {"rec", "search", "query", "adhoc"}
    assert len(examples) == builder.epoch_size()
    # the twin of a target (same step, other behavior) is never in its history
    for hist, target in builder.pools["search"]:
        assert all(h.step != target.step for h in hist)
    assert len(held) > 0


def test_eval_requests_see_only_events_before_their_step(tiny):
    events = user_events(tiny["inter"], tiny["queries"])
    reqs = eval_requests(events, "test")
    assert {r.behavior for r in reqs} == {"rec", "search"}
    for r in reqs:
        target_step = max(e.step for e in events[r.user_id])
        assert all(h.step < target_step for h in r.history)        # no twin, no future
        assert r.target == next(e for e in events[r.user_id] if e.step == target_step).item_id
        assert (r.query is None) == (r.behavior == "rec")



def test_validation_sample_is_seeded_and_keeps_the_asked_behaviors(tiny):
    """The trainer's validation sample: the valid requests of n seeded users, of the asked behaviors."""
    events = user_events(tiny["inter"], tiny["queries"])
    both = validation_requests(events, 5, seed=3)
    assert len({r.user_id for r in both}) == 5 and {r.behavior for r in both} == {"rec", "search"}
    assert both == validation_requests(events, 5, seed=3)
    assert {r.user_id for r in validation_requests(events, 5, seed=4)} != {r.user_id for r in both}
    rec = validation_requests(events, 5, seed=3, behaviors=("rec",))
    assert rec == [r for r in both if r.behavior == "rec"]
    everyone = validation_requests(events, 0)
    assert everyone == eval_requests(events, "valid")

def test_epoch_sampling_is_seeded_and_follows_task_weights(tiny):
    events = user_events(tiny["inter"], tiny["queries"])
    cfg = TrainConfig(tasks={"rec": 2.0, "search": 0.5, "align": 0.25})
    b = ExampleBuilder(events, tiny["items"], tiny["idmap"], cfg)
    e0, e0b, e1 = b.epoch(0, 7), b.epoch(0, 7), b.epoch(1, 7)
    assert e0 == e0b and e0 != e1
    counts = {t: sum(x.task == t for x in e0) for t in ("rec", "search", "query", "align")}
    assert counts["rec"] == 2 * len(b.pools["rec"])
    assert counts["search"] == round(0.5 * len(b.pools["search"]))
    assert counts["query"] == 0
    assert counts["align"] == 4 * round(0.25 * len(b.pools["align"]))
    with pytest.raises(ValueError, match="unknown task"):
        ExampleBuilder(events, tiny["items"], tiny["idmap"], TrainConfig(tasks={"recc": 1.0}))
