"""Algebraic properties of the grammar, checked on generated templates."""

import random

import pytest

from hypothesis import HealthCheck, example, given, settings, strategies as st

from harness.expand import compile_template, count, expand, sample
from harness.grammar import Alt, GrammarError, Option, Seq, Text, Wildcard, _merge_texts, parse, render

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Small alphabets make duplicate prompts likely, which is what we want to test.
words = st.sampled_from(["a", "b", "ab", " ", "x y", ", ", "c"])
any_text = st.text(alphabet=st.sampled_from(list("ab ,:$@/_\\{}|()[].0123456789")), min_size=1, max_size=8)


def seqs(leaf_text, depth: int):
    part = leaf_text.map(Text)
    if depth > 0:
        part = st.one_of(part, alts(leaf_text, depth - 1))
    return st.lists(part, max_size=4).map(lambda ps: Seq(tuple(_merge_texts(list(ps)))))


def alts(leaf_text, depth: int):
    def build(options, k, joiner, weights):
        opts = tuple(Option(body, w) for body, w in zip(options, weights))
        kk = None
        if k is not None:
            lo = min(k, len(opts))
            kk = (lo, min(lo + 1, len(opts)))
        return Alt(opts, k=kk, joiner=joiner if kk else None)

    options = st.lists(seqs(leaf_text, depth), min_size=1, max_size=3).filter(
        lambda opts: len(opts) > 1 or opts[0].parts)  # `{}` is an error
    return options.flatmap(lambda opts: st.builds(
        build, st.just(opts), st.one_of(st.none(), st.integers(0, 2)),
        st.one_of(st.none(), st.sampled_from([" and ", "-", ", "])),
        st.lists(st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.0])), min_size=len(opts), max_size=len(opts))))


from harness.expand import raw_count

def _compiles(tree) -> bool:
    try:
        compile_template(render(tree))
    except GrammarError:
        return False
    return True


templates = seqs(words, 2).filter(lambda s: render(s).strip() != "" and raw_count(s) <= 3000 and _compiles(s))


@SETTINGS
@given(templates)
def test_count_equals_number_of_distinct_expansions(tree):
    t = compile_template(render(tree))
    prompts = [v.prompt for v in t.expand()]
    assert len(prompts) == len(set(prompts))
    assert count(t.tree) == len(set(prompts))


@SETTINGS
@given(templates, st.integers(0, 2**32))
def test_sampling_is_deterministic_for_a_seed(tree, seed):
    t = compile_template(render(tree))
    n = min(3, t.count())
    a = sample(t.tree, n, random.Random(seed))
    b = sample(t.tree, n, random.Random(seed))
    assert a == b and len({v.prompt for v in a}) == n


@SETTINGS
@given(templates, st.integers(0, 2**32))
def test_samples_are_among_the_expansions_with_the_same_factors(tree, seed):
    """A sampled prompt carries the factors `expand` gives it, even when several choices spell it."""
    t = compile_template(render(tree))
    expanded = {v.prompt: v.factors for v in t.expand()}
    for v in sample(t.tree, 5, random.Random(seed), replace=True):
        assert expanded[v.prompt] == v.factors
    for v in sample(t.tree, min(3, len(expanded)), random.Random(seed)):
        assert expanded[v.prompt] == v.factors


def test_an_ambiguous_prompt_is_labelled_alike_by_every_sampling_seed():
    t = compile_template("{a|}{|a}")
    expected = {v.prompt: v.factors for v in t.expand()}
    assert expected["a"] == {"a|": "a", "|a": ""}
    for seed in range(8):
        assert all(v.factors == expected[v.prompt] for v in t.sample(3, random.Random(seed)))


@SETTINGS
@given(templates)
def test_expansions_contain_no_grammar_metacharacters(tree):
    for v in compile_template(render(tree)).expand():
        assert not set("{}|") & set(v.prompt)


@settings(max_examples=300, deadline=None)
@given(seqs(any_text, 2))
def test_parse_render_parse_is_identity(tree):
    source = render(tree)
    if not source.strip():
        return
    assert parse(source) == tree


@SETTINGS
@given(seqs(any_text, 2).map(lambda s: Seq(s.parts + (Wildcard("w/x", name="n"),))))
def test_render_round_trips_named_wildcards(tree):
    assert parse(render(tree)) == tree


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(), max_size=40) | st.text(alphabet=list("{}|/_\\$@:0.5-2 ab\n"), max_size=40))
def test_parser_raises_only_grammar_error(text):
    try:
        t = compile_template(text)
        list(expand(t.tree, limit=50))
    except GrammarError:
        pass


@SETTINGS
@given(templates)
def test_the_first_spelling_search_finds_the_factors_expand_gives(tree):
    from harness.expand.spelling import first_spelling

    t = compile_template(render(tree))
    for v in t.expand(limit=200):
        assert dict(first_spelling(t.tree, v.prompt)) == v.factors
    assert first_spelling(t.tree, "no such prompt {") is None


@SETTINGS
@given(templates)
def test_walking_the_paths_gives_what_iter_gives_in_the_same_order(tree):
    """`walk` (what expansion and counting read) skips the choose-k probabilities, nothing else."""
    from harness.expand.paths import _iter, walk

    t = compile_template(render(tree))
    assert list(walk(t.tree)) == [(text, factors) for text, factors, _ in _iter(t.tree)]


def test_prompts_sampled_from_millions_of_paths_carry_their_first_spelling():
    t = compile_template("{a|}{|a} " + "{b|c|d|e|f|g|h|i|j|k}" * 7)
    for v in t.sample(20, random.Random(0)) + t.sample(20, random.Random(1), replace=True):
        head = v.prompt.split(" ")[0]
        first = {"aa": ("a", "a"), "a": ("a", ""), "": ("", "")}[head]  # "a" is spelled "a|" first, never "|a"
        assert (v.factors["a|"], v.factors["|a"]) == first


def test_first_spelling_of_a_choose_k_follows_expansion_order():
    from harness.expand.spelling import first_spelling

    t = compile_template("{2$${a|}b|a{b|}|ab}x")
    expanded = {v.prompt: v.factors for v in t.expand()}
    for prompt, factors in expanded.items():
        assert dict(first_spelling(t.tree, prompt)) == factors


@SETTINGS
@given(templates)
def test_the_distinct_prompts_probabilities_are_the_sums_over_their_paths(tree):
    from collections import Counter

    from harness.expand.distribution import text_probabilities
    from harness.expand.paths import _iter

    t = compile_template(render(tree))
    expected: Counter = Counter()
    for text, _, p in _iter(t.tree):
        expected[text] += p
    got = text_probabilities(t.tree)
    assert set(got) == set(expected)
    assert all(got[text] == pytest.approx(p, abs=1e-12) for text, p in expected.items())



def _count_claim(tree, small):
    """(the count `_lang` gives with the explicit-set threshold patched to `small`, exact?, brute force)."""
    from unittest import mock

    from harness.expand import counting
    from harness.expand.paths import walk

    with mock.patch.object(counting, "_MATERIALISE", small):
        lang = counting._lang(tree)
    return lang.n, lang.exact, len({text for text, _ in walk(tree)})


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(templates, st.sampled_from([1, 2, 3, 5, 8]))
def test_a_count_claimed_exact_is_the_number_of_distinct_prompts_when_parts_are_handled_as_large(tree, small):
    """With the explicit-set threshold patched small, the reasoning for large languages (dangling
    suffixes and prefixes, runs of small parts) decides; an exact claim must match brute force."""
    t = compile_template(render(tree))
    n, exact, distinct = _count_claim(t.tree, small)
    assert n == distinct if exact else n >= distinct


# Chains of optional and overlapping clauses, where one part's texts begin or end another's; a part may be
# a chain of its own in braces (`{...}`), so a large language meets another on either side.
overlapping = st.sampled_from(["", "a", "b", "ab", "ba", "aa", ", a"])
clauses = st.one_of(overlapping.filter(bool).map(Text), st.lists(overlapping, min_size=2, max_size=3).map(
    lambda opts: Alt(tuple(Option(Seq(tuple(_merge_texts([Text(o)])))) for o in opts))))


def _chain(parts):
    return Seq(tuple(_merge_texts(list(parts))))


chains = st.lists(st.one_of(clauses, st.lists(clauses, min_size=2, max_size=4).map(
    lambda ps: Alt((Option(_chain(ps)),)))), min_size=2, max_size=7).map(_chain)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains, st.sampled_from([1, 2, 3, 4, 6]))
@example(parse("{|a}{|ab}{|b}"), 2)  # "ab" is a+ab's ""+b and ""+ab+"": found by what B adds after A's "a"
@example(parse("{|a}{{|ba}{|a}}"), 2)
def test_a_count_claimed_exact_for_a_chain_of_overlapping_clauses_is_the_brute_force_count(tree, small):
    n, exact, distinct = _count_claim(tree, small)
    assert n == distinct if exact else n >= distinct


@SETTINGS
@given(templates)
def test_merging_distinct_texts_part_by_part_keeps_each_prompts_first_path(tree):
    """What `expand` yields where paths far outnumber prompts: the same prompts, order and factors as
    walking every path and keeping the first of each text."""
    from harness.expand.exhaustive import distinct
    from harness.expand.paths import walk

    t = compile_template(render(tree))
    first: dict = {}
    for text, factors in walk(t.tree):
        first.setdefault(text, factors)
    assert distinct(t.tree) == list(first.items())
