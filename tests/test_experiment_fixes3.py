"""Experiment-file fixes: `__parent__` in a stage's negative prompt, the "(written on line N of the file)"
hint after a byte-order mark or a multi-line string, and `[checkpoint."PATH"]` named as pasteable TOML."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.experiment import ExperimentError, load_experiment

STAGED = 'prompt = "a {@c: red|blue} cat"\nsteps = 4\nwidth = 64\nheight = 64\n\n[[stages]]\n'


def problems(path: Path) -> list[str]:
    with pytest.raises(ExperimentError) as e:
        load_experiment(path)
    return e.value.problems


def plan(path: Path):
    return CliRunner().invoke(app, ["plan", str(path)])


# ---- 1. __parent__ in a stage's negative prompt -------------------------------------------------------

def test_parent_token_in_a_stage_negative_prompt_is_refused_when_the_file_loads(tmp_path):
    """`__parent__` stands for the parent's prompt in a stage's prompt only: in its negative prompt it used
    to pass the load-time check and fail at planning as an unknown wildcard `parent.txt`."""
    exp = tmp_path / "pp3.toml"
    exp.write_text(STAGED + 'prompt = "__parent__, sharp"\nnegative_prompt = "blurry, __parent__"\n')
    (found,) = problems(exp)
    assert found.startswith("key 'stages[0].negative_prompt': __parent__ at line 1, column 9 of the template: "
                            "__parent__ stands for the parent image's prompt in a stage's prompt only; leave "
                            "negative_prompt out"), found

    r = plan(exp)
    assert r.exit_code == 2, r.output
    assert f"{exp}: 1 problem:" in r.output and "key 'stages[0].negative_prompt'" in r.output, r.output
    assert "unknown wildcard __parent__" not in r.output and "parent.txt" not in r.output


def test_parent_token_refused_in_a_later_stage_negative_prompt_with_the_other_problems(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(STAGED + 'prompt = "__parent__, sharp"\n\n[[stages]]\nprompt = "__parent__, __nope__"\n'
                   'negative_prompt = """\ndark,\n  __parent__"""\n')
    found = problems(exp)
    assert any(p.startswith("key 'stages[1].negative_prompt': __parent__ at line 2, column 3 of the template")
               for p in found), found
    assert any(p.startswith("key 'stages[1].prompt': template error") and "__nope__" in p for p in found), found


def test_parent_token_in_a_stage_prompt_still_plans(tmp_path):
    exp = tmp_path / "ok.toml"
    exp.write_text(STAGED + 'prompt = "__parent__, sharp"\nnegative_prompt = "blurry"\n')
    r = plan(exp)
    assert r.exit_code == 0, r.output


# ---- 2. "(written on line N of the file)" ---------------------------------------------------------------

def test_written_on_line_hint_after_a_byte_order_mark(tmp_path):
    exp = tmp_path / "bom.toml"
    exp.write_bytes(b'\xef\xbb\xbfprompt = "a __nope__ cat"\n')
    (found,) = problems(exp)
    assert ("key 'prompt': template error at line 1, column 3 of the template (written on line 1 of the file): "
            "unknown wildcard __nope__") in found, found


@pytest.mark.parametrize("text, key, line", [
    # a multi-line prompt with a line starting `[` (A1111 emphasis) is no table header
    ('prompt = """\n[masterpiece], a cat"""\nnegative_prompt = "__nope__"\n', "negative_prompt", 3),
    ("prompt = '''\n[masterpiece], a cat'''\nnegative_prompt = \"__nope__\"\n", "negative_prompt", 3),
    # text inside a multi-line string that reads like the key is not where the key is written
    ('name = """\nprompt = a dog"""\nprompt = "a __nope__"\n', "prompt", 3),
    ('name = """a "quoted"\nprompt = \\""" still the name"""\nprompt = "a __nope__"\n', "prompt", 3),
    ('name = """x\nprompt = y"\'"""""\nprompt = "a __nope__"\n', "prompt", 3),
    # multi-line arrays (one with lines starting `[`, a key that is reported unknown), a string holding a `[`
    ('seeds = [\n  1,\n]\nname = "x [y # z"\nnotes = [\n  ["a", "b"],\n  [\n"c"]]\n\nprompt = "a __nope__"\n',
     "prompt", 10),
    ('prompt = "a __nope__" # [not a header]\n', "prompt", 1),
])
def test_written_on_line_hint_finds_the_key_past_strings_and_arrays(tmp_path, text, key, line):
    exp = tmp_path / "exp.toml"
    exp.write_text(text)
    found = [p for p in problems(exp) if p.startswith(f"key '{key}': template error")]
    assert found and f"of the template (written on line {line} of the file): unknown wildcard __nope__" in found[0], \
        found


def test_written_on_line_hint_stops_at_a_real_table_header(tmp_path):
    """A top-level key written after the tables begin is not possible; a stage's `prompt = ` under
    `[[stages]]` is never read as the top-level prompt's line."""
    exp = tmp_path / "exp.toml"
    exp.write_text('steps = 4\n[[stages]]\nprompt = "__parent__"\n')
    text = exp.read_text()
    exp.write_text('prompt = """\n[x]\n"""\n' + text.replace("[[stages]]", 'negative_prompt = "__nope__"\n[[stages]]'))
    found = [p for p in problems(exp) if p.startswith("key 'negative_prompt'")]
    assert found and "(written on line 5 of the file)" in found[0], found


# ---- 3. [checkpoint."PATH"] named as TOML ---------------------------------------------------------------

def test_a_path_checkpoint_table_not_in_checkpoints_is_named_as_pasteable_toml(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text('prompt = "a cat"\ncheckpoints = ["tiny"]\n\n[checkpoint."./tiny"]\nsteps = 4\nstepz = 4\n')
    found = problems(exp)
    assert "table '[checkpoint.\"./tiny\"]': './tiny' is not in checkpoints; did you mean 'tiny'?" in found, found
    assert any(p.startswith("unknown key 'checkpoint.\"./tiny\".stepz'; did you mean "
                            "'checkpoint.\"./tiny\".steps'?") for p in found), found


def test_a_checkpoint_table_that_is_not_a_table_is_named_as_toml(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text('prompt = "a cat"\ncheckpoints = ["tiny"]\ncheckpoint = { tiny = {}, "a b" = 3 }\n')
    found = problems(exp)
    assert any(p.startswith("key 'checkpoint.\"a b\"': got 3, expected a table of overrides") for p in found), found


def test_a_watermark_problem_names_a_dotted_checkpoint_as_toml(tmp_path):
    """`sd1.5` is no bare key: `checkpoint.sd1.5.width` would be a table `sd1` holding a table `5`."""
    exp = tmp_path / "exp.toml"
    exp.write_text('prompt = "a cat"\ncheckpoints = ["tiny", "sd1.5"]\nwatermark = "sdv1"\nwidth = 512\n'
                   'height = 512\n\n[checkpoint."sd1.5"]\nwidth = 64\nheight = 64\n')
    found = problems(exp)
    assert any("key 'checkpoint.\"sd1.5\".width/height' makes" in p for p in found), found


@pytest.mark.parametrize("name, key", [
    ("tiny", "tiny"), ("my_ck-2", "my_ck-2"), ("./tiny-ft", '"./tiny-ft"'), ("sd1.5", '"sd1.5"'),
    ('a "b"\\c', '"a \\"b\\"\\\\c"'), ("tab\there", '"tab\\u0009here"'), ("café", '"café"'),
])
def test_toml_key_reads_back_as_the_name(name, key):
    import tomllib

    from harness.experiment_tables import toml_key

    assert toml_key(name) == key
    assert list(tomllib.loads(f"[checkpoint.{key}]\n")["checkpoint"]) == [name]


def test_a_stage_top_k_of_a_wrong_value_is_one_problem_not_also_a_metric_without_top_k(tmp_path):
    exp = tmp_path / "tk.toml"
    exp.write_text(STAGED + 'prompt = "__parent__, sharp"\ntop_k = -1\nmetric = "health"\n')
    assert problems(exp) == ["key 'stages[0].top_k': got -1, expected an integer >= 1"]
    exp.write_text(STAGED + 'prompt = "__parent__, sharp"\nmetric = "health"\n')  # no top_k at all: still said
    (found,) = problems(exp)
    assert found.startswith("key 'stages[0].metric': set without top_k"), found


def test_an_empty_prompt_file_is_a_problem_of_the_key_with_the_others(tmp_path):
    (tmp_path / "empty.txt").write_text("\n")
    exp = tmp_path / "e.toml"
    exp.write_text('prompt = "@empty.txt"\nseeds = "x"\n')
    found = problems(exp)
    assert found[0] == f"key 'prompt': got '@empty.txt', expected a template file holding a prompt " \
                       f"({tmp_path / 'empty.txt'} is empty)", found
    assert found[1].startswith("key 'seeds'") and len(found) == 2, found
