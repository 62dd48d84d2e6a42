"""A run keeps one batch maker for the main pass and every stage (a batch size lowered after running out
of memory stays lowered), and `harness plan` of a shard's folder counts that shard, as `harness run` there
makes it; a TOML date anywhere in an experiment is named when it loads; `plan` counts no child of a stage whose
`top_k` metric can score none of its source images."""

import re

import pytest
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app
from harness.experiment import load_experiment
from harness.ledger import Ledger
from harness.plan import make_plan
from harness.run import run_experiment
from harness.stages import stage_job_counts

BASE = """
name = "x"
prompt = "a {red|blue} cat"
seeds = [1, 2]
width = 64
height = 64
steps = 4
streams = 1
"""


def test_plan_of_a_shard_folder_counts_what_run_then_makes_there(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(BASE.replace("{red|blue}", "{red|blue|green} {cat|dog}"))
    first = run_experiment(exp, out=tmp_path / "s0", shard=(0, 2), progress=False, log=lambda m: None)
    copy = tmp_path / "s0" / "experiment.toml"
    out = CliRunner().invoke(app, ["plan", str(copy), "--out", str(tmp_path / "s0")]).output
    planned = int(re.search(r"^jobs: (\d+)$", out, re.M).group(1))
    again = run_experiment(copy, out=tmp_path / "s0", progress=False, log=lambda m: None)  # goes on with 0/2
    assert again.planned == first.planned
    assert planned == again.planned, out
    assert "note: shard 0/2" in out or "shard 0/2" in out


def test_the_batch_size_out_of_memory_lowered_is_kept_for_later_stages(tmp_path, monkeypatch):
    """README: 'the size that fits is kept for the rest of the run for that checkpoint, image size and dtype,
    so later groups do not run out of memory again'. A later stage's groups are later groups of the run."""
    import torch

    import harness.generate as gen

    real = gen.generate_batch

    def flaky(pipe, jobs, **kw):
        if len(jobs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pipe, jobs, **kw)

    monkeypatch.setattr(gen, "generate_batch", flaky)
    exp = tmp_path / "exp.toml"
    exp.write_text(BASE + 'batch_size = 2\n[[stages]]\nname = "refine"\nprompt = "__parent__, sharp"\n'
                   "strengths = [0.5]\n")
    r = run_experiment(exp, out=tmp_path / "run", progress=False, log=lambda m: None)
    assert r.generated == 8
    assert len(r.oom_events) == 1, r.oom_events  # the stage does not run out of memory again at 2


def test_a_toml_date_in_the_search_table_is_a_clean_error_before_the_run_folder_is_made(tmp_path):
    """No setting takes a TOML date: one in [search] (which `harness evolve` checks in full) is named when the
    file loads, before a run folder is made, rather than failing as the settings are recorded."""
    exp = tmp_path / "exp.toml"
    exp.write_text(BASE + "[search]\npopulation = 4\ngenerations = 1\nseed = 2024-05-01\n")
    result = CliRunner().invoke(app, ["run", str(exp), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "search" in result.output, (result.output, result.exception)
    assert not (tmp_path / "run").exists()
    assert "key 'search.seed': a TOML date" in result.output


def _stage_jobs_made(run_dir, stage):
    with Ledger.open(run_dir, readonly=True) as led:
        return len(led.plan_keys(f"stage:{stage}"))


@pytest.mark.parametrize("extra, stage_metric", [
    # main img2img images have no source prompt, so clip_directional scores none of them
    ('mode = ["txt2img", "img2img"]\ninit_images = "init.png"\nstrengths = [0.5]\n', "clip_directional:model=tiny"),
    # 64x64 images are under the watermark codec's 256x256 minimum: every score is NaN
    ("", "watermark"),
])
def test_plan_counts_the_stage_jobs_run_then_makes(tmp_path, extra, stage_metric):
    Image.new("RGB", (80, 60), (200, 30, 30)).save(tmp_path / "init.png")
    exp = tmp_path / "exp.toml"
    exp.write_text(BASE + extra + f'[[stages]]\nname = "refine"\nprompt = "__parent__, sharp"\n'
                   f'strengths = [0.5]\ntop_k = 1\nmetric = "{stage_metric}"\n')
    loaded = load_experiment(exp)  # (or refused here, as a txt2img-only source ranked by such a metric is)
    plan = make_plan(loaded)
    predicted = stage_job_counts(loaded, list(plan.jobs), plan.checkpoints)["refine"]
    run_experiment(exp, out=tmp_path / "run", progress=False, log=lambda m: None)
    assert predicted == _stage_jobs_made(tmp_path / "run", "refine")
