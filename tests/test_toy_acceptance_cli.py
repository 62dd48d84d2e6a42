"""`harness toy acceptance` refuses bad options before measuring anything, judges each target and exits 1
when one is missed, and measures the weights of a `harness toy train --out` folder."""

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
    (["--weights", "/nonexistent/toy"], ("--weights: expected a folder `harness toy train --out` wrote, got "
                                         "'/nonexistent/toy' (no such folder)")),
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

    (row,) = _style_rows("generated", "128 px", {"ian mcque": []}, ">= 80 %")
    assert row.n == 0 and row.line() == "| generated: named style detected (128 px) | n/a | 0 | >= 80 % | n/a |"
    assert Row("x", 0.5, 4).line() == "| x | 50.0 % | 4 |  |  |"


def test_each_target_is_judged_and_a_miss_or_a_target_without_sample_fails():
    from harness.toy.acceptance import Row, verdict

    met, missed = Row("a", 0.9, 10, ">= 90 %"), Row("b", 0.25, 4, ">= 90 %")
    assert (met.verdict, missed.verdict, Row("c", 0.0, 4).verdict) == ("PASS", "FAIL", "")
    assert missed.line() == "| b | 25.0 % | 4 | >= 90 % | FAIL |"
    assert verdict([met, Row("c", 0.0, 4)]) == (0, ["acceptance: PASS: 1 of 1 targets met"])
    status, lines = verdict([met, missed, Row("d", float("nan"), 0, ">= 80 %")])
    assert status == 1 and lines == ["acceptance: FAIL: 1 of 3 targets met", "  missed: b: 25.0 %, target >= 90 %",
                                     "  not judged (no sample; measure more with --n-oracle/--n-clip/--n-gen): d"]
    with pytest.raises(ValueError, match="target 'at least 90': expected '' or '>= P %'"):
        Row("e", 0.5, 4, "at least 90")


def test_the_command_prints_fail_and_exits_1_when_a_target_is_missed():
    """Two DDIM steps without guidance at 64 px cannot meet the colour target: the command says FAIL
    for it and exits 1 (it used to print the table and exit 0). The oracle is read at --size."""
    r = subprocess.run([sys.executable, "-m", "harness", "toy", "acceptance", "--n-gen", "2", "--steps", "2",
                        "--size", "64", "--guidance", "0", "--n-oracle", "2", "--n-clip", "2", "--device", "cpu"],
                       capture_output=True, text=True, cwd=ROOT, check=False)
    import re

    assert r.returncode == 1, r.stdout + r.stderr
    judged = re.findall(r"^\| (.+?) \| ([\d.]+) % \| \d+ \| >= ([\d.]+) % \| (PASS|FAIL) \|$", r.stdout, re.MULTILINE)
    assert all((float(value) >= float(target)) == (result == "PASS") for _, value, target, result in judged)
    missed = [check for check, *_, result in judged if result == "FAIL"]
    assert any(check.startswith("toy images: ") and "(64 px, 2 ddim steps, cfg 0)" in check for check in missed)
    assert "\nacceptance: FAIL: " in r.stdout and f"  missed: {missed[0]}: " in r.stdout
    assert "| oracle color on world images (64 px) |" in r.stdout and "(256 px)" not in r.stdout


def test_a_weights_folder_missing_a_part_is_refused(tmp_path, capsys):
    (tmp_path / "configs.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["--weights", str(tmp_path)])
    err = capsys.readouterr()
    assert e.value.code == 2 and err.out == ""
    assert (f"--weights: {tmp_path}: no vae.safetensors, unet.safetensors, text_encoder.safetensors, "
            f"clip.safetensors; acceptance measures every part") in err.err


def test_weights_measures_the_folder_a_training_run_wrote(tmp_path, capsys):
    """`--weights DIR` generates, scores with CLIP and round-trips through the VAE with DIR's weights,
    not the committed ones (the tiny run below has narrower blocks than the committed gpu profile)."""
    import json

    import torch

    from harness.metrics.clip_models import load_clip
    from harness.pipelines import load_pipeline
    from harness.toy import acceptance, models, open_toy_clip, train, training

    tiny = training.Profile("test", vae=training.Budget(2, 2, 1e-3), decoder=training.Budget(1, 2, 1e-3),
                            unet=training.Budget(2, 4, 1e-3), clip=training.Budget(1, 4, 1e-3), vae_scenes=4,
                            decoder_scenes=2, unet_scenes=((128, 4), (256, 2)), clip_scenes=4)
    out = train.train("all", tmp_path / "run", profile=tiny, device="cpu")
    pipe = load_pipeline(acceptance.checkpoint(out), "txt2img", device="cpu")
    assert list(pipe.unet.config.block_out_channels) == list(tiny.unet_blocks) != [64, 64, 64]
    assert list(pipe.vae.config.block_out_channels) == list(tiny.vae_blocks) != [16, 32, 64, 64]
    configs = json.loads((out / models.CONFIGS_FILE).read_text())
    assert pipe.vae.config.scaling_factor == configs["vae"]["scaling_factor"]
    clip, expected = open_toy_clip(out, "cpu"), models.build_clip()
    models.load_part(expected, "clip", out)
    assert all(torch.equal(v, clip.model.state_dict()[k]) for k, v in expected.state_dict().items())
    assert clip.ident != load_clip("toy", "toy", "cpu").ident
    capsys.readouterr()
    status = main(["--weights", str(out), "--n-oracle", "1", "--n-clip", "2", "--n-gen", "2", "--steps", "1",
                   "--size", "64", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert printed.startswith(f"<!-- weights: {out.resolve()} -->")
    assert "| VAE round trip: color right (64 px) |" in printed
    assert status == 1 and "acceptance: FAIL" in printed  # two steps of training meet no target

