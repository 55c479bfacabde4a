"""A small, deterministic SYNTHETIC dataset in the platform-log format (the offline default).

It exists so that the whole pipeline runs on a fresh machine without downloads, and so that models
have something learnable:

  * a category tree: department > topic > leaf (e.g. Electronics > Audio > Headphones);
  * items with titles and descriptions drawn from their topic's vocabulary, a brand, a leaf;
  * users with 1-3 latent interests (topics, with weights); each next click stays in the current
    interest with high probability (so next items correlate with the history) and prefers popular
    items and the previous item's leaf;
  * search events whose query text is made of the clicked item's category words and a word of its
    title (so queries correlate with the target).

Output (`generate(out_dir, cfg)`): interactions.csv (user, item, timestamp, behavior, query),
items.csv (item_id, title, description, brand, categories as 'A > B > C') and README.txt saying
the data is synthetic. Same config and seed -> byte-identical files.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from gensar.config import SyntheticConfig
from gensar.io import atomic_path, write_text

logger = logging.getLogger(__name__)

# department, topic, leaves, vocabulary (the first words are the most typical)
TOPICS = [
    ("Home & Kitchen", "Coffee", ["Espresso Machines", "Grinders"],
     "coffee espresso brew roast grinder mug bean barista"),
    ("Home & Kitchen", "Baking", ["Bakeware", "Mixers"], "bake cake flour oven whisk dough pastry mixer"),
    ("Sports & Outdoors", "Camping", ["Tents", "Sleeping Bags"],
     "tent camp trail lantern sleeping outdoor hike backpack"),
    ("Sports & Outdoors", "Cycling", ["Bikes", "Helmets"], "bike cycling helmet pedal wheel saddle road gear"),
    ("Sports & Outdoors", "Fitness", ["Yoga", "Weights"], "yoga mat dumbbell workout fitness stretch band gym"),
    ("Beauty", "Skin Care", ["Moisturizers", "Cleansers"],
     "skin moisturizer serum cleanser hydrating cream face gentle"),
    ("Beauty", "Hair Care", ["Shampoo", "Styling"], "hair shampoo conditioner curl styling volume scalp shine"),
    ("Electronics", "Audio", ["Headphones", "Speakers"],
     "headphones speaker bass wireless audio bluetooth sound noise"),
    ("Electronics", "Photography", ["Cameras", "Lenses"], "camera lens photo tripod zoom shutter portrait flash"),
    ("Toys & Games", "Puzzles", ["Jigsaw", "Brain Teasers"],
     "puzzle jigsaw piece brain logic teaser family challenge"),
    ("Toys & Games", "Building", ["Blocks", "Robotics"], "blocks building robot kit construct stem bricks creative"),
    ("Garden", "Plants", ["Seeds", "Planters"], "garden seed planter soil flower herb grow pot"),
]
ADJECTIVES = ["compact", "classic", "premium", "deluxe", "portable", "lightweight", "durable", "smart", "eco", "pro", "mini", "ultra"]
BRANDS = ["Acme", "Northwind", "Zenith", "Aurora", "Summit", "Nimbus", "Orion", "Vertex", "Lumen", "Harbor", "Juniper", "Quasar"]
STAY = 0.8          # probability that the next click stays in the current interest
SAME_LEAF = 0.5     # ... and, within it, in the previous item's leaf


def _topics(n: int) -> list[tuple[str, str, list[str], list[str]]]:
    """`n` topics: the built-in ones, then generated ones with made-up words if more are asked."""
    out = [(d, t, leaves, vocab.split()) for d, t, leaves, vocab in TOPICS[:n]]
    for k in range(len(out), n):
        vocab = [f"{w}{k}" for w in ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta")]
        out.append((f"Department {k // 3}", f"Topic {k}", [f"Leaf {k}a", f"Leaf {k}b"], vocab))
    return out


def make_items(cfg: SyntheticConfig, rng: np.random.Generator) -> pd.DataFrame:
    topics = _topics(cfg.n_topics)
    topic = rng.permutation(np.arange(cfg.n_items) % cfg.n_topics)
    rows = []
    for i, t in enumerate(topic):
        dept, name, leaves, vocab = topics[t]
        leaf = int(rng.integers(len(leaves)))
        w = rng.choice(vocab, size=3, replace=False)
        adj = ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]
        brand = BRANDS[int(rng.integers(len(BRANDS)))]
        title = f"{brand} {adj.title()} {w[0].title()} {w[1].title()} {leaves[leaf].rstrip('s')}"
        desc = (f"A {adj} {w[0]} {leaves[leaf].lower()} for {w[1]} and {w[2]}. "
                f"Made by {brand} for everyday {name.lower()}.")
        rows.append({"item_id": f"i{i:05d}", "title": title, "description": desc, "brand": brand,
                     "categories": f"{dept} > {name} > {leaves[leaf]}", "_topic": int(t), "_leaf": leaf,
                     "_word": w[0]})
    return pd.DataFrame(rows)


def make_interactions(items: pd.DataFrame, cfg: SyntheticConfig, rng: np.random.Generator) -> pd.DataFrame:
    by_topic = [np.flatnonzero(items["_topic"].to_numpy() == t) for t in range(cfg.n_topics)]
    # popularity within a topic: a Zipf-like law over a random order of its items
    pop = [1.0 / np.arange(1, len(ix) + 1) ** 0.8 for ix in by_topic]
    pop = [p / p.sum() for p in pop]
    leaf = items["_leaf"].to_numpy()
    cats = items["categories"].str.split(" > ").tolist()
    lo, hi = cfg.events_per_user
    rows = []
    for u in range(cfg.n_users):
        k = int(rng.integers(1, 4))
        interests = rng.choice(cfg.n_topics, size=min(k, cfg.n_topics), replace=False)
        weights = rng.dirichlet(np.ones(len(interests)))
        t = interests[rng.choice(len(interests), p=weights)]
        time = 1_600_000_000 + int(rng.integers(0, 30 * 86400))
        seen: set[int] = set()
        prev = -1
        for _ in range(int(rng.integers(lo, hi + 1))):
            if rng.random() > STAY:
                t = interests[rng.choice(len(interests), p=weights)]
            cand, p = by_topic[t], pop[t]
            if prev >= 0 and items["_topic"].iat[prev] == t and rng.random() < SAME_LEAF:
                same = leaf[cand] == leaf[prev]
                if same.any():
                    cand, p = cand[same], p[same] / p[same].sum()
            item = int(rng.choice(cand, p=p))
            for _retry in range(3):  # prefer items not clicked yet
                if item not in seen:
                    break
                item = int(rng.choice(cand, p=p))
            seen.add(item)
            prev = item
            time += int(rng.integers(60, 3 * 86400))
            if rng.random() < cfg.search_share:
                words = [w.lower() for w in " ".join(cats[item][1:]).split() if w != "&"]
                words = list(dict.fromkeys(words + [items["_word"].iat[item]]))
                keep = sorted(rng.choice(len(words), size=max(2, len(words) - 1), replace=False))
                rows.append((f"u{u:05d}", items["item_id"].iat[item], time, "search",
                             " ".join(words[j] for j in keep)))
            else:
                rows.append((f"u{u:05d}", items["item_id"].iat[item], time, "rec", ""))
    return pd.DataFrame(rows, columns=["user", "item", "timestamp", "behavior", "query"])


README = """SYNTHETIC DATA - NOT REAL USERS OR PRODUCTS.

Generated by gensar.data.synthetic.generate with {cfg}.
Users have 1-3 latent interests (topics of a category tree); clicks and search queries follow
them, so that models can learn something. Use it to run the pipeline offline and in tests; use
real data (data.source in params.yaml) for any claim about quality.
Files: interactions.csv (user, item, timestamp, behavior, query), items.csv (item_id, title,
description, brand, categories).
"""


def generate(out_dir, cfg: SyntheticConfig) -> dict:
    """Write the synthetic platform log into `out_dir`; returns counts."""
    out = Path(out_dir)
    rng = np.random.default_rng(cfg.seed)
    items = make_items(cfg, rng)
    inter = make_interactions(items, cfg, rng)
    with atomic_path(out / "items.csv") as tmp:
        items.drop(columns=["_topic", "_leaf", "_word"]).to_csv(tmp, index=False)
    with atomic_path(out / "interactions.csv") as tmp:
        inter.to_csv(tmp, index=False)
    write_text(README.format(cfg=cfg), out / "README.txt")
    summary = {"users": cfg.n_users, "items": len(items), "events": len(inter),
               "search_events": int((inter["behavior"] == "search").sum())}
    logger.info("synthetic data in %s: %s", out, summary)
    return summary
