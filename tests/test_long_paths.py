"""A path longer than the file system allows, written in an experiment or a template: the error names the
key (or the template's line and column) that holds it, as for a path that does not exist."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.experiment import ExperimentError, load_experiment

LONG = "x" * 300  # one path component over the usual 255-byte limit (ENAMETOOLONG)
BASE = 'name = "long"\nsteps = 2\nwidth = 64\nheight = 64\n'


def problems(path: Path) -> list[str]:
    with pytest.raises(ExperimentError) as e:
        load_experiment(path)
    return e.value.problems


def test_a_base_dir_too_long_is_a_problem_of_the_key_and_stops_the_checks(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(BASE + f'prompt = "a cat"\nbase_dir = "{LONG}"\ninit_images = "cat.png"\nmode = ["img2img"]\n')
    (found,) = problems(exp)  # not a second one for init_images, which every path below base_dir would give
    assert found.startswith(f"key 'base_dir': got '{LONG}', expected an existing folder"), found
    assert found.endswith("; the file system refused it: File name too long (ENAMETOOLONG)"), found
    r = CliRunner().invoke(app, ["plan", str(exp)])
    assert r.exit_code == 2 and "key 'base_dir'" in r.output and "Traceback" not in r.output, r.output


def test_a_prompt_file_and_init_images_too_long_are_problems_of_their_keys(tmp_path):
    exp = tmp_path / "e.toml"
    (tmp_path / "inits").mkdir()
    exp.write_text(BASE + f'prompt = "@{LONG}.txt"\nmode = ["img2img"]\nstrengths = [0.5]\n'
                   f'init_images = ["{LONG}.png", "inits/*.png"]\n')
    found = problems(exp)
    refused = "; the file system refused it: File name too long (ENAMETOOLONG)"
    assert found[0].startswith(f"key 'prompt': got '@{LONG}.txt', expected an existing template file") and \
        found[0].endswith(refused), found
    assert found[1].startswith(f"key 'init_images': got '{LONG}.png'") and found[1].endswith(refused), found
    assert found[2].startswith("key 'init_images': got 'inits/*.png', expected an image file"), found  # checked on
    assert len(found) == 3, found


def test_a_wildcard_name_too_long_is_an_unknown_wildcard_at_its_column(tmp_path):
    r = CliRunner().invoke(app, ["expand", f"a __{LONG}__ cat", "--grammars", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"<template>:1:3: unknown wildcard __{LONG}__"), r.output[:300]
    exp = tmp_path / "e.toml"
    exp.write_text(BASE + f'prompt = "a __{LONG}__ cat"\n')
    (found,) = problems(exp)
    assert found.startswith("key 'prompt': template error at line 1, column 3 of the template"), found


def test_a_checkpoint_and_metric_weights_too_long_are_problems_of_their_keys(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text(BASE + f'prompt = "a cat"\ncheckpoints = ["tiny", "./{LONG}.safetensors"]\n'
                   f'metrics = ["clip_score:model=ViT-B-32,pretrained=./{LONG}.bin"]\n')
    checkpoint, metric = problems(exp)
    assert checkpoint.startswith(f"key 'checkpoints[1]': checkpoint './{LONG}.safetensors': the file system "
                                 f"refused {tmp_path / LONG}.safetensors: File name too long"), checkpoint
    assert metric.startswith("key 'metrics[0]': ") and \
        f"the file system refused {tmp_path / LONG}.bin: File name too long" in metric, metric


@pytest.mark.parametrize("name, expected", [
    ("n" * 300, "key 'name': got '" + "n" * 40 + "...', expected a folder name of at most 255 bytes (this one "
                "has 300; file systems refuse longer ones)"),
    ("..", "key 'name': got '..', expected a folder name other than '.' and '..' (the run folder is "
           "reports/<name>)"),
])
def test_a_name_no_folder_can_have_is_refused_when_the_file_loads(tmp_path, name, expected):
    exp = tmp_path / "e.toml"
    exp.write_text(f'name = "{name}"\nprompt = "a cat"\n')
    assert problems(exp) == [expected]
