"""Parser behaviour: each syntax element and each error, by name."""

import os

import pytest

from harness.grammar import GrammarError, parse, render
from harness.expand import compile_template


def prompts(template, **kw):
    return [v.prompt for v in compile_template(template, **kw).expand()]


def test_braces_expand_each_option():
    assert prompts("a {red|green} car") == ["a red car", "a green car"]


def test_nested_braces_expand_inside_options():
    assert prompts("{a {x|y}|b}") == ["a x", "a y", "b"]


def test_empty_option_makes_clause_optional():
    assert prompts("cat{, by greg rutkowski|}") == ["cat, by greg rutkowski", "cat"]


def test_slash_shorthand_binds_single_words():
    assert prompts("photo/35mm of red/green lambo") == [
        "photo of red lambo", "photo of green lambo", "35mm of red lambo", "35mm of green lambo"]


def test_slash_shorthand_keeps_fractions_literal():
    assert prompts("1/2 cup, 24/7, f/2.8 lens") == ["1/2 cup, 24/7, f/2.8 lens"]


def test_slash_shorthand_keeps_urls_literal():
    assert prompts("see http://example.com/a/b and www.x.org/y") == ["see http://example.com/a/b and www.x.org/y"]


def test_slash_shorthand_keeps_bare_host_paths_literal():
    text = "from example.com/a/b and github.io/x/y"
    assert prompts(text) == [text]
    # An inner dot that is no host still splits.
    assert prompts("3.5mm/35mm lens") == ["3.5mm lens", "35mm lens"]
    assert prompts("node.js/deno in St.Louis/Chicago") == [
        "node.js in St.Louis", "node.js in Chicago", "deno in St.Louis", "deno in Chicago"]


@pytest.mark.parametrize("text", ["rust/C++", "AT&T/Verizon", "R&B/soul", "1,000mm/2mm", "w/o/with", "b/w/color"])
def test_slash_inside_a_token_or_an_abbreviation_stays_literal(text):
    """A group is a whole token: splitting `AT&T/Verizon` at the slash would make `AT&Verizon`."""
    assert prompts(text) == [text]


def test_slash_groups_split_next_to_brackets_quotes_and_punctuation():
    assert prompts("(red/green:1.2)") == ["(red:1.2)", "(green:1.2)"]
    assert prompts("red/green, blue/gray!") == ["red, blue!", "red, gray!", "green, blue!", "green, gray!"]
    assert prompts("rock’n’roll/jazz,https://x.com") == ["rock’n’roll,https://x.com", "jazz,https://x.com"]


@pytest.mark.parametrize("left, right", [("«", "»"), ("„", "“"), ("‹", "›"), ("»", "«"), ("‚", "‘"), ("", "…")])
def test_slash_groups_split_inside_every_kind_of_quote_and_before_an_ellipsis(left, right):
    assert prompts(f"{left}red/green{right} car") == [f"{left}red{right} car", f"{left}green{right} car"]


@pytest.mark.parametrize("template", ["red/green./x", "red/green'/x", "red/green../x", r"AC\/DC/Metallica x.\/y"])
def test_a_slash_group_before_an_escaped_slash_renders_back_to_the_same_template(template):
    """Rendering escapes a literal `/`; an escaped slash after a word's `.` or `'` must not glue that
    text onto the slash group's last word when the rendered template is read again."""
    tree = parse(template)
    assert parse(render(tree)) == tree


def test_slash_with_empty_side_stays_literal():
    assert prompts("w/ hat and a//b") == ["w/ hat and a//b"]


def test_escaped_slash_is_literal():
    assert prompts(r"AC\/DC poster") == ["AC/DC poster"]


def test_slash_group_ignores_trailing_punctuation():
    assert prompts("red/green.") == ["red.", "green."]


def test_slash_group_inside_a1111_emphasis():
    assert prompts("(red/green:1.2)") == ["(red:1.2)", "(green:1.2)"]


def test_a1111_emphasis_and_scheduling_pass_through():
    t = "(masterpiece:1.2), [cat:dog:0.5], ((sharp))"
    assert prompts(t) == [t]


@pytest.mark.parametrize("ch", ["{", "}", "|", "/", "_", "\\"])
def test_escapes_make_metacharacters_literal(ch):
    assert prompts(f"a \\{ch} b") == [f"a {ch} b"]


def test_backslash_before_other_characters_is_kept():
    assert prompts(r"\(literal parens\)") == [r"\(literal parens\)"]


def test_weights_are_parsed():
    alt = parse("{0.7::a|0.3::b}").parts[0]
    assert [o.weight for o in alt.options] == [0.7, 0.3]


def test_choose_k_is_ordered_distinct_selection():
    assert sorted(prompts("{2$$a|b|c}")) == sorted(["a,b", "a,c", "b,a", "b,c", "c,a", "c,b"])


def test_choose_k_custom_joiner():
    assert "a and b" in prompts("{2$$ and $$a|b|c}")


def test_choose_k_range():
    assert sorted(prompts("{1-2$$a|b}")) == sorted(["a", "b", "a,b", "b,a"])


def test_explicit_factor_name():
    v = next(compile_template("{@color: red|green} car").expand())
    assert v.factors == {"color": "red"}


def test_explicit_name_on_wildcard(tmp_path):
    (tmp_path / "animals.txt").write_text("cat\ndog\n")
    from harness.wildcards import WildcardLibrary
    t = compile_template("{@pet: __animals__}", library=WildcardLibrary([tmp_path]))
    assert [v.factors for v in t.expand()] == [{"pet": "cat"}, {"pet": "dog"}]


def test_automatic_names_come_from_content():
    t = compile_template("x {red|green} y {cat|dog}")
    assert t.factors == ["red|green", "cat|dog"]


def test_automatic_names_stable_when_unrelated_text_changes():
    a = compile_template("a photo of a {red|green} car").factors
    b = compile_template("{cute|ugly} drawing: {red|green} car, highly detailed").factors
    assert "red|green" in a and "red|green" in b


def test_automatic_names_show_text_as_written_and_wildcards_by_path(tmp_path):
    from harness.wildcards import WildcardLibrary

    assert compile_template(r"{oil\_painting|watercolor} {1\/2 cup|cup} {\$5 bill|coin}").factors == [
        "oil_painting|watercolor", "1/2 cup|cup", "$5 bill|coin"]
    # the grammar's own separators stay escaped: two options are not named like three
    assert compile_template(r"{a\|b|c} {a|b|c} {x\{y\}|z\\w}").factors == [
        r"a\|b|c", "a|b|c", r"x\{y\}|z\\w"]
    (tmp_path / "artists.txt").write_text("greg rutkowski\nalphonse mucha\n")
    lib = WildcardLibrary([tmp_path])
    before = compile_template("a cat{, by __artists__|}", library=lib).factors
    (tmp_path / "artists.txt").write_text("greg rutkowski\nalphonse mucha\nclaude monet\n")
    after = compile_template("a cat{, by __artists__|}", library=lib).factors
    assert before == after == [", by __artists__|", "artists"]


@pytest.mark.parametrize("template", ["{@my color: red|blue} car", "{@color red|blue} car", "{@: a|b}"])
def test_a_malformed_factor_name_is_an_error_not_prompt_text(template):
    with pytest.raises(GrammarError, match="bad factor name") as err:
        compile_template(template)
    assert err.value.column == 2 and r"write \@ for a literal" in str(err.value)


def test_an_escaped_at_sign_starts_an_option_literally():
    assert [v.prompt for v in compile_template(r"{\@handle|name} x").expand()] == ["@handle x", "name x"]


def test_template_files_drop_a_byte_order_mark_and_reject_bytes_that_are_not_utf8(tmp_path):
    from harness.wildcards import WildcardLibrary

    (tmp_path / "greek.txt").write_bytes("\ufeffalpha\nbeta\n".encode("utf-8"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\nok\n".encode("latin-1"))
    lib = WildcardLibrary([tmp_path])
    assert [v.prompt for v in compile_template("__greek__", library=lib).expand()] == ["alpha", "beta"]
    with pytest.raises(GrammarError) as err:
        compile_template("__latin1__", library=lib)
    assert f"{tmp_path / 'latin1.txt'}:1:4: not UTF-8 text (byte 0xe9)" in str(err.value)
    (tmp_path / "marked.txt").write_bytes(b"\xef\xbb\xbfa cat\n{b|c}\xe9\n")  # a mark, then a bad byte
    with pytest.raises(GrammarError) as err:
        compile_template("__marked__", library=lib)
    assert f"{tmp_path / 'marked.txt'}:2:6: not UTF-8 text (byte 0xe9)" in str(err.value)


def test_repeated_automatic_names_get_suffix():
    assert compile_template("{a|b} {a|b}").factors == ["a|b", "a|b#2"]


def test_duplicate_explicit_names_are_an_error():
    with pytest.raises(GrammarError, match="used twice"):
        compile_template("{@c: a|b} {@c: x|y}")


def test_a_named_factor_in_a_wildcard_used_twice_names_the_file_and_why(tmp_path):
    from harness.wildcards import WildcardLibrary

    (tmp_path / "named.txt").write_text("{@c: a|b} x\n")
    with pytest.raises(GrammarError) as err:
        compile_template("__named__ __named__", library=WildcardLibrary([tmp_path]))
    assert str(err.value).startswith(f"{tmp_path / 'named.txt'}:1:1: factor name 'c' is reached twice: the "
                                     "wildcard that holds it is used more than once")


def test_factor_value_is_the_chosen_option_text():
    vs = list(compile_template("{@m: {oil|ink} painting|photo}").expand())
    assert [v.factors["m"] for v in vs] == ["oil painting", "ink painting", "photo"]


def test_wildcard_reads_lines_skipping_comments_and_blanks(tmp_path):
    (tmp_path / "colors.txt").write_text("# colours\nred\n\n  green  \n")
    from harness.wildcards import WildcardLibrary
    assert prompts("__colors__ car", library=WildcardLibrary([tmp_path])) == ["red car", "green car"]


def test_wildcard_subfolders_and_nesting(tmp_path):
    (tmp_path / "artists").mkdir()
    (tmp_path / "artists" / "painters.txt").write_text("monet\n{van gogh|turner}\n")
    (tmp_path / "all.txt").write_text("__artists/painters__\n")
    from harness.wildcards import WildcardLibrary
    got = prompts("by __all__", library=WildcardLibrary([tmp_path]))
    assert got == ["by monet", "by van gogh", "by turner"]


def test_search_path_prefers_earlier_folder(tmp_path):
    first, second = tmp_path / "exp", tmp_path / "grammars"
    first.mkdir(), second.mkdir()
    (first / "x.txt").write_text("mine\n")
    (second / "x.txt").write_text("shared\n")
    from harness.wildcards import WildcardLibrary
    assert prompts("__x__", library=WildcardLibrary([first, second])) == ["mine"]


# ----------------------------------------------------------------------------- errors


def error(template, **kw) -> GrammarError:
    with pytest.raises(GrammarError) as e:
        compile_template(template, **kw)
    return e.value


def test_unbalanced_open_brace_points_at_it():
    e = error("a photo {red|green")
    assert (e.line, e.column) == (1, 9)
    assert str(e).splitlines()[-1] == "  " + " " * 8 + "^"


def test_unbalanced_close_brace():
    e = error("a}b")
    assert e.column == 2 and "unbalanced '}'" in e.message


def test_error_on_second_line_reports_line_and_column():
    e = error("first line\nsecond {x|y")
    assert (e.line, e.column) == (2, 8)
    assert "second {x|y" in str(e)


def test_empty_template():
    assert "empty template" in error("   ").message


def test_bar_outside_braces():
    assert "outside braces" in error("a|b").message


def test_bad_weight():
    e = error("{1.2.3::a|b}")
    assert "bad weight '1.2.3'" in e.message and e.column == 2


@pytest.mark.parametrize("template, message, column", [
    ("{-1$$a|b}", "bad choose-k count '-1'", 2), ("{1.5$$a|b}", "bad choose-k count '1.5'", 2),
    ("x {k$$a|b}", "bad choose-k count 'k'", 4), ("{nan::a|b}", "bad weight 'nan'", 2),
    ("{a|1.5x::b}", "bad weight '1.5x'", 4),
])
def test_a_malformed_count_or_weight_is_an_error_not_prompt_text(template, message, column):
    e = error(template)
    assert e.message.startswith(message) and e.column == column


def test_escaped_or_wordy_dollars_and_colons_stay_text():
    assert prompts("{std::vector|list} {x\\$\\$|y} {1\\:\\:1|z}") == [
        f"{a} {b} {c}" for a in ("std::vector", "list") for b in ("x$$", "y") for c in ("1::1", "z")]


def test_all_zero_weights():
    assert "weigh 0" in error("{0::a|0::b}").message


def test_k_larger_than_options():
    assert "only 2 options" in error("{3$$a|b}").message


def test_unknown_wildcard_suggests_close_names(tmp_path):
    (tmp_path / "colors.txt").write_text("red\n")
    from harness.wildcards import WildcardLibrary
    e = error("a __colours__ car", library=WildcardLibrary([tmp_path]))
    assert "did you mean __colors__" in e.message and e.column == 3


def test_wildcard_cycle_is_reported_with_chain(tmp_path):
    (tmp_path / "a.txt").write_text("x __b__\n")
    (tmp_path / "b.txt").write_text("__a__\n")
    from harness.wildcards import WildcardLibrary
    assert "wildcard cycle: a -> b -> a" in error("__a__", library=WildcardLibrary([tmp_path])).message


def test_error_inside_wildcard_file_names_file_and_line(tmp_path):
    (tmp_path / "w.txt").write_text("ok\n# c\nbroken {x\n")
    from harness.wildcards import WildcardLibrary
    e = error("__w__", library=WildcardLibrary([tmp_path]))
    assert e.origin.endswith("w.txt") and (e.line, e.column) == (3, 8)


def test_a_wildcard_line_holding_a_form_feed_or_line_separator_stays_one_line(tmp_path):
    """Only line feeds end a wildcard line (as the template's own line numbers count them): a form feed
    or U+2028 inside a line neither splits an option nor shifts the line of a later error."""
    lib = _library(tmp_path, ff="one\x0ctwo\nthree {x|y\n", ls="a\u2028b\nc\n")
    e = error("__ff__", library=lib)
    assert e.origin.endswith("ff.txt") and (e.line, e.column) == (2, 7)
    assert [v.prompt for v in compile_template("__ls__", library=lib).expand()] == ["a\u2028b", "c"]


def test_deep_nesting_is_a_grammar_error():
    assert "nest deeper" in error("{" * 200 + "}" * 200).message


def test_render_round_trips_a1111_text():
    t = parse("{@c: (red:1.2)|1.5::x} and \\{")
    assert parse(render(t)) == t


@pytest.mark.parametrize("template", [r"{1.5x\:\:a|b}", r"{nan\:\:a|b}", r"{.5x\:\: a}", r"{0,\:\:}"])
def test_text_that_looks_like_a_malformed_weight_renders_escaped(template):
    """An option whose text starts like a weight the parser would refuse (`1.5x::`) stays escaped when
    rendered, so mutants of it parse."""
    t = parse(template)
    assert parse(render(t)) == t and "\\:" in render(t)


def test_impossible_choose_k_is_an_error():
    assert "cannot pick 2 different texts" in error("x {2$$a|a}").message


def test_every_wildcard_problem_is_reported_in_one_error(tmp_path):
    """Unknown, empty and cyclic wildcards all at once, in template order; a file reached twice
    reports its own problems once."""
    (tmp_path / "w.txt").write_text("x __gone__\n")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    (tmp_path / "loop.txt").write_text("__loop__\n")
    from harness.wildcards import WildcardLibrary
    e = error("__colr__ __w__ __w__ __empty__ __loop__", library=WildcardLibrary([tmp_path]))
    assert (e.line, e.column) == (1, 1) and "unknown wildcard __colr__" in e.message
    assert [x.message.split(":")[0] for x in e.also] == [
        "unknown wildcard __gone__", "wildcard __empty__ has no options", "wildcard cycle"]
    assert str(e).count("__gone__: no gone.txt") == 1 and "w.txt:1:3" in str(e)
    assert e.args == (str(e),)


# ----------------------------------------------------------------------------- choose-k, names, slashes, wildcards


def _library(tmp_path, **files):
    from harness.wildcards import WildcardLibrary

    for name, text in files.items():
        (tmp_path / f"{name}.txt").write_text(text)
    return WildcardLibrary([tmp_path])


def test_choose_k_from_a_lone_wildcard_picks_among_its_lines(tmp_path):
    lib = _library(tmp_path, col="red\ngreen\n{x|y}\n")
    t = compile_template("{2$$__col__}", library=lib)
    got = {v.prompt: v.factors for v in t.expand()}
    assert sorted(got) == sorted(["red,green", "red,x", "red,y", "green,red", "green,x", "green,y",
                                  "x,red", "x,green", "y,red", "y,green"])
    assert t.factors == ["col", "x|y"] and got["red,y"] == {"col": "red,y", "x|y": "y"}
    assert compile_template("{@pair: 2$$ and $$__col__}", library=lib).factors == ["pair", "x|y"]


def test_choose_k_from_a_wildcard_with_too_few_lines_is_an_error(tmp_path):
    e = error("a {3$$__col__}", library=_library(tmp_path, col="red\ngreen\n"))
    assert "choose-k asks for 3 but wildcard __col__ has only 2 options" in e.message and e.column == 3


def test_choose_k_separator_runs_to_the_next_dollars():
    assert sorted(prompts("{2$$ | $$a|b|c}")) == sorted(["a | b", "a | c", "b | a", "b | c", "c | a", "c | b"])
    assert prompts(r"{2$$ \ $$a|b}") == [r"a \ b", r"b \ a"]


def test_choose_k_without_separator_leaves_later_dollars_alone():
    assert prompts("{2$$a|b} {2$$c|d}")[0] == "a,b c,d"
    assert prompts("{1$$a|b} costs $$5") == ["a costs $$5", "b costs $$5"]


def test_choose_k_separator_holding_a_brace_is_an_error_at_the_brace():
    e = error("x {2$$ {y} $$a|b|c}")
    assert (e.line, e.column) == (1, 8) and "separator cannot hold '{' or '}'" in e.message
    e = error("{2$$ } $$a|b}")  # a "}" in the separator closes the alternation after one option
    assert (e.line, e.column) == (1, 6) and "separator cannot hold '{' or '}'" in e.message
    assert "has only 1 option" in error("{2$$a} costs $$5").message  # no separator meant: a short count


def test_an_empty_alternation_is_an_error_that_shows_the_alternatives():
    for template, column, length in (("a {} b", 3, 2), ("{@x:}", 1, 5), ("{2::}", 1, 5)):
        e = error(template)
        assert (e.line, e.column) == (1, column) and "empty alternation" in e.message
        assert "{|text} for an optional clause" in e.message and "\\{\\} for literal braces" in e.message
        assert str(e).splitlines()[-1].strip() == "^" * length
    assert prompts("a {|} b") == ["a  b"] and prompts("a \\{\\} b") == ["a {} b"]


def test_choose_k_counts_options_after_the_separator():
    e = error("{2$$cheap|costs $$}")
    assert "only 1 option (the separator 'cheap|costs ' runs up to the next '$$')" in e.message


def test_factor_name_goes_before_the_choose_k_count():
    assert compile_template("{@n: 2$$a|b|c}").factors == ["n"]
    e = error("{2$$@n: a|b|c}")
    assert e.column == 5 and "write the name first, {@n: 2$$a|b|c}" in e.message
    assert error("{2$$ and $$@n: a|b}").column == 12


def test_a_second_factor_name_is_an_error():
    e = error("{@n: @m: a}")
    assert e.column == 6 and "a second factor name '@m'" in e.message


def test_factor_names_may_start_with_any_letter():
    assert compile_template("{@Ωmega: c|d} {@o\u0308l: e|f}").factors == ["Ωmega", "öl"]  # read as NFC
    assert "factor name 'öl' is used twice" in error("{@öl: a|b} {@o\u0308l: e|f}").message
    assert "bad factor name '@1x'" in error("{@1x: a|b}").message


def test_slash_shorthand_treats_combining_marks_as_part_of_a_word():
    nfd = "cafe\u0301/the\u0301 au lait"
    assert prompts(nfd) == ["caf\u00e9 au lait", "th\u00e9 au lait"]  # composed on reading
    assert prompts("café/thé") == ["café", "thé"]
    assert prompts("x\u0301/q\u0301 z") == ["x\u0301 z", "q\u0301 z"]  # no composed form: the mark stays


def test_slash_shorthand_keeps_common_abbreviations_literal():
    text = "man w/o hat, B/W photo, cats and/or dogs, n/a, c/o, a/k/a, s/he, 25 y/o"
    assert prompts(text) == [text]
    assert len(prompts("photo/35mm of red/green lambo, w/o hat")) == 4


def test_error_in_indented_wildcard_line_points_at_the_file_column(tmp_path):
    lib = _library(tmp_path, spaces="ok\n   {bad\n", tab="ok\n\tx __nope__\n")
    e = error("__spaces__", library=lib)
    assert (e.line, e.column) == (2, 4) and str(e).splitlines()[1:] == ["     {bad", "     ^"]
    e = error("__tab__", library=lib)
    assert (e.line, e.column) == (2, 4) and str(e).splitlines()[1:] == ["  \tx __nope__", "  \t  ^^^^^^^^"]


def test_zero_weight_options_are_never_sampled():
    import random

    t = compile_template("{2$$0::a|b|c|0::d} {0::x|y}")
    drawn = {v.prompt for v in t.sample(200, random.Random(0), replace=True)}
    assert drawn == {"b,c y", "c,b y"}
    assert {v.prompt for v in t.sample(2, random.Random(1))} == {"b,c y", "c,b y"}


def test_a_choose_k_whose_options_spell_the_same_text_samples_every_seed_as_the_paths_weigh_it():
    """A selection that repeats a text is drawn again whole: each seed succeeds (even when most draws
    repeat one), and a sample follows the probabilities of the enumerated paths, the fallback's."""
    import random
    from collections import Counter

    from harness.expand.paths import _iter

    t = compile_template("{5$$a|{a|b}|{a|c}|{a|d}|{a|e}}x{1|2|3|4|5|6|7|8|9}")
    for seed in range(3):
        drawn = t.sample(2000, random.Random(seed), replace=True)
        assert all(len(set(v.prompt.split("x")[0].split(","))) == 5 for v in drawn)
    assert len(compile_template("{7$$a|{a|b}|{a|c}|{a|d}|{a|e}|{a|f}|{a|g}}").sample(3, random.Random(0))) == 3
    for template in ("{2$$a|a|b}", "{x|{2$$a|{a|b}}}", "{2$${9999::a|1::b}|{9999::a|1::c}}"):
        tree = compile_template(template).tree
        expected = Counter()
        for text, _, p in _iter(tree):
            expected[text] += p
        assert sum(expected.values()) == pytest.approx(1.0)
        n = 400 if "9999" in template else 4000  # nearly every draw of that one repeats "a" 1000 times first
        counts = Counter(v.prompt for v in compile_template(template).sample(n, random.Random(5), replace=True))
        assert set(counts) <= set(expected)
        for text, p in expected.items():
            assert counts[text] / n == pytest.approx(p, abs=0.07 if n == 400 else 0.03), (template, text)


def test_choose_k_needing_zero_weight_options_is_an_error_naming_the_alternation():
    e = error("x {2$$0::a|0::b|c}")
    assert e.column == 4 and "only 1 option of non-zero weight (of 3)" in e.message
    e = error("x {2$$a|a|0::b}")
    assert e.column == 3 and "cannot pick 2 different texts from its options of non-zero weight" in e.message


def test_naming_many_repeated_alternations_is_linear():
    import time

    from harness.expand import assign_names
    from harness.grammar import parse

    tree = parse("{a|b}" * 20_000)
    t0 = time.perf_counter()
    names = [alt.name for alt in assign_names(tree).parts]
    assert time.perf_counter() - t0 < 10  # about 0.5 s; quadratic naming took minutes
    assert names[:3] == ["a|b", "a|b#2", "a|b#3"] and names[-1] == "a|b#20000"


def test_an_automatic_name_taken_by_an_explicit_one_gets_the_next_suffix():
    assert compile_template("{a} {@a: x|y} {a} {a}").factors == ["a#2", "a", "a#3", "a#4"]


def test_expand_limit_does_not_count_first():
    import time

    from harness.expand import raw_count

    t = compile_template("{a|}{|a} {b|c|d|e|f}" + "{b|c|d|e|f|g|h|i|j|k}" * 5)
    assert raw_count(t.tree) == 2_000_000
    t0 = time.perf_counter()
    assert [v.prompt for v in t.expand(limit=1)] == ["a bbbbbb"]
    assert time.perf_counter() - t0 < 1  # a few ms; counting first walked all 2 million paths


def test_a_large_choose_k_whose_options_overlap_the_separator_lists_each_prompt_once():
    # 40 options, 2-3 chosen: 60,840 selections, too many to list while counting. `x and` + ` and ` +
    # `y` and `x` + ` and ` + `and y` spell one prompt, so the count cannot be the number of selections.
    options = "|".join(["x", "and y", "x and", "y"] + [f"f{i}" for i in range(36)])
    compiled = compile_template("{2-3$$ and $$" + options + "}")
    listed = [v.prompt for v in compiled.expand()]
    assert len(listed) == len(set(listed)) == compiled.count() < 60_840
    assert "x and and y" in listed


def test_compile_template_without_a_library_searches_harness_grammars_then_cwd_grammars(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "hue.txt").write_text("teal\nocher\n")
    (tmp_path / "grammars").mkdir()
    (tmp_path / "grammars" / "thing.txt").write_text("kite\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_GRAMMARS", str(tmp_path / "env"))
    assert prompts("a __hue__ __thing__") == ["a teal kite", "a ocher kite"]


def test_harness_grammars_naming_a_file_or_nothing_is_named_when_a_wildcard_is_unknown(tmp_path, monkeypatch):
    """A wildcard file (or a mistyped folder) in $HARNESS_GRAMMARS is left out of the search, and the
    unknown-wildcard error says so rather than listing the folders as if it had been searched."""
    (tmp_path / "hue.txt").write_text("teal\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_GRAMMARS", os.pathsep.join([str(tmp_path / "hue.txt"), str(tmp_path / "gramars")]))
    e = error("a __hue__ kite")
    assert (e.line, e.column) == (1, 3)
    assert (f"$HARNESS_GRAMMARS names {tmp_path / 'hue.txt'}: a file, not a folder, left out; "
            f"$HARNESS_GRAMMARS names {tmp_path / 'gramars'}: no such folder, left out") in e.message, e.message
    from harness.wildcards import WildcardLibrary  # a library given its own path never read the variable

    e = error("a __hue__ kite", library=WildcardLibrary([tmp_path / "elsewhere"]))
    assert "unknown wildcard __hue__" in e.message and "HARNESS_GRAMMARS names" not in e.message
    monkeypatch.setenv("HARNESS_GRAMMARS", str(tmp_path))
    assert prompts("a __hue__ kite") == ["a teal kite"]
    assert "HARNESS_GRAMMARS names" not in error("a __nope__ kite").message


def test_a_choose_k_of_zero_is_an_error_at_its_count():
    e = error("x {0$$a|b}")
    assert (e.line, e.column) == (1, 4) and "choose-k 0 always chooses nothing" in e.message
    assert error("{ 0 - 0 $$a|b}").message.startswith("choose-k 0 - 0 always chooses nothing")
    assert prompts("x{0-1$$ a| b}") == ["x", "x a", "x b"]


def test_an_escaped_slash_belongs_to_its_word_and_quotes_around_a_group_do_not_hide_it():
    assert prompts(r"AC\/DC/metallica poster") == ["AC/DC poster", "metallica poster"]
    assert compile_template(r"AC\/DC/metallica").factors == ["AC/DC|metallica"]
    assert prompts("a 'red/green' car") == ["a 'red' car", "a 'green' car"]
    assert prompts("rock'n'roll/jazz band") == ["rock'n'roll band", "jazz band"]


def test_composed_and_decomposed_accents_spell_one_prompt(tmp_path):
    """`é` typed as one character (NFC) or as `e` and a combining accent (NFD) looks the same and tokenizes
    the same: one prompt, in NFC, from a template or a wildcard file."""
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert prompts(f"{{{composed}|{decomposed}}} au lait") == [f"{composed} au lait"]
    (tmp_path / "drinks.txt").write_text(f"{decomposed}\ntea\n", encoding="utf-8")
    from harness.wildcards import WildcardLibrary

    got = [v.prompt for v in compile_template(f"{{{composed}|__drinks__}}", library=WildcardLibrary([tmp_path])).expand()]
    assert got == [composed, "tea"]
    e = error(f"{decomposed} {{a|b")  # columns count characters as seen
    assert (e.line, e.column) == (1, 6)


def test_sampling_reaches_prompts_too_unlikely_to_draw_when_the_template_spells_few():
    """2^40 paths spell 41 prompts; the two extremes have probability 2^-40 each, yet a sample of all
    41 draws them from the distinct prompts' probabilities, with the factors `expand` gives them."""
    import random

    t = compile_template("{a|}" * 40)
    drawn = t.sample(41, random.Random(0))
    assert sorted(len(v.prompt) for v in drawn) == list(range(41))
    by_prompt = {v.prompt: v.factors for v in drawn}
    assert set(by_prompt[""].values()) == {""} and set(by_prompt["a" * 40].values()) == {"a"}
    assert list(by_prompt["a"].values()) == ["a"] + [""] * 39  # its first spelling
    with pytest.raises(ValueError, match="cannot sample 42 distinct prompts: the template has only 41"):
        t.sample(42, random.Random(0))


def test_a_choose_k_of_millions_of_paths_that_keeps_repeating_a_text_is_drawn_from_its_texts():
    """Nearly every selection repeats "a" and its 8 million paths are too many to list: the selections
    come from its distinct texts, quickly, each about as likely as the weights make it."""
    import random
    import time
    from collections import Counter

    tail = "{|}" * 10
    t = compile_template("{2$${99999::a|1::b}" + tail + "|{99999::a|1::c}" + tail + "}")
    t0 = time.perf_counter()
    counts = Counter(v.prompt for v in t.sample(800, random.Random(3), replace=True))
    assert time.perf_counter() - t0 < 20  # well under a second; redrawing 1000 times per prompt took minutes
    assert set(counts) == {"a,b", "b,a", "a,c", "c,a"}
    assert all(abs(c / 800 - 0.25) < 0.06 for c in counts.values())
    assert {v.prompt for v in t.sample(4, random.Random(0))} == set(counts)
