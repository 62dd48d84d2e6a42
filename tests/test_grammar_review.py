"""Grammar and mutation edge cases: a private-use character the slash rule once used inside, templates
whose nesting is too deep to walk, and mutants whose clauses each read alone."""

from __future__ import annotations

import pytest

from harness.expand import compile_template
from harness.grammar import escape_text, parse


def prompts(template: str) -> list[str]:
    return [v.prompt for v in compile_template(template).expand()]


@pytest.mark.parametrize("text", ["icon\ue000 x", "AC\ue000DC/metallica", "a\ue000/b", "x\ue001y/z"])
def test_a_private_use_character_is_kept_literally_and_splits_no_word(text):
    assert prompts(escape_text(text)) == [text]


def test_escaped_slashes_still_join_words_beside_the_private_use_character():
    assert prompts("AC\\/DC/metallica \ue000") == ["AC/DC \ue000", "metallica \ue000"]
    assert prompts("red/green\ue000") == ["red/green\ue000"]  # no whole token: the character is no end mark
    assert [type(p).__name__ for p in parse("a \ue000 red/green").parts] == ["Text", "Alt"]


def test_reweight_reads_square_brackets_around_an_alternation_as_emphasis():
    import random

    from harness.mutate import Resources, reweight

    for seed in range(20):
        m = reweight("[{red|blue} car]", random.Random(seed), Resources())
        assert m.args["old"] == round(1 / 1.1, 4) and m.prompt == f"({{red|blue}} car:{m.args['new']:g})"


def test_reweight_leaves_a_weight_written_by_an_alternation_alone():
    import random

    from harness.mutate import Resources, reweight
    from harness.mutate.clauses import weight_by_choice

    assert weight_by_choice("(red car:{0.8|1.5})") and not weight_by_choice("({red|blue} car:1.5)")
    assert all(reweight("(red car:{0.8|1.5})", random.Random(s), Resources()) is None for s in range(10))
    for seed in range(10):
        m = reweight("a photo, (red car:{0.8|1.5})", random.Random(seed), Resources())
        assert m.args["clause"] == 0 and m.prompt.endswith(", (red car:{0.8|1.5})")


def test_crossover_children_compile_with_the_wildcards_they_read(tmp_path):
    import random

    from harness.mutate import Resources, crossover
    from harness.wildcards import WildcardLibrary

    (tmp_path / "named.txt").write_text("{@nm: p|q}\n")
    library = WildcardLibrary([tmp_path])
    resources = Resources.load(library, lists=[])
    children = [crossover("a __named__, red car, big", "blue bus, b __named__, small", random.Random(s), resources)
                for s in range(30)]
    assert all(c is not None for c in children)
    for c in children:
        assert c.prompt.count("__named__") == 1
        compile_template(c.prompt, library=library)


def test_a_clause_that_starts_with_a_combining_mark_is_named_before_any_mutant(tmp_path):
    import random

    from harness.experiment import ExperimentError
    from harness.mutate import leave_one_out, mutants
    from harness.search import evolve

    prompt = "a cat, \u0301x, dog"
    for attempt in (lambda: mutants(prompt, 3, random.Random(0)), lambda: leave_one_out(prompt)):
        with pytest.raises(ValueError, match=r"clause 2 of .* starts with U\+0301 \(COMBINING ACUTE ACCENT\)"):
            attempt()
    exp = tmp_path / "s.toml"
    exp.write_text('prompt = "a {red|blue} castle, \\u0301x"\nseeds = [1]\ncheckpoints = ["tiny"]\nsteps = 1\n'
                   'width = 64\nheight = 64\nmetrics = ["clip_score:model=tiny"]\n[search]\npopulation = 2\n'
                   'generations = 1\nmetrics = ["clip_score:model=tiny"]\nweights = [1.0]\n')
    with pytest.raises(ExperimentError, match=r"key 'prompt': clause 2 of"):
        evolve(exp, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_template_nested_deeper_than_the_stack_is_a_grammar_error_in_every_walk(tmp_path):
    import random

    from harness.grammar import GrammarError
    from harness.wildcards import WildcardLibrary

    for i in range(7):
        inner = f"__w{i + 1}__" if i < 6 else "end"
        (tmp_path / f"w{i}.txt").write_text("{x|" * 30 + inner + "}" * 30 + "\n")
    tpl = compile_template("__w0__", library=WildcardLibrary([tmp_path]), origin="deep.txt")
    for walk in (tpl.count_info, lambda: next(tpl.expand(limit=1)), lambda: tpl.sample(1, random.Random(0))):
        with pytest.raises(GrammarError, match="deep.txt:1:1: the template nests too deeply"):
            walk()


def test_many_parts_after_a_large_one_expand_without_deep_recursion():
    big = "{x|{" + "{a|b}" * 16 + "}}"  # 65,537 paths: walked, not held
    tpl = compile_template(" ".join(["{a|b}"] * 500) + " " + big)
    first = [v.prompt for v in tpl.expand(limit=3)]
    assert first == [" ".join(["a"] * 500) + " x", " ".join(["a"] * 500) + " " + "a" * 16,
                     " ".join(["a"] * 500) + " " + "a" * 15 + "b"]


def test_first_spelling_skips_options_whose_text_is_absent_and_still_finds_the_first_path(tmp_path):
    """`{2$$__mixed__}` over lines `{red|blue} thingN`: the quick test on each option's own text (`thingN`)
    keeps the first path's factors, as a walk over every path finds them."""
    import random

    from harness.expand.paths import walk
    from harness.expand.spelling import first_spelling
    from harness.wildcards import WildcardLibrary

    (tmp_path / "mixed.txt").write_text("".join(f"{{red|blue}} thing{i}\n" for i in range(12)) + "thing1\n")
    tpl = compile_template("{2$$__mixed__}", library=WildcardLibrary([tmp_path]))
    first: dict = {}
    for text, factors in walk(tpl.tree):
        first.setdefault(text, factors)
    for text in random.Random(0).sample(sorted(first), 40) + ["red thing1,thing1", "thing1,blue thing11"]:
        assert first_spelling(tpl.tree, text) == first[text], text
    assert first_spelling(tpl.tree, "red thing1,thing99") is None
