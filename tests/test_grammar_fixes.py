"""Grammar, slash, mutation and template-error behaviours fixed after review: each test names one."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from harness import mutate as mu
from harness.experiment import ExperimentError, load_experiment
from harness.grammar import parse, render
from harness.wildcards import WildcardLibrary
from templates import error, prompts

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = WildcardLibrary([ROOT / "grammars"])




def harness(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd)


# ----------------------------------------------------------------------------- swap and emphasis weights


@pytest.mark.parametrize("prompt, kept", [("2 cats, (dog:1.2)", "(dog:1.2)"),
                                          ("2 cats, (dog: 2 )", "(dog: 2 )"),
                                          ("2 cats, ((dog:1.3):2)", "((dog:1.3):2)"),
                                          ("2 cats, (dog {x|y}:2)", "(dog {x|y}:2)"),
                                          ("2 cats, [fox:wolf:2]", "[fox:wolf:2]")])  # prompt editing's step
def test_swap_never_rewrites_the_digits_of_an_emphasis_weight(prompt, kept):
    """A factor with number options (`{1|2|3} cats`) swaps the word `2`, not the `1` or `2` of `:1.2`."""
    resources = mu.Resources.load(LIBRARY, ["colours"], template="{1|2|3} cats")
    found = []
    for seed in range(12):
        found += mu.mutants(prompt, 6, random.Random(seed), resources, operators=["swap"])
    assert found
    for m in found:
        assert m.prompt.endswith(", " + kept) and m.args["old"] == "2" and m.args["at"] == 0, m


def test_swap_still_exchanges_a_word_inside_emphasis():
    resources = mu.Resources.load(LIBRARY, [], template="{1|2|3} cats")
    found = {m.prompt for seed in range(8)
             for m in mu.mutants("(2 cats:1.2)", 4, random.Random(seed), resources, operators=["swap"])}
    assert found == {"(1 cats:1.2)", "(3 cats:1.2)"}


def test_mutate_cli_swap_keeps_the_weight():
    r = harness("mutate", "2 cats, (dog:1.2)", "--template", "{1|2|3} cats", "--ops", "swap", "-n", "6",
                "--lists", "colours", "--format", "jsonl")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows and all(row["prompt"].endswith(", (dog:1.2)") for row in rows), r.stdout


# ----------------------------------------------------------------------------- choose-k with too few options


def test_choose_k_with_too_few_options_before_another_choose_k_reports_its_count():
    alone = error("{2$$cat}")
    e = error("{2$$cat}{2$$x|y}")
    assert e.message == alone.message == "choose-k asks for 2 but the alternation has only 1 option"
    assert (e.line, e.column) == (alone.line, alone.column) == (1, 2)
    e = error("{2$$cat} {x|{2$$y|z}}")
    assert e.message == alone.message and e.column == 2


def test_a_separator_that_holds_a_closing_brace_is_still_named():
    for template in ("{2$$ } $$a|b}", "{2$$ } x } $$a|b}"):
        e = error(template)
        assert "a choose-k separator cannot hold '{' or '}'" in e.message and e.column == 6, template


# ----------------------------------------------------------------------------- mutate --lists


def test_mutate_lists_are_stripped_like_ops():
    r = harness("mutate", "a cat, dog", "--lists", "styles, colours", "--ops", "insert", "-n", "8",
                "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    assert {json.loads(line)["args"]["list"] for line in r.stdout.splitlines()} <= {"styles", "colours"}


@pytest.mark.parametrize("name", ["my list", "_priv", "a__b", "tail_"])
def test_mutate_lists_that_cannot_be_wildcards_are_an_error_naming_the_option(tmp_path, name):
    (tmp_path / f"{name}.txt").write_text("foggy\nmisty\n")
    r = harness("mutate", "a cat, dog", "--lists", f"colours,{name}", "--ops", "insert", "--grammars", tmp_path)
    assert r.returncode == 2 and not r.stdout, r.stdout
    assert f"--lists 'colours,{name}': {name!r} is not a list name" in r.stderr, r.stderr
    assert "starts with a letter or digit and holds only letters, digits, '_', '-', '.' and '/'" in r.stderr
    assert "<template>" not in r.stderr


def test_resources_refuse_a_list_name_that_is_no_wildcard_name(tmp_path):
    (tmp_path / "my list.txt").write_text("foggy\n")
    with pytest.raises(ValueError, match=r"modifier list 'my list': not a list name"):
        mu.Resources.load(WildcardLibrary([tmp_path]), ["my list"])


def test_mutate_lists_given_twice_or_empty_are_errors():
    r = harness("mutate", "a cat, dog", "--lists", "colours, colours", "--ops", "insert")
    assert r.returncode == 2 and "list 'colours' is given twice" in r.stderr
    r = harness("mutate", "a cat, dog", "--lists", " , ", "--ops", "insert")
    assert r.returncode == 2 and "--lists ' , ': no list named" in r.stderr


# ----------------------------------------------------------------------------- weights and words


@pytest.mark.parametrize("template, expected", [("{a|information::c}", ["a", "information::c"]),
                                                ("{red|nancy:: x}", ["red", "nancy:: x"]),
                                                ("{Infinite::loop|b}", ["Infinite::loop", "b"]),
                                                ("{nan2::x|y}", ["nan2::x", "y"])])
def test_words_starting_with_inf_or_nan_are_text(template, expected):
    assert prompts(template) == expected
    assert parse(render(parse(template))) == parse(template)


@pytest.mark.parametrize("template, bad", [("{nan::a|b}", "nan"), ("{inf::a}", "inf"), ("{-Infinity ::a}", "-Infinity"),
                                           ("{a|+NaN::b}", "+NaN"), ("{1.5x::a}", "1.5x")])
def test_a_nan_or_infinite_weight_is_still_an_error(template, bad):
    e = error(template)
    assert e.message.startswith(f"bad weight '{bad}': expected a finite number >= 0 before '::'")


# ----------------------------------------------------------------------------- slash groups glued to a brace


def test_a_slash_run_glued_to_a_brace_or_wildcard_is_text(tmp_path):
    assert prompts("{a|b}red/green") == ["ared/green", "bred/green"]
    assert prompts("red/green{a|b}") == ["red/greena", "red/greenb"]
    (tmp_path / "hue.txt").write_text("dark\nlight\n")
    library = WildcardLibrary([tmp_path])
    assert prompts("red/green__hue__", library=library) == ["red/greendark", "red/greenlight"]
    assert prompts("__hue__red/green", library=library) == ["darkred/green", "lightred/green"]


def test_a_slash_group_apart_from_a_brace_still_splits():
    assert prompts("{a|b} red/green") == ["a red", "a green", "b red", "b green"]
    assert prompts("red/green {a|b}") == ["red a", "red b", "green a", "green b"]
    assert prompts("{red/green|blue}") == ["red", "green", "blue"]
    assert prompts("{a|b}red/green blue/gray") == [
        "ared/green blue", "ared/green gray", "bred/green blue", "bred/green gray"]
    assert prompts("{a|b}(red/green)") == ["a(red)", "a(green)", "b(red)", "b(green)"]


def test_a_glued_slash_run_renders_back_to_the_same_template():
    tree = parse("{a|b}red/green x/y")
    assert parse(render(tree)) == tree


# ----------------------------------------------------------------------------- experiment template carets


def test_experiment_template_errors_draw_the_caret_as_expand_does(tmp_path):
    """A tab before the error is kept and the whole wildcard is underlined, as `expand` shows it."""
    (tmp_path / "exp.toml").write_text('prompt = "a\\tcat, __nosuch__ x"\n')
    with pytest.raises(ExperimentError) as info:
        load_experiment(tmp_path / "exp.toml")
    (problem,) = [p for p in info.value.problems if "key 'prompt'" in p]
    drawn = str(error("a\tcat, __nosuch__ x", library=WildcardLibrary([tmp_path]))).split("\n")[1:]
    assert drawn[1] == "   \t     " + "^" * len("__nosuch__")
    assert problem.split("\n")[1:] == ["    " + row for row in drawn]


def test_stage_template_errors_draw_the_caret_under_the_text_as_written(tmp_path):
    (tmp_path / "exp.toml").write_text('prompt = "a"\n[[stages]]\nprompt = "__parent__,\\t{x|y"\n')
    with pytest.raises(ExperimentError) as info:
        load_experiment(tmp_path / "exp.toml")
    (problem,) = [p for p in info.value.problems if "stages[0].prompt" in p]
    assert problem.split("\n")[1:] == ["      __parent__,\t{x|y", "                 \t^"]


def test_a_template_that_meant_a1111s_colon_escape_is_told_to_double_its_backslash(tmp_path):
    """`[castle\\:hill]` in a template is the grammar's escape: the prompt gets `[castle:hill]`, prompt
    editing; the error says how to write A1111's escape there, and the doubled form plans."""
    from harness.experiment import ExperimentError, load_experiment
    from harness.plan import make_plan

    exp = tmp_path / "e.toml"
    exp.write_text('prompt = \'a [castle\\:hill] at dusk\'\nseeds = [1]\ncheckpoints = ["tiny"]\n')
    with pytest.raises(ExperimentError) as err:
        make_plan(load_experiment(exp))
    assert "prompt editing" in str(err.value) and "A1111's `\\:` is written `\\\\:` there" in str(err.value)
    exp.write_text('prompt = \'a [castle\\\\:hill] at dusk\'\nseeds = [1]\ncheckpoints = ["tiny"]\n')
    (job,) = make_plan(load_experiment(exp)).jobs
    assert job.prompt == "a [castle\\:hill] at dusk" and job.emphasis == "a1111"
