"""Expansion, counting and grammar behaviours fixed after review: each test names one."""

import unicodedata

import pytest

from harness.expand import compile_template, count_info
from harness.wildcards import WildcardLibrary
from templates import error, prompts

TEN = "{a|b|c|d|e|f|g|h|i|j}"




# ----------------------------------------------------------------------------- lazy choose-k


def test_exhaustive_expansion_of_a_choose_k_gives_its_first_prompt_before_walking_every_selection(monkeypatch):
    """The probabilities' rescaling walked all 11,880 selections of {4$$...12} (3.9 million of {7$$...12})
    before the first prompt; expansion reads no probabilities, so it walks one."""
    from harness.expand import paths

    walked = []
    choose = paths._choose_k_paths

    def counting(*args):
        for item in choose(*args):
            walked.append(item)
            yield item

    monkeypatch.setattr(paths, "_choose_k_paths", counting)
    t = compile_template("{4$$a|b|c|d|e|f|g|h|i|j|k|l}")
    assert [v.prompt for v in t.expand(limit=2)] == ["a,b,c,d", "a,b,c,e"]
    assert len(walked) == 2


# ----------------------------------------------------------------------------- exact counts


def test_two_optional_clauses_after_a_large_product_count_exactly():
    big = TEN * 12
    assert count_info(compile_template(big + "{|, by greg}").tree) == (2 * 10**12, True)
    assert count_info(compile_template(big + "{|, by greg}{|, golden hour}").tree) == (4 * 10**12, True)
    four = "{|, by greg}{|, golden hour}{|, 4k}{|, trending}"
    assert count_info(compile_template(big + four).tree) == (16 * 10**12, True)


def test_optional_clauses_between_large_products_count_exactly():
    t = compile_template(TEN * 12 + "{|, by greg} " + TEN * 12 + "{|, golden hour}")
    assert count_info(t.tree) == (4 * 10**24, True)


def test_small_parts_after_a_large_product_are_joined_first():
    """{|a}{|a} spells "", "a" and "aa": three texts, though two clauses that each add "a" overlap."""
    assert count_info(compile_template(TEN * 12 + "{|a}{|a}").tree) == (3 * 10**12, True)


def test_a_large_product_that_really_overlaps_stays_an_upper_bound():
    # "a" + "aaaaaaaaaaaa" + "" and "" + "aaaaaaaaaaaa" + "a" spell one prompt
    assert count_info(compile_template("{|a}" + TEN * 12 + "{|a}").tree) == (4 * 10**12, False)


# ----------------------------------------------------------------------------- wildcard names


def test_a_wildcard_name_may_start_with_a_letter_of_any_script(tmp_path):
    (tmp_path / "été.txt").write_text("summer\n", encoding="utf-8")
    (tmp_path / "Ωmega.txt").write_text("omega\n", encoding="utf-8")
    library = WildcardLibrary([tmp_path])
    assert prompts("__été__ __Ωmega__", library=library) == ["summer omega"]
    assert compile_template("__été__", library=library).factors == ["été"]


def test_a_wildcard_file_named_with_decomposed_accents_is_found(tmp_path):
    (tmp_path / (unicodedata.normalize("NFD", "été") + ".txt")).write_text("summer\n", encoding="utf-8")
    assert prompts("__été__", library=WildcardLibrary([tmp_path])) == ["summer"]


def test_a_wildcard_name_holding_a_combining_mark_is_a_wildcard(tmp_path):
    (tmp_path / "x\u0301y.txt").write_text("z\n", encoding="utf-8")  # no composed form: the mark stays
    assert prompts("__x\u0301y__", library=WildcardLibrary([tmp_path])) == ["z"]


def test_text_between_double_underscores_that_is_no_wildcard_name_stays_text():
    assert prompts("a__b c__d __x+y__ __ __") == ["a__b c__d __x+y__ __ __"]


def test_a_wildcard_file_that_cannot_be_named_is_explained_not_suggested_as_typed(tmp_path):
    (tmp_path / "_priv.txt").write_text("secret\n")
    e = error("___priv__", library=WildcardLibrary([tmp_path]))
    assert "did you mean" not in e.message
    assert "_priv.txt cannot be used as a wildcard: a wildcard's name starts with a letter or digit" in e.message
    assert "___priv__ reads as the text '_' and then __priv__" in e.message


def test_a_close_wildcard_name_that_can_be_written_is_still_suggested(tmp_path):
    (tmp_path / "colors.txt").write_text("red\n")
    (tmp_path / "_colours.txt").write_text("red\n")
    e = error("__colours__", library=WildcardLibrary([tmp_path]))
    assert "did you mean __colors__?" in e.message and "_colours.txt cannot be used as a wildcard" in e.message


# ----------------------------------------------------------------------------- choose-k heads


@pytest.mark.parametrize("template, fix", [
    ("{2$$__colours__ }", "{2$$__colours__}"), ("{2$$ __colours__}", "{2$$__colours__}"),
    ("{1-2$$ and $$__colours__ x}", "{1-2$$ and $$__colours__}"), ("{2$$1::__colours__}", "{2$$__colours__}"),
    ("{2$${@c: __colours__}}", "{@c: 2$$__colours__}"),
])
def test_a_choose_k_over_a_wildcard_that_is_not_alone_says_it_must_stand_alone(template, fix):
    e = error(template)
    assert "only 1 option" in e.message and "only when it stands alone in the braces" in e.message
    assert e.message.endswith(fix)


def test_a_choose_k_short_of_options_without_a_wildcard_has_no_wildcard_hint():
    assert error("{3$$a|b}").message == "choose-k asks for 3 but the alternation has only 2 options"


@pytest.mark.parametrize("template, column", [("{$$a|b}", 2), ("{ $$ a|b}", 3), ("{@n: $$a|b}", 6)])
def test_a_missing_choose_k_count_is_an_error_like_a_malformed_one(template, column):
    e = error(template)
    assert e.message.startswith("choose-k count missing: expected a whole number N") and e.column == column
    assert "write \\$\\$ for a literal '$$'" in e.message


def test_a_choose_k_count_is_read_only_at_the_start_of_the_first_option():
    assert error("{a $$ b|c}").message.startswith("bad choose-k count 'a'")
    assert prompts("{c|a $$ b}") == ["c", "a $$ b"]
    assert prompts("{c|$$a}") == ["c", "$$a"]
    assert prompts("{\\$\\$a|b}") == ["$$a", "b"]


def test_a_double_colon_after_a_factor_name_is_an_error():
    e = error("{@p:: a|b}")
    assert e.message.startswith("'::' after factor name '@p': a name ends with one ':'") and e.column == 4
    assert "{@p: \\:a}" in e.message
    assert prompts("{@p: :a|b}") == [":a", "b"] and prompts("{@p: \\:a|b}") == [":a", "b"]


# ----------------------------------------------------------------------------- slash abbreviations


@pytest.mark.parametrize("text", [
    "100 km/h", "100km/h", "5.5m/s", "9.8 m/s²", "30 ft/s", "300 Mb/s", "5 l/100km", "I/O", "TCP/IP",
    "A/B testing", "N/A", "AC/DC poster", "an A/C unit", "an R/C car", "x/km/h",
])
def test_slash_shorthand_keeps_units_and_technical_abbreviations_literal(text):
    assert prompts(text) == [text]


def test_slash_shorthand_still_splits_word_pairs_and_words_that_only_look_like_units():
    assert prompts("his/her car") == ["his car", "her car"]
    assert prompts("km/miles") == ["km", "miles"]
