"""`harness toy acceptance` refuses bad options before measuring anything."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.toy.acceptance import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, expected", [
    (["--size", "100"], "--size: expected a multiple of 8"),
    (["--size", "32"], "--size: expected an integer >= 64"),
    (["--n-gen", "0"], "--n-gen: expected an integer >= 1, got '0'"),
    (["--steps", "x"], "--steps: expected an integer >= 1, got 'x'"),
    (["--guidance", "-1"], "--guidance: expected a number in [0, 100]"),
    (["--scheduler", "nosuch"], "--scheduler: invalid choice: 'nosuch'"),
])
def test_bad_options_exit_2_naming_the_option(args, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr()
    assert e.value.code == 2 and expected in err.err and err.out == ""  # no table row was measured


def test_the_cli_command_refuses_a_missing_device_before_measuring():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for device, expected in (("cuda", "--device: device='cuda': CUDA is not available here"),
                             ("cuda:1", "--device: device='cuda:1': CUDA is not available here"),
                             ("gpu", "expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")):
        r = subprocess.run([sys.executable, "-m", "harness", "toy", "acceptance", "--device", device],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2 and expected in r.stderr and "| check |" not in r.stdout, r.stderr
        assert "usage: harness toy acceptance" in r.stderr  # the command the user typed, not the module


def test_a_check_with_no_sample_reads_n_a_not_nan():
    from harness.toy.acceptance import Row, _style_rows

    (row,) = _style_rows("generated", "128 px", {"ian mcque": []})
    assert row.n == 0 and row.line() == "| generated: named style detected (128 px) | n/a | 0 |  |"
    assert Row("x", 0.5, 4).line() == "| x | 50.0 % | 4 |  |"
