"""Mutation reads emphasis as the runner does (escaped brackets, escaped backslashes), and a wildcard
file with a syntax error does not hide the other wildcard problems of a template."""

import random

from harness import emphasis as A1111
from harness.mutate import reweight, split_clauses
from harness.mutate.clauses import literal
from harness.mutate.resources import Resources


def test_reweight_of_a_clause_in_emphasis_with_an_escaped_bracket_records_the_weight_the_runner_reads():
    # `(\(cat)` is the text "(cat" at 1.1 (README: `\(` passes through the grammar; the runner reads it as
    # the character). reweight must move that weight and write one `(clause:w)`, so the recorded weight is
    # the one the runner reads.
    prompt = r"(\(cat)"
    assert A1111.parse(literal(prompt)) == [("(cat", 1.1)]
    m = reweight(prompt, random.Random(0), Resources())
    runs = A1111.parse(literal(m.prompt))
    assert m.args["old"] == 1.1, m
    assert runs == [("(cat", m.args["new"])], (m.prompt, runs)


def test_a_comma_inside_emphasis_after_an_escaped_backslash_does_not_split_clauses():
    # Template `x, \\\\(a, b)` is the prompt `x, \\(a, b)`: A1111 reads `\\` as one backslash and `(a, b)`
    # as emphasis at 1.1, so (README, Clauses) its comma is inside `()` and the prompt has two clauses.
    # `_clause_parts` takes the second backslash as escaping the `(`, splits inside the emphasis, and
    # leave-one-out (and delete/reorder) then write prompts with an unmatched bracket.
    from harness.mutate import leave_one_out

    prompt = r"x, \\\\(a, b)"
    assert A1111.parse(literal(prompt)) == [("x, \\", 1.0), ("a, b", 1.1)]
    assert len(split_clauses(prompt)) == 2, split_clauses(prompt)
    for m in leave_one_out(prompt):
        A1111.parse(literal(m.prompt))  # raises EmphasisError on a broken bracket


def test_every_unknown_wildcard_is_reported_even_when_another_wildcard_file_has_a_syntax_error(tmp_path):
    # README: "Every unknown, empty or cyclic wildcard of a template is reported in one error". A syntax
    # error in another wildcard's file is raised at once from `resolving._resolve`, and the unknown
    # `__nope__` and empty `__blank__` found before it are dropped from the message.
    import pytest

    from harness.expand import compile_template
    from harness.grammar import GrammarError
    from harness.wildcards import WildcardLibrary

    (tmp_path / "bad.txt").write_text("a\n{b|c\n", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(GrammarError) as err:
        compile_template("__nope__ __blank__ __bad__", library=WildcardLibrary([tmp_path]))
    message = str(err.value)
    assert "unbalanced '{'" in message
    assert "__nope__" in message and "__blank__" in message, message


def test_prompts_are_nfc_when_a_hangul_jamo_follows_an_alternation():
    # README: "Text is kept literally, in Unicode NFC form ... a combining mark cannot ... follow a `}`
    # or a wildcard, where it would join a letter only in the prompt". A Hangul vowel/final jamo (category
    # Lo, not M) joins the syllable before it under NFC just as a mark does, but `no_mark_here` only looks
    # at category M: `{가|나}ᆨ` is accepted and spells prompts that are not NFC (`각` typed whole is
    # another prompt). Either refuse it as for a combining mark or keep the prompts NFC.
    import unicodedata

    from harness.expand import compile_template
    from harness.grammar import GrammarError

    try:
        prompts = [v.prompt for v in compile_template("{\uac00|\ub098}\u11a8").expand()]
    except GrammarError:
        return
    assert all(unicodedata.is_normalized("NFC", p) for p in prompts), [ascii(p) for p in prompts]
