import pandas as pd

from gensar.data.clean import clean_items, clean_text, item_text, truncate


def test_clean_text_unescapes_twice_and_strips_tags_and_spaces():
    assert clean_text("AT&amp;amp;T <b>Phone</b>\n\n  &quot;white&quot;<br/>") == 'AT&T Phone "white"'
    assert clean_text(None) == "" and clean_text(float("nan")) == ""
    assert clean_text(["Para one.", "<p>Two</p>"]) == "Para one. Two"  # 2018 descriptions are lists


def test_truncate_on_word_boundary():
    text = "alpha beta gamma delta epsilon"
    assert truncate(text, 100) == text
    cut = truncate(text, 14)
    assert cut == "alpha beta" and len(cut) <= 14
    assert truncate("x" * 50, 10) == "x" * 10  # no boundary: hard cut


def test_item_text_joins_fields_and_respects_limit():
    row = {"title": "Mug", "brand": "Acme", "categories": [["Home", "Kitchen"]], "description": "big " * 50}
    text = item_text(row, max_chars=60)
    assert text.startswith("Mug. Brand: Acme. Category: Home > Kitchen. big")
    assert len(text) <= 60
    assert item_text({"title": "", "brand": "", "categories": [], "description": ""}) == ""


def test_invisible_characters_are_removed_and_fields_are_cut():
    assert clean_text("Desk\u200b lamp\u202e\x00\x07 \ufeffLED\u2066") == "Desk lamp LED"
    assert clean_text("\u200b\u200d\x01\u202e \u2069") == ""          # nothing visible: empty
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["t " * 400_000, "\u200b\u200c"], "description": ["d " * 900, ""],
                          "brand": ["", ""], "categories": [[], []]})
    out = clean_items(items, max_chars=64)
    assert len(out.loc[0, "title"]) <= 64 and len(out.loc[0, "description"]) <= 64 and len(out.loc[0, "text"]) <= 64
    assert out.loc[1, "title"] == "" and out.loc[1, "text"] == ""            # quarantined as "empty text"
