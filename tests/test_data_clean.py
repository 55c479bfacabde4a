from gensar.data.clean import clean_text, item_text, truncate


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
