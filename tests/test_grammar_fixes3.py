"""Expansion, sampling and grammar behaviours fixed after a third review: each test names one."""

import json
import random
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from harness.expand import TooFewPrompts, compile_template, exhaustive, sampling
from harness.expand.paths import raw_count, walk
from harness.expand.spelling import first_spelling
from harness.grammar import Alt, GrammarError, Option, Seq, Text, _merge_texts, parse, render
from harness.wildcards import WildcardLibrary
from templates import error, prompts

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORDS = "{" + "|".join(f"w{j} " for j in range(100)) + "}"


def harness(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


# ----------------------------------------------------------------------------- lazy merging (--limit)


def test_a_limit_on_unambiguous_words_before_forty_optional_clauses_comes_at_once():
    """41 million prompts from 10^6 x 2^40 paths: the whole merge gives up, and walking every path under
    the first words' prefix (2^40) before the 42nd prompt never ended."""
    r = harness("expand", WORDS * 3 + "{a|}" * 40, "--limit", "50", timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:41] == ["w0 w0 w0 " + "a" * k for k in range(40, -1, -1)]
    assert lines[41:] == ["w0 w0 w1 " + "a" * k for k in range(40, 31, -1)]


def test_the_lazily_merged_prompts_carry_their_first_spellings_factors():
    words = "".join("{@x%d: %s" % (i, WORDS[1:]) for i in range(3))
    t = compile_template(words + "".join(f"{{@o{i}: a|}}" for i in range(40)))
    start = time.perf_counter()
    variants = list(t.expand(limit=43))
    assert time.perf_counter() - start < 10
    third = variants[42]
    assert third.prompt == "w0 w0 w1 " + "a" * 39
    assert [third.factors[f"o{i}"] for i in range(40)] == ["a"] * 39 + [""]
    assert [third.factors[f"x{i}"] for i in range(3)] == ["w0 ", "w0 ", "w1 "]


@pytest.mark.parametrize("template", [
    WORDS * 2 + "{a|}" * 30 + WORDS,        # ambiguous between two unambiguous ends
    "{a|}" * 30 + WORDS * 3,                # ambiguous first
    "x{y {a|}|{a|}}" * 25 + WORDS * 3,      # no part alone is unambiguous at the start
])
def test_templates_past_the_whole_merge_start_at_once_and_agree_with_their_paths(template):
    t = compile_template(template)
    start = time.perf_counter()
    got = [(v.prompt, v.factors) for v in t.expand(limit=300)]
    assert time.perf_counter() - start < 10
    first: dict = {}
    for text, factors in walk(t.tree):  # the first 300 distinct texts come early in path order here
        first.setdefault(text, dict(factors))
        if len(first) == 300:
            break
    assert got == list(first.items())


def test_an_alternation_that_does_not_merge_is_merged_option_by_option():
    t = compile_template("{" + WORDS * 3 + "{a|}" * 30 + "|z}")
    start = time.perf_counter()
    got = [(v.prompt, v.factors) for v in t.expand(limit=70)]
    assert time.perf_counter() - start < 10
    texts = [f"w0 w0 w{j} " + "a" * k for j in range(3) for k in range(30, -1, -1)][:70]
    assert got == [(text, dict(first_spelling(t.tree, text))) for text in texts]


def _walked(tree) -> list:
    """What exhaustive expansion gives by definition: each text at its first path, with its factors."""
    first: dict = {}
    for text, factors in walk(tree):
        first.setdefault(text, dict(factors))
    return list(first.items())


leaf = st.sampled_from(["a", "b", "ab", " ", ""])


def _alt(bodies, k):
    options = tuple(Option(body) for body in bodies)
    kk = None if k is None else (min(k, len(options)),) * 2
    return Alt(options, k=kk if kk and kk[0] else None)


def _parts(depth: int):
    part = leaf.map(Text)
    if depth:
        bodies = st.lists(_parts(depth - 1).map(lambda ps: Seq(tuple(_merge_texts(ps)))), min_size=2, max_size=3)
        part = st.one_of(part, st.builds(_alt, bodies, st.one_of(st.none(), st.none(), st.just(2))))
    return st.lists(part, min_size=1, max_size=8)


def _compiled(parts):
    try:
        return compile_template(render(Seq(tuple(_merge_texts(parts)))))
    except GrammarError:
        return None


def _small(parts) -> bool:
    return raw_count(Seq(tuple(parts))) <= 3000


small_templates = _parts(2).filter(_small).map(_compiled).filter(lambda t: t is not None and t.tree.parts)


@SETTINGS
@given(small_templates, st.sampled_from([1, 2, 3, 5, 8, 40, 10**9]))
def test_merging_with_any_limit_gives_the_walked_prompts_in_order_with_their_factors(t, merge):
    """The merge is forced (no walk threshold) and given a small limit, so runs are split, alternations
    listed option by option and sequences' unambiguous ends walked: the prompts, their order and factors
    stay those of walking every path."""
    with mock.patch.multiple(exhaustive, _WALK=0, _FAR_MORE=0, _MERGE=merge):
        got = [(v.prompt, v.factors) for v in exhaustive.expand(t.tree)]
    assert got == _walked(t.tree)


# ----------------------------------------------------------------------------- choose-k and nested zero weights


@pytest.mark.parametrize("template, column", [
    ("{2$$a|{1::a|0::b}}", 1),
    ("x {2$$a|{{0::b|a}|0::c}}", 3),
    ("{1-2$$a|{1::a|0::b}}", 1),
    ("{2$$a|{1::a|0::{b|c}}}", 1),
])
def test_a_choose_k_that_sampling_cannot_fill_for_nested_zero_weights_is_an_error_at_it(template, column):
    e = error(template)
    assert e.column == column and e.line == 1
    assert "cannot pick 2 different texts from its options of non-zero weight" in e.message
    assert "also those inside an option" in e.message


def test_a_choose_k_whose_nested_zero_weights_leave_different_texts_samples():
    t = compile_template("{2$$a|{1::b|0::a}}")
    assert [v.prompt for v in t.expand()] == ["a,b", "b,a"]
    assert sorted(v.prompt for v in t.sample(2, random.Random(0))) == ["a,b", "b,a"]


def test_a_choose_k_over_a_wildcard_whose_lines_hold_zero_weights_is_checked_too(tmp_path):
    (tmp_path / "w.txt").write_text("a\n{1::a|0::b}\n")
    e = error("x {2$$__w__}", library=WildcardLibrary([tmp_path]))
    assert e.column == 3 and "non-zero weight" in e.message


# ----------------------------------------------------------------------------- wildcard chains


def _chain(folder: Path, n: int) -> WildcardLibrary:
    for i in range(n):
        (folder / f"c{i}.txt").write_text(f"__c{i + 1}__\n")
    (folder / f"c{n}.txt").write_text("x\n")
    return WildcardLibrary([folder])


def test_a_wildcard_chain_deeper_than_64_is_an_error_at_the_wildcard_showing_the_chain(tmp_path):
    e = error("__c0__", library=_chain(tmp_path, 200))  # was a RecursionError past about 150
    assert e.origin == str(tmp_path / "c63.txt") and (e.line, e.column) == (1, 1)
    assert "wildcards nest deeper than 64 levels: c0 -> c1 -> " in e.message
    assert e.message.endswith("c62 -> c63 -> c64")


def test_a_wildcard_chain_of_64_expands(tmp_path):
    assert prompts("__c0__", library=_chain(tmp_path, 63)) == ["x"]


def test_a_recursion_error_while_compiling_is_a_grammar_error(monkeypatch):
    import harness.expand as expand

    def too_deep(tree):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(expand, "assign_names", too_deep)
    e = error("a {b|c}")
    assert "nests too deeply" in e.message and (e.line, e.column) == (1, 1)


def test_braces_in_every_file_of_a_long_chain_are_a_grammar_error(tmp_path):
    for i in range(60):
        (tmp_path / f"c{i}.txt").write_text("{" * 20 + f"__c{i + 1}__|y" + "}" * 20 + "\n")
    (tmp_path / "c60.txt").write_text("x\n")
    assert "nests too deeply" in error("__c0__", library=WildcardLibrary([tmp_path])).message


# ----------------------------------------------------------------------------- the --with-replacement hint


@pytest.mark.parametrize("template, size", [("{0::a|b}", "2"), ("{a|b}", "5")])
def test_every_too_few_distinct_prompts_error_suggests_with_replacement(template, size):
    r = harness("expand", template, "--sample", size)
    assert r.returncode == 2
    assert r.stderr.strip().endswith("; sample fewer, or add --with-replacement"), r.stderr


def test_too_few_distinct_prompts_is_its_own_error_type(monkeypatch):
    t = compile_template("{0::a|b}")
    with pytest.raises(TooFewPrompts, match="only 1 distinct prompt has non-zero weight"):
        t.sample(2, random.Random(0))
    with pytest.raises(TooFewPrompts, match="cannot sample 3 distinct prompts"):
        t.sample(3, random.Random(0))
    monkeypatch.setattr(sampling, "_undrawn", lambda tree, seen: None)
    with pytest.raises(TooFewPrompts, match="could only draw 1 distinct prompts of 2"):
        t.sample(2, random.Random(0))


def test_other_sampling_errors_get_no_hint():
    r = harness("expand", "{a|b}", "--sample", "1", "--seed", "x")
    assert "with-replacement" not in r.stderr
    with pytest.raises(ValueError) as info:
        compile_template("{a|b}").sample(-1, random.Random(0))
    assert not isinstance(info.value, TooFewPrompts)


# ----------------------------------------------------------------------------- spaces after @name:


@pytest.mark.parametrize("template", ["{@c:  red|blue}", "{@c:\t red|blue}", "{@c:red|blue}", "{ @c :   red|blue}"])
def test_every_space_after_a_factor_name_is_dropped_as_before_a_weight(template):
    t = compile_template(template)
    assert [v.factors for v in t.expand()] == [{"c": "red"}, {"c": "blue"}]
    assert parse(render(parse(template))) == parse(template)


def test_a_weight_after_a_name_and_spaces_still_reads():
    t = compile_template("{@c:   2::a|b}")
    assert [v.prompt for v in t.expand()] == ["a", "b"] and t.tree.parts[0].options[0].weight == 2.0
    assert error("{@c::a|b}").column == 4


# ----------------------------------------------------------------------------- combining marks that would join later


@pytest.mark.parametrize("template, column, where", [
    ("caf{e|a}\u0301 {x|y}", 9, "right after '}'"),
    ("{caf\u00e9|cafe{\u0301|}}", 12, "at the start of an option"),
    ("{a|\u0301}", 4, "at the start of an option"),
    ("{2$$\u0301$$a|b}", 5, "at the start of a choose-k separator"),
    ("e__colours__\u0301", 13, "right after a wildcard"),
    ("\u0301a", 1, "at the start of the template"),
])
def test_a_combining_mark_where_it_would_join_a_letter_only_in_the_prompt_is_an_error_at_it(template, column, where):
    e = error(template, library=WildcardLibrary([ROOT / "grammars"]))
    assert e.column == column and where in e.message
    assert "U+0301 (COMBINING ACUTE ACCENT)" in e.message and "write the accented letter whole" in e.message


def test_a_wildcard_line_that_starts_with_a_combining_mark_is_an_error_in_its_file(tmp_path):
    (tmp_path / "acc.txt").write_text("x\n  \u0301y\n")
    e = error("cafe__acc__", library=WildcardLibrary([tmp_path]))
    assert e.origin == str(tmp_path / "acc.txt") and (e.line, e.column) == (2, 3)


def test_combining_marks_inside_a_text_still_compose():
    assert prompts("{cafe\u0301|the}{ x| y}") == ["caf\u00e9 x", "caf\u00e9 y", "the x", "the y"]
    assert compile_template("{caf\u00e9|cafe\u0301} {x|y}").count() == 2


mark_texts = st.text(alphabet=st.sampled_from(["e", "a", " ", "\u0301", "\u0327", "\u00e9"]), min_size=1, max_size=4)


def _mark_parts(depth: int):
    part = mark_texts.map(Text)
    if depth:
        bodies = st.lists(_mark_parts(depth - 1).map(lambda ps: Seq(tuple(_merge_texts(ps)))), min_size=1,
                          max_size=3).filter(lambda bs: len(bs) > 1 or bs[0].parts)
        part = st.one_of(part, st.builds(lambda bs: Alt(tuple(Option(b) for b in bs)), bodies))
    return st.lists(part, min_size=1, max_size=4)


@SETTINGS
@given(_mark_parts(2).filter(_small))
def test_every_prompt_of_a_template_that_compiles_is_nfc_and_counted_once(parts):
    t = _compiled(parts)
    if t is None:
        return
    got = [v.prompt for v in t.expand()]
    assert all(unicodedata.is_normalized("NFC", p) for p in got)
    assert len(set(got)) == len(got) == t.count()


def test_the_reviewers_repros_through_the_cli():
    r = harness("expand", "caf{e|a}\u0301 {x|y}")
    assert r.returncode == 2 and "combining mark" in r.stderr
    r = harness("expand", "{@c:  red|blue}", "--format", "jsonl")
    assert [json.loads(line)["factors"]["c"] for line in r.stdout.splitlines()] == ["red", "blue"]
