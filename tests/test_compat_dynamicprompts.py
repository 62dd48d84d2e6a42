"""Where our syntax and dynamicprompts' overlap, both give the same prompt sets."""

from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings, strategies as st

from dynamicprompts.generators import CombinatorialPromptGenerator
from dynamicprompts.wildcards import WildcardManager

from harness.expand import compile_template
from harness.wildcards import WildcardLibrary

WORDS = ["cat", "dog", "red car", "by monet", "blue"]


def option(depth):
    base = st.sampled_from(WORDS)
    if depth == 0:
        return base
    return st.one_of(base, st.builds(lambda w, a: f"{w} {a}", base, alternation(depth - 1)))


def alternation(depth):
    opts = st.lists(option(depth), min_size=1, max_size=3, unique=True)

    def build(options, k, empty):
        options = list(options) + ([""] if empty and k is None else [])
        head = f"{min(k, len(options))}$$" if k else ""
        return "{" + head + "|".join(options) + "}"

    return st.builds(build, opts, st.one_of(st.none(), st.integers(1, 2)), st.booleans())


templates = st.lists(st.one_of(alternation(2), st.sampled_from(WORDS + ["__animals__"])),
                     min_size=1, max_size=3).map(" ".join).filter(
    lambda t: compile_template(t, library=WildcardLibrary([])).tree is not None if "__" not in t else True)


def _generators(tmp: Path):
    (tmp / "animals.txt").write_text("cat\nfox {red|grey}\n# comment\n\nowl\n")
    return CombinatorialPromptGenerator(WildcardManager(tmp)), WildcardLibrary([tmp])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(templates)
def test_expansion_sets_match_dynamicprompts(tmp_path, template):
    theirs_gen, library = _generators(tmp_path)
    compiled = compile_template(template, library=library)
    assume(compiled.count() <= 5_000)  # dynamicprompts stops at max_prompts, and is slow with choose-k
    theirs = set(theirs_gen.generate(template, max_prompts=100_000))
    ours = {v.prompt for v in compiled.expand()}
    assert ours == theirs


def test_choose_k_matches_dynamicprompts(tmp_path):
    theirs_gen, library = _generators(tmp_path)
    for t in ["{2$$a|b|c}", "{2$$ and $$a|b|c}", "{1-2$$a|b}", "{3$$a|b|c}", "{2$$ | $$a|b|c}", r"{2$$ \| $$a|b}",
              "{2$$a|b} {2$$ - $$c|d}", "{2$$__animals__}", "x {1-2$$ and $$__animals__} y", "{3$$__animals__}"]:
        theirs = set(theirs_gen.generate(t, max_prompts=1000))
        assert {v.prompt for v in compile_template(t, library=library).expand()} == theirs, t
