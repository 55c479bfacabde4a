import pandas as pd

from gensar.data.synthetic import generate


def test_synthetic_is_deterministic_and_labelled(tmp_path, params):
    cfg = params.data.synthetic
    a, b = generate(tmp_path / "a", cfg), generate(tmp_path / "b", cfg)
    assert a == b
    for name in ("interactions.csv", "items.csv", "README.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "SYNTHETIC" in (tmp_path / "a" / "README.txt").read_text()
    inter = pd.read_csv(tmp_path / "a" / "interactions.csv", keep_default_na=False)
    assert inter.user.nunique() == cfg.n_users and len(pd.read_csv(tmp_path / "a" / "items.csv")) == cfg.n_items
    lo, hi = cfg.events_per_user
    assert inter.groupby("user").size().between(lo, hi).all()


def test_synthetic_is_learnable(tmp_path, params):
    """Next clicks follow the history's topic and queries name the clicked item's category."""
    generate(tmp_path, params.data.synthetic)
    inter = pd.read_csv(tmp_path / "interactions.csv", keep_default_na=False)
    items = pd.read_csv(tmp_path / "items.csv").set_index("item_id")
    topic = items.categories.str.split(" > ").str[1]
    inter["topic"] = inter.item.map(topic)
    same = (inter.groupby("user").topic.shift() == inter.topic)[inter.groupby("user").cumcount() > 0]
    chance = (topic.value_counts(normalize=True) ** 2).sum()
    assert same.mean() > chance + 0.3, (same.mean(), chance)
    search = inter[inter.behavior == "search"]
    assert 0.2 < len(search) / len(inter) < 0.6
    words = search.item.map(lambda i: set(items.categories[i].lower().replace(">", " ").split()))
    overlap = [bool(set(q.split()) & w) for q, w in zip(search["query"], words)]
    assert sum(overlap) / len(overlap) > 0.9
