"""Mutation operators: clause splitting, each operator by name, lineage, properties, `harness mutate`."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import mutate as mu
from harness.core import canonical_json
from harness.expand import compile_template
from harness.grammar import escape_text
from harness.wildcards import WildcardLibrary

from commands import harness

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = WildcardLibrary([ROOT / "grammars"])
RESOURCES = mu.Resources.load(LIBRARY)
PROMPT = "a red castle on a hill, by greg rutkowski, oil painting, highly detailed"


def only(name, resources=RESOURCES, lists=None):
    return mu.Resources.load(LIBRARY, lists) if lists else resources


# ----------------------------------------------------------------------------- clauses


def test_commas_inside_emphasis_and_brackets_do_not_split_and_empty_clauses_drop():
    assert mu.split_clauses("a cat,  (red, blue:1.2),,by x,[a, b:0.5] ,") == [
        "a cat", "(red, blue:1.2)", "by x", "[a, b:0.5]"]


def test_commas_inside_alternations_stay_in_their_clause():
    assert mu.split_clauses("a {red, hot|cold} cat{, by x|}, photo") == ["a {red, hot|cold} cat{, by x|}", "photo"]


def test_whitespace_is_normalised_and_escaped_brackets_are_text():
    clauses = mu.split_clauses("  a \t big\n cat ,  \\(literal, paren\\) ")
    assert [mu.literal(c) for c in clauses] == ["a big cat", "\\(literal", "paren\\)"]


def test_stray_closing_bracket_is_text_and_does_not_hide_later_commas():
    assert mu.split_clauses("a), b") == ["a)", "b"]


def test_literal_returns_concrete_text_and_refuses_templates():
    assert mu.literal(escape_text("cat_dog 1/2")) == "cat_dog 1/2"
    with pytest.raises(ValueError, match="alternations"):
        mu.literal("a {b|c}")


# ----------------------------------------------------------------------------- operators by name


def test_swap_replaces_an_artist_clause_by_another_line_of_its_list():
    res = mu.Resources.load(LIBRARY, ["artists"])
    m = mu.apply("swap", "a castle, by greg rutkowski", random.Random(0), res)
    assert m.operator == "swap" and m.args["vocabulary"] == "artists" and m.args["old"] == "greg rutkowski"
    painters_and_illustrators = set(RESOURCES.lists[[v.name for v in RESOURCES.lists].index("artists")].items)
    assert m.args["new"] in painters_and_illustrators - {"greg rutkowski"}
    assert m.prompt == f"a castle, by {m.args['new']}"


def test_swap_reaches_a_list_line_inside_emphasis_and_keeps_its_weight():
    """After a reweight, `(by greg rutkowski:0.5)` is still an artists line: swap changes the artist and
    keeps the weight, so a search does not freeze a weighted modifier."""
    res = mu.Resources.load(LIBRARY, ["artists"])
    m = mu.apply("swap", "a castle, (by greg rutkowski:0.5)", random.Random(0), res)
    assert m.args["old"] == "greg rutkowski" and m.prompt == f"a castle, (by {m.args['new']}:0.5)"


def test_swap_keeps_unweighted_and_nested_emphasis_around_a_list_line():
    res = mu.Resources.load(LIBRARY, ["artists"])
    for wrapped in ("[by greg rutkowski]", "((by greg rutkowski))", "[(by greg rutkowski:1.3)]"):
        m = mu.apply("swap", f"a castle, {wrapped}", random.Random(0), res)
        assert m.args["old"] == "greg rutkowski"
        assert m.prompt == "a castle, " + wrapped.replace("greg rutkowski", m.args["new"])


def test_a_word_swap_never_makes_a_clause_repeat_another():
    res = mu.Resources.load(LIBRARY, ["colours"])
    seen = {mu.apply("swap", "red car, blue car", random.Random(seed), res).prompt for seed in range(60)}
    assert len(seen) > 4 and not {"red car, red car", "blue car, blue car"} & seen
    assert all(len(set(p.split(", "))) == 2 for p in seen)


def test_a_swap_never_makes_a_clause_repeat_one_in_emphasis():
    """`(blue car:1.2)` holds `blue car`: a word swap of `red` must not give `blue car, (blue car:1.2)`, nor a
    line swap `by moebius, (by moebius:0.5)`."""
    colours, artists = mu.Resources.load(LIBRARY, ["colours"]), mu.Resources.load(LIBRARY, ["artists"])
    for prompt, res, twin in (("red car, (blue car:1.2)", colours, ("blue car", "red car")),
                              ("a castle, by greg rutkowski, (by moebius:0.5)", artists, ("by moebius",))):
        seen = {mu.apply("swap", prompt, random.Random(seed), res).prompt for seed in range(60)}
        assert len(seen) > 4
        for clause in twin:
            assert not [p for p in seen if f"{clause}, ({clause}:" in p or p.startswith(f"({clause}:")
                        and p.endswith(f", {clause}")], seen


def test_swap_exchanges_a_factor_option_of_the_source_template():
    res = mu.Resources.load(LIBRARY, [], template="a {red|blue|green} castle")
    m = mu.apply("swap", "a red castle, oil painting", random.Random(1), res)
    assert m.args["vocabulary"] == "factor:red|blue|green" and m.args["old"] == "red"
    assert m.prompt in ("a blue castle, oil painting", "a green castle, oil painting")


def test_swap_takes_an_option_inside_a_longer_one_as_the_whole_longer_option():
    """`red` inside `dark red` is no level of its own: swapping it alone gave `a dark dark red car`; the
    factor swaps only the whole option `dark red`. The colours list's `red` is a word of its own."""
    res = mu.Resources.load(LIBRARY, ["colours"], template="a {red|dark red} car")
    seen = {(m.prompt, m.args["vocabulary"], m.args["old"])
            for seed in range(60) if (m := mu.apply("swap", "a dark red car", random.Random(seed), res))}
    factor = {(p, old) for p, v, old in seen if v != "colours"}
    assert factor == {("a red car", "dark red")}
    assert all(p != "a dark dark red car" for p, _, _ in seen) and any(v == "colours" for _, v, _ in seen)
    # where the short option stands alone it is still swapped, by the factor and by the colours list
    alone = {mu.apply("swap", "a red car", random.Random(seed), res).prompt for seed in range(40)}
    assert "a dark red car" in alone and "a blue car" in alone


def test_a_word_of_one_factor_inside_another_factors_option_is_still_swapped():
    """`{@a: red|blue} {@b: car|red car}` on `a red car` (a=red, b=car): `red car` is b's other option
    standing there by chance, so a's `red` is still a's word to swap."""
    res = mu.Resources.load(LIBRARY, [], template="a {@a: red|blue} {@b: car|red car}")
    seen = {m.prompt for seed in range(60) if (m := mu.apply("swap", "a red car", random.Random(seed), res))}
    assert "a blue car" in seen


def test_swap_can_turn_an_optional_clause_off():
    res = mu.Resources.load(LIBRARY, [], template="a castle{, by greg rutkowski|}")
    m = mu.apply("swap", "a castle, by greg rutkowski", random.Random(0), res)
    assert m.prompt == "a castle" and m.args["new"] == ""


def test_swap_does_not_apply_when_nothing_is_swappable():
    assert mu.apply("swap", "zzz, qqq", random.Random(0), mu.Resources.load(LIBRARY, ["mediums"])) is None


def test_insert_adds_one_line_of_a_list_after_the_first_clause():
    res = mu.Resources.load(LIBRARY, ["lighting"])
    m = mu.apply("insert", "a castle, oil painting", random.Random(3), res)
    lighting = set(res.lists[0].items)
    clauses = mu.split_clauses(m.prompt)
    assert len(clauses) == 3 and clauses[0] == "a castle" and m.args["text"] in lighting
    assert clauses[m.args["at"]] == m.args["text"] and m.args["list"] == "lighting"


def test_insert_formats_artists_as_by_clauses():
    m = mu.apply("insert", "a castle", random.Random(0), mu.Resources.load(LIBRARY, ["artists"]))
    assert m.prompt.startswith("a castle, by ") and m.args["text"].startswith("by ")


def test_delete_drops_exactly_one_clause_and_needs_two():
    m = mu.apply("delete", PROMPT, random.Random(0), RESOURCES)
    before, after = mu.split_clauses(PROMPT), mu.split_clauses(m.prompt)
    assert len(after) == len(before) - 1 and before[m.args["clause"]] == m.args["text"]
    assert after == before[:m.args["clause"]] + before[m.args["clause"] + 1:]
    assert mu.apply("delete", "a castle", random.Random(0), RESOURCES) is None


def test_reorder_moves_one_clause_and_keeps_all_of_them():
    m = mu.apply("reorder", PROMPT, random.Random(2), RESOURCES)
    assert m.prompt != PROMPT and sorted(mu.split_clauses(m.prompt)) == sorted(mu.split_clauses(PROMPT))
    assert mu.split_clauses(m.prompt)[m.args["to"]] == m.args["text"]
    assert mu.apply("reorder", "a, a", random.Random(0), RESOURCES) is None


def test_crossover_takes_the_head_of_the_prompt_and_the_tail_of_the_partner():
    a, b = "a castle, oil painting, golden hour", "a dog, watercolor, 8k"
    m = mu.apply("crossover", a, random.Random(5), RESOURCES, partner=b)
    i, j = m.args["cut"], m.args["partner_cut"]
    assert mu.split_clauses(m.prompt) == mu.split_clauses(a)[:i] + mu.split_clauses(b)[j:]
    assert m.parents == (mu.prompt_key(a), mu.prompt_key(b)) and m.parent_key == mu.prompt_key(a)


def test_crossover_of_templates_never_gives_a_factor_name_twice():
    """Both halves name a factor `n`: only cuts that keep one of them make a child that compiles."""
    a, b = "{@n: a|b}, c", "d, {@n: x|y}, e"
    children = {mu.apply("crossover", a, random.Random(s), RESOURCES, partner=b).prompt for s in range(20)}
    assert children == {"{@n: a|b}, e", "{@n: a|b}, c, e"}
    for child in children:
        assert compile_template(child).count() == 2
    assert mu.apply("crossover", "{@n: a|b}, c", random.Random(0), RESOURCES, partner="d, {@n: x|y}") is None


def test_crossover_needs_a_partner():
    with pytest.raises(ValueError, match="partner"):
        mu.apply("crossover", PROMPT, random.Random(0), RESOURCES)


def test_reweight_wraps_a_clause_in_a1111_emphasis():
    m = mu.apply("reweight", "a castle, oil painting", random.Random(0), RESOURCES)
    clause = mu.split_clauses(m.prompt)[m.args["clause"]]
    assert m.args["old"] is None and clause == f"({['a castle', 'oil painting'][m.args['clause']]}:{m.args['new']:g})"


def test_reweight_moves_an_existing_weight_within_range():
    m = mu.apply("reweight", "(oil painting:1.2)", random.Random(0), RESOURCES)
    assert m.args["old"] == 1.2 and abs(m.args["new"] - 1.2) in (pytest.approx(0.1), pytest.approx(0.2))
    assert m.prompt == f"(oil painting:{m.args['new']:g})"
    top = mu.apply("reweight", "(x:2)", random.Random(0), RESOURCES)
    assert 1.7 < top.args["new"] < 2.0


def test_reweight_reads_every_a1111_weight_and_moves_one_outside_the_range_toward_it():
    for clause, old, moved in (("(w:.5)", 0.5, {0.3, 0.4, 0.6, 0.7}), ("(v:-1)", -1.0, {-0.9, -0.8}),
                               ("(z:5)", 5.0, {4.8, 4.9}), ("(y:0.1)", 0.1, {0.2, 0.3}),
                               ("(x:1.9)", 1.9, {1.7, 1.8, 2.0})):
        news = {mu.apply("reweight", clause, random.Random(s), RESOURCES).args["new"] for s in range(40)}
        m = mu.apply("reweight", clause, random.Random(0), RESOURCES)
        assert m.args["old"] == old and news == moved, (clause, news)
        assert m.prompt.count("(") == 1  # moved, not wrapped in a second emphasis


def test_reweight_writes_the_weight_it_records_whatever_its_size():
    from harness.emphasis import parse

    for clause in ("(x:2000000)", "(x:123456.7)", "(x:1.9)"):
        for seed in range(6):
            m = mu.apply("reweight", clause, random.Random(seed), RESOURCES)
            assert parse(m.prompt) == [("x", pytest.approx(m.args["new"]))], m.prompt  # not `x:2e+06` as text


def test_reweight_of_a_clause_in_brackets_gives_it_exactly_the_recorded_weight():
    """`[fog]` weighs 1/1.1 and `((x))` 1.21: a reweight replaces the brackets by one `(x:w)`, so the weight
    the runner reads is the recorded `new` (wrapping `[fog]` again would give it new/1.1)."""
    from harness.emphasis import parse

    for clause, inner, old in (("[fog]", "fog", 1 / 1.1), ("((misty hills))", "misty hills", 1.21),
                               ("[(by x:1.2)]", "by x", 1.2 / 1.1), ("(a castle)", "a castle", 1.1),
                               ("((a):1.3)", "a", 1.43), ("(a:b)", "a:b", 1.1)):
        mutants = [mu.apply("reweight", f"dusk, {clause}", random.Random(s), RESOURCES) for s in range(8)]
        assert {m.args["clause"] for m in mutants} == {0, 1}
        for m in mutants:
            if m.args["clause"] == 1:
                assert m.args["old"] == pytest.approx(old, abs=1e-4), clause
                per_char = [(ch, w) for text, w in parse(mu.literal(m.prompt)) for ch in text]
                assert "".join(ch for ch, _ in per_char) == f"dusk, {inner}"
                assert [w for _, w in per_char] == pytest.approx([1.0] * 6 + [m.args["new"]] * len(inner))
    m = mu.apply("reweight", "[a:b:0.5]", random.Random(0), RESOURCES)  # prompt editing is no weight
    assert m.args["old"] is None and m.prompt.startswith("([a:b:0.5]:")


def test_insert_does_not_add_a_modifier_the_prompt_has_in_emphasis():
    res = mu.Resources.load(LIBRARY, ["lighting"])
    prompt = "a castle, " + ", ".join(f"({line}:1.2)" for line in res.lists[0].items[1:])
    texts = {mu.apply("insert", prompt, random.Random(s), res).args["text"] for s in range(30)}
    assert texts == {res.lists[0].items[0]}


def test_no_operator_returns_its_parent_or_partner_unchanged():
    """A crossover whose partner's tail is already in the prompt would rebuild the prompt itself."""
    assert mu.apply("crossover", "a castle, oil painting", random.Random(1), RESOURCES, partner="oil painting") is None
    for s in range(30):
        m = mu.apply("crossover", "a, b", random.Random(s), RESOURCES, partner="a, b, c")
        assert m is None or mu.normalise(m.prompt) not in ("a, b", "a, b, c")


def test_unknown_operator_fails_listing_the_valid_ones():
    with pytest.raises(ValueError, match="did you mean 'swap'.*valid operators: swap, insert, delete"):
        mu.apply("swop", PROMPT, random.Random(0), RESOURCES)


def test_unknown_modifier_list_fails_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean mediums"):
        mu.Resources.load(LIBRARY, ["medium"])


def test_leave_one_out_gives_one_prompt_per_clause():
    out = mu.leave_one_out(PROMPT)
    clauses = mu.split_clauses(PROMPT)
    assert [m.prompt for m in out] == [", ".join(clauses[:i] + clauses[i + 1:]) for i in range(len(clauses))]
    assert [m.args for m in out] == [{"clause": i, "text": c} for i, c in enumerate(clauses)]
    with pytest.raises(ValueError, match="two or more"):
        mu.leave_one_out("a castle")


def test_mutants_are_distinct_and_differ_from_the_parent():
    ms = mu.mutants(PROMPT, 15, random.Random(0), RESOURCES, partners=["a dog, watercolor"])
    prompts = [m.prompt for m in ms]
    assert len(ms) == 15 and len(set(prompts)) == 15 and PROMPT not in prompts


def test_metacharacters_in_inserted_text_are_escaped(tmp_path):
    (tmp_path / "odd.txt").write_text("snake\\_case 1/2\n")
    lib = WildcardLibrary([tmp_path])
    m = mu.apply("insert", "a\\_b", random.Random(0), mu.Resources.load(lib, ["odd"]))
    variants = list(compile_template(m.prompt, library=lib).expand())
    assert [v.prompt for v in variants] == ["a_b, snake_case 1/2"]


# ----------------------------------------------------------------------------- properties

_word = st.text(alphabet="abcxyz _/\\:@$|{}()[]-.'1", min_size=1, max_size=8)
_literal = _word.map(escape_text)
_alt = st.lists(_word, min_size=2, max_size=3).map(
    lambda opts: "{" + "|".join(escape_text(o, option_start=True) for o in opts) + "}")
_emph = st.tuples(_word, st.sampled_from(["0.8", "1.2", "1.5"])).map(lambda t: f"({escape_text(t[0])}:{t[1]})")
_special = st.sampled_from(["red/green", " red/green ", "__mediums__", "{2$$a|b|c}", "by greg rutkowski", "red"])
_clause = st.lists(st.one_of(_literal, _literal, _alt, _emph, _special), min_size=1, max_size=3).map("".join)
_prompt = st.lists(_clause, min_size=1, max_size=5).map(", ".join).filter(lambda p: mu.split_clauses(p))
_partner = st.lists(st.sampled_from(["a dog", "watercolor", "(8k:1.1)", "{x|y}"]), min_size=1, max_size=3).map(
    ", ".join)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@PROPS
@given(_prompt, st.sampled_from(sorted(mu.OPERATORS)), st.integers(0, 2**32 - 1), _partner)
def test_every_mutant_parses_and_records_its_lineage(prompt, op, seed, partner):
    compile_template(prompt, library=LIBRARY)  # the parent is a valid template
    m = mu.apply(op, prompt, random.Random(seed), RESOURCES, partner=partner)
    if m is None:
        return
    compile_template(m.prompt, library=LIBRARY)
    assert m.operator == op and m.parent_key == mu.prompt_key(prompt) and m.parents[0] == m.parent_key
    assert len(m.parents) == (2 if op == "crossover" else 1)
    assert json.loads(canonical_json(dict(m.args))) == dict(m.args)
    assert mu.split_clauses(m.prompt) == mu.split_clauses(mu.normalise(m.prompt))


@PROPS
@given(_prompt, st.integers(0, 2**32 - 1))
def test_mutants_are_deterministic_per_seed(prompt, seed):
    a = mu.mutants(prompt, 4, random.Random(seed), RESOURCES, partners=["a dog, 8k"])
    b = mu.mutants(prompt, 4, random.Random(seed), RESOURCES, partners=["a dog, 8k"])
    assert [m.to_dict() for m in a] == [m.to_dict() for m in b]


@PROPS
@given(_prompt)
def test_leave_one_out_yields_exactly_n_prompts_that_parse(prompt):
    n = len(mu.split_clauses(prompt))
    if n < 2:
        with pytest.raises(ValueError):
            mu.leave_one_out(prompt)
        return
    out = mu.leave_one_out(prompt)
    assert len(out) == n
    for m in out:
        compile_template(m.prompt, library=LIBRARY)


@PROPS
@given(_prompt)
def test_clause_splitting_is_idempotent(prompt):
    clauses = mu.split_clauses(prompt)
    assert mu.split_clauses(mu.join_clauses(clauses)) == clauses


# ----------------------------------------------------------------------------- CLI


def test_mutate_away_from_the_shipped_lists_says_swap_and_insert_have_nothing_to_draw(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_GRAMMARS"}
    r = subprocess.run([sys.executable, "-m", "harness", "mutate", PROMPT, "--ops", "swap,insert"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 1
    assert ("note: none of the modifier lists styles, mediums, artists, lighting, quality, colours is on the "
            "wildcard search path (no wildcard folder exists)") in r.stderr
    assert "note: none" not in harness("mutate", PROMPT, "--ops", "swap,insert").stderr  # from the repository


def test_mutate_cli_prints_n_mutants_with_lineage():
    r = harness("mutate", PROMPT, "-n", "6", "--seed", "3", "--ops", "swap,insert,delete,reweight",
                "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 6 and len({row["prompt"] for row in rows}) == 6
    for row in rows:
        assert row["parent_key"] == mu.prompt_key(PROMPT) and row["operator"] in ("swap", "insert", "delete",
                                                                                  "reweight")
        assert isinstance(row["args"], dict) and row["args"]
    text = harness("mutate", PROMPT, "-n", "6", "--seed", "3", "--ops", "swap,insert,delete,reweight")
    assert [line.split("\t")[0] for line in text.stdout.splitlines()] == [row["prompt"] for row in rows]
    assert all(f"parent={mu.prompt_key(PROMPT)[:12]}" in line for line in text.stdout.splitlines())
    assert "note:" not in text.stderr
    few = harness("mutate", "a, b, c", "-n", "6", "--ops", "delete")
    assert few.returncode == 0 and len(few.stdout.splitlines()) == 3
    assert "note: 3 distinct mutants of 6 asked for" in few.stderr


def test_mutate_cli_unknown_operator_exits_2():
    r = harness("mutate", PROMPT, "--ops", "swap,shuffle")
    assert r.returncode == 2 and "unknown mutation operator 'shuffle'" in r.stderr
    r = harness("mutate", PROMPT, "--ops", "crossover", "--partner", "{a|b")
    assert r.returncode == 2 and r.stderr.startswith("error: --partner '{a|b': expected a valid template: <partner>:1:1:")


def test_mutate_cli_reads_a_file_with_its_folders_wildcards_and_names_the_file_in_errors(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / "tint.txt").write_text("teal\nocher\n")
    (study / "source.txt").write_text("a __tint__ castle\n")
    (study / "bad.txt").write_text("a castle\n{on|a hill\n")
    r = harness("mutate", "a teal castle, on a hill", "-n", "1", "--ops", "swap", "--template",
                f"@{study / 'source.txt'}", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["args"] == {"vocabulary": "factor:tint", "old": "teal", "new": "ocher", "part": 0,
                                            "at": 2}
    r = harness("mutate", f"@{study / 'bad.txt'}")
    assert r.returncode == 2 and r.stderr.startswith(f"{study / 'bad.txt'}:2:1: unbalanced '{{'"), r.stderr


@pytest.mark.parametrize("args, message", [
    (["", "-n", "2"], "<prompt>:1:1: empty template"),
    ([PROMPT, "--ops", "swap=1,swap=0"], "error: --ops 'swap=1,swap=0': operator 'swap' is given twice"),
    ([PROMPT, "--ops", ""], "error: --ops '': no operator named"),
])
def test_mutate_cli_refuses_an_empty_prompt_a_repeated_operator_and_empty_ops(args, message):
    r = harness("mutate", *args)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith(message), r.stderr


@pytest.mark.parametrize("weights, message", [
    ({"swap": -1, "delete": 1}, "operator 'swap' has rate -1"),
    ({"swap": float("nan")}, "operator 'swap' has rate nan"),
    ({"swap": float("inf")}, "operator 'swap' has rate inf"),
    ({"swap": "2"}, "operator 'swap' has rate '2'"),
    ({"swap": 0, "delete": 0.0}, r"no operator has a rate > 0 \(swap=0, delete=0\)"),
    ({}, "no operator has a rate > 0"),
])
def test_mutants_refuse_bad_rates(weights, message):
    with pytest.raises(ValueError, match=f"{message}.*rates must be finite numbers >= 0, with at least one > 0"):
        mu.mutants(PROMPT, 3, random.Random(0), RESOURCES, operators=weights)
    with pytest.raises(ValueError, match=message):
        mu.mutate(PROMPT, random.Random(0), RESOURCES, operators=weights)


def test_mutants_with_only_crossover_need_a_partner_and_partners_must_parse():
    with pytest.raises(ValueError, match="crossover need a partner prompt"):
        mu.mutants(PROMPT, 3, random.Random(0), RESOURCES, operators=["crossover"])
    with pytest.raises(ValueError, match="crossover need a partner prompt"):
        mu.mutate(PROMPT, random.Random(0), RESOURCES, operators={"crossover": 1, "swap": 0})
    with pytest.raises(ValueError, match=r"<partner>:1:1: unbalanced '\{'"):
        mu.mutants(PROMPT, 3, random.Random(0), RESOURCES, operators=["crossover"], partners=["{a|b"])
    assert mu.mutants(PROMPT, 0, random.Random(0), RESOURCES, operators=["crossover", "swap"]) == []


@pytest.mark.parametrize("args, words", [
    (["--ops", "crossover"], ["--ops 'crossover'", "--partner"]),
    (["--ops", "swap=0"], ["--ops 'swap=0'", "rate > 0", "finite numbers >= 0"]),
    (["--ops", "swap=nan"], ["--ops 'swap=nan'", "rate nan", "finite numbers >= 0"]),
    (["--ops", "swap=-1,delete"], ["--ops 'swap=-1,delete'", "rate -1", "finite numbers >= 0"]),
    (["--ops", "crossover", "--partner", "{a|b"], ["--partner '{a|b'", "valid template", "1:1:", "unbalanced"]),
    (["--partner", "{a|b"], ["--partner '{a|b'", "valid template", "1:1:", "unbalanced"]),
])
def test_mutate_cli_refuses_operators_that_cannot_run(args, words):
    r = harness("mutate", PROMPT, "-n", "3", *args)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    for word in words:
        assert word in r.stderr, r.stderr


def test_mutate_cli_says_when_no_operator_changes_the_prompt():
    r = harness("mutate", "a castle", "-n", "3", "--ops", "delete")
    assert r.returncode == 1 and r.stdout == ""
    assert "no operator in --ops 'delete' could change the prompt 'a castle'" in r.stderr
    ok = harness("mutate", "a castle", "-n", "2", "--ops", "crossover", "--partner", "a dog, 8k", "--format", "jsonl")
    assert ok.returncode == 0, ok.stderr
    assert [json.loads(line)["operator"] for line in ok.stdout.splitlines()] == ["crossover", "crossover"]


def test_asking_for_more_mutants_than_exist_stops_soon_after_the_last_new_one(monkeypatch):
    """'a cat, red' has about a hundred mutants: asking for a billion gives the same ones as asking for two
    thousand, after a few thousand draws rather than twenty billion."""
    calls = []
    draw = mu.mutate
    monkeypatch.setattr(mu, "mutate", lambda *a, **k: calls.append(1) or draw(*a, **k))
    some = mu.mutants("a cat, red", 2000, random.Random(0), RESOURCES, operators=["delete", "reorder", "reweight"])
    first = len(calls)
    assert 0 < len(some) < 2000 and first <= 1001 + 3 * 2000  # well before 20 draws per mutant asked for
    every = mu.mutants("a cat, red", 10**9, random.Random(0), RESOURCES, operators=["delete", "reorder", "reweight"])
    assert [m.prompt for m in every] == [m.prompt for m in some] and len(calls) - first == first
