"""`gensar recommend` / `gensar search` on a tiny exported model: titles and scores printed, errors named."""
from __future__ import annotations

import pytest
from conftest import exported_world

from gensar.cli import main, parse_history


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    world = exported_world(tmp_path_factory.mktemp("cli"), n_items=60)
    return world, world["out"]


def test_parse_history():
    assert parse_history(["a", "b=desk lamp"]) == [("rec", "a", None), ("search", "b", "desk lamp")]


def test_recommend_and_search_print_titles_and_scores(export, capsys):
    world, out = export
    items = world["ids"].item_ids
    titles = dict(zip(world["items"]["item_id"], world["items"]["title"]))
    assert main(["recommend", "--model", str(out), "--history", items[0], f"{items[1]}=desk lamp", "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "item", "title"] and len(lines) == 4
    rank, score, item, *title = lines[1].split()
    assert rank == "1" and float(score) < 0 and " ".join(title) == titles[item]
    assert main(["search", "stapler", "--model", str(out), "--k", "2"]) == 0        # no history: cold start
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_cli_errors_are_named(export, capsys):
    _, out = export
    assert main(["recommend", "--model", str(out), "--history", "no-such-item"]) == 2
    assert "unknown item ids in history: 'no-such-item'" in capsys.readouterr().err
    assert main(["search", "  ", "--model", str(out)]) == 2
    assert "query must not be empty" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="meta.json"):
        main(["recommend", "--model", str(out.parent / "missing")])
