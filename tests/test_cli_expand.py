"""`harness expand` as a user runs it: a real subprocess."""

import json
from pathlib import Path

import pytest

from commands import harness

ROOT = Path(__file__).resolve().parents[1]


def test_expand_jsonl_prints_one_object_per_prompt_with_factors():
    r = harness("expand", "photo/35mm of red/green lambo", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 4
    assert all(len(row["factors"]) == 2 for row in rows)
    assert rows[0] == {"prompt": "photo of red lambo", "factors": {"photo|35mm": "photo", "red|green": "red"}}


def test_grammar_error_exits_2_with_line_column_and_caret():
    r = harness("expand", "{a|b")
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["<template>:1:1: unbalanced '{': expected '}' before the end of the template",
                                     "  {a|b", "  ^"]


def test_count_of_shipped_example():
    r = harness("expand", "@experiments/lambo.txt", "--count")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 3 * 3 * 3 * 3 * (9 + 1)


def test_sample_is_deterministic_and_limit_applies():
    a = harness("expand", "@experiments/lambo.txt", "--sample", "5", "--seed", "7")
    b = harness("expand", "@experiments/lambo.txt", "--sample", "5", "--seed", "7")
    c = harness("expand", "@experiments/lambo.txt", "--sample", "5", "--seed", "8")
    assert a.stdout == b.stdout != c.stdout and len(a.stdout.splitlines()) == 5
    assert len(harness("expand", "@experiments/lambo.txt", "--limit", "3").stdout.splitlines()) == 3


def test_sampling_more_distinct_prompts_than_there_are_names_the_option_that_allows_it():
    r = harness("expand", "{a|b} cat", "--sample", "3")
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: cannot sample 3 distinct prompts: the template has only 2; sample fewer, "
                                "or add --with-replacement")
    assert len(harness("expand", "{a|b} cat", "--sample", "3", "--with-replacement").stdout.splitlines()) == 3


def test_csv_has_prompt_and_factor_columns(tmp_path):
    (tmp_path / "pets.txt").write_text("cat\ndog\n")
    r = harness("expand", "a __pets__ {by monet|}", "--format", "csv", "--grammars", str(tmp_path))
    lines = r.stdout.splitlines()
    assert lines[0] == "prompt,f.pets,f.by monet|" and len(lines) == 5
    named = harness("expand", "{@prompt: a|b}", "--format", "csv").stdout.splitlines()
    assert named == ["prompt,f.prompt", "a,a", "b,b"]  # a factor named prompt keeps its own column


def test_csv_tells_an_empty_option_from_a_factor_not_on_the_path():
    """As the run's tables show levels: `(empty)` for the empty option, `—` where the factor is not on the
    prompt's path; an option spelled like a mark is quoted. jsonl keeps the values themselves."""
    r = harness("expand", "{@o: x{@i: , a|}|y}", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["prompt,f.o,f.i", '"x, a","x, a",", a"', "x,x,(empty)", "y,y,—"]
    marks = harness("expand", "{@o: —|(empty)|}", "--format", "csv").stdout.splitlines()
    assert marks == ["prompt,f.o", '—,"""—"""', '(empty),"""(empty)"""', ",(empty)"]
    rows = [json.loads(line) for line in harness("expand", "{@o: x{@i: , a|}|y}", "--format", "jsonl").stdout
            .splitlines()]
    assert [row["factors"] for row in rows[1:]] == [{"o": "x", "i": ""}, {"o": "y"}]


def test_count_of_optional_clauses_after_a_large_product_is_not_called_an_upper_bound():
    r = harness("expand", "{a|b|c|d|e|f|g|h|i|j}" * 12 + "{|, by greg}{|, golden hour}", "--count")
    assert r.returncode == 0 and r.stdout == "4000000000000\n", r.stderr


def test_unknown_wildcard_names_the_search_path(tmp_path):
    r = harness("expand", "__nope__", "--grammars", str(tmp_path))
    assert r.returncode == 2 and "unknown wildcard __nope__" in r.stderr and str(tmp_path) in r.stderr
    r = harness("expand", "__nope__", cwd=tmp_path)  # no wildcard folder at all: where one can come from
    assert r.returncode == 2 and ("no nope.txt in (no wildcard folder: none of the template's folder, --grammars "
                                  "DIR, $HARNESS_GRAMMARS or ./grammars exists)") in r.stderr, r.stderr


def test_a_wildcard_made_as_a_folder_is_named_as_one_and_never_suggested(tmp_path):
    (tmp_path / "colors.txt").mkdir()
    r = harness("expand", "a __colors__ cat", "--grammars", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"<template>:1:3: wildcard __colors__: {tmp_path / 'colors.txt'} is a folder; "
                               "expected a text file of options, one per line"), r.stderr
    r = harness("expand", "a __colorz__ cat", "--grammars", str(tmp_path))
    assert r.returncode == 2 and "unknown wildcard __colorz__" in r.stderr and "__colors__" not in r.stderr, r.stderr


@pytest.mark.parametrize("command", ["expand", "mutate"])
def test_a_grammars_folder_that_does_not_exist_is_an_error(tmp_path, command):
    r = harness(command, "a red car, by greg rutkowski", "--grammars", str(tmp_path / "nope"))
    assert r.returncode == 2 and f"--grammars {tmp_path / 'nope'}: no such folder" in r.stderr, r.stderr


def test_choose_k_from_a_wildcard_picks_among_its_lines(tmp_path):
    (tmp_path / "col.txt").write_text("red\ngreen\nblue\n")
    r = harness("expand", "{2$$__col__}", "--grammars", str(tmp_path), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 6 and rows[0] == {"prompt": "red,green", "factors": {"col": "red,green"}}


def test_error_in_an_indented_wildcard_line_quotes_the_line_as_in_the_file(tmp_path):
    (tmp_path / "w.txt").write_text("ok\n   {bad\n")
    r = harness("expand", "__w__", "--grammars", str(tmp_path))
    assert r.returncode == 2
    head = f"{tmp_path / 'w.txt'}:2:4: unbalanced '{{': expected '}}' before the end of the template"
    assert r.stderr.splitlines() == [head, "     {bad", "     ^"]


def test_files_saved_with_windows_line_ends_give_no_carriage_returns(tmp_path):
    """A template, a wildcard and an experiment's prompt file written on Windows (CRLF)."""
    (tmp_path / "t.txt").write_bytes(b"a {red|blue} __animal__\r\n")
    (tmp_path / "animal.txt").write_bytes(b"cat\r\ndog\r\n")
    r = harness("expand", f"@{tmp_path / 't.txt'}", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["prompt"] for line in r.stdout.splitlines()] == [
        "a red cat", "a red dog", "a blue cat", "a blue dog"]
    (tmp_path / "exp.toml").write_bytes(b'prompt = "@t.txt"\r\ncheckpoints = ["tiny"]\r\n')
    r = harness("plan", str(tmp_path / "exp.toml"), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    assert {json.loads(line)["prompt"] for line in r.stdout.splitlines()} == {
        "a red cat", "a red dog", "a blue cat", "a blue dog"}
    r = harness("mutate", f"@{tmp_path / 't.txt'}", "--ops", "reweight", "-n", "1", "--format", "jsonl")
    assert r.returncode == 0 and "\\r" not in r.stdout, r.stderr


def test_text_output_says_when_prompts_span_several_lines(tmp_path):
    (tmp_path / "t.txt").write_text("a {red|blue}\ncat\n")
    r = harness("expand", f"@{tmp_path / 't.txt'}")
    assert r.returncode == 0 and r.stdout == "a red\ncat\na blue\ncat\n"
    assert r.stderr.startswith("note: 2 prompt(s) hold a line break") and "--format jsonl or csv" in r.stderr
    one_line = harness("expand", "a {red|blue} cat")
    assert one_line.stderr == ""
    rows = [json.loads(line) for line in harness("expand", f"@{tmp_path / 't.txt'}", "--format", "jsonl").stdout
            .splitlines()]
    assert [row["prompt"] for row in rows] == ["a red\ncat", "a blue\ncat"]
