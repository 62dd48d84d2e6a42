"""`harness plan` as a user runs it, and how `harness run` reports a full disk."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from commands import harness

ROOT = Path(__file__).resolve().parents[1]


def test_plan_prints_counts_groups_and_stages():
    r = harness("plan", "experiments/staged.toml")
    assert r.returncode == 0, r.stderr
    assert "jobs: 12" in r.stdout and "factors: color, shape" in r.stdout
    assert "groups (jobs sharing pipeline calls): 1" in r.stdout
    assert "then stage refine: img2img from stage main (top 1 per variant" in r.stdout


def test_plan_jsonl_has_key_factors_and_parameters():
    r = harness("plan", "experiments/demo.toml", "--format", "jsonl")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 144 and len({row["key"] for row in rows}) == 144
    assert set(rows[0]["factors"]) == {"color", "shape", "artist"}
    assert {"prompt", "seed", "steps", "guidance", "width", "strength", "fingerprint"} <= set(rows[0])


def test_plan_reports_every_experiment_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('prompt = "{a|b"\nstpes = 3\n')
    r = harness("plan", bad)
    assert r.returncode == 2 and "did you mean 'steps'" in r.stderr
    assert "key 'prompt': template error at" in r.stderr and "unbalanced '{'" in r.stderr


def test_plan_names_every_unknown_wildcard_and_checkpoint_at_once(tmp_path):
    (tmp_path / "style.txt").write_text("oil\n__medum__\n")  # wildcards beside the experiment
    exp = tmp_path / "typos.toml"
    exp.write_text('prompt = "a __colr__ __shpe__, __style__"\ncheckpoints = ["tinny"]\n')
    r = harness("plan", exp)
    assert r.returncode == 2 and f"{exp}: 4 problems" in r.stderr, r.stderr  # wildcards and checkpoint at once
    for name, column in (("colr", 3), ("shpe", 12)):
        assert (f"key 'prompt': template error at line 1, column {column} of the template (written on line 1 of "
                f"the file): unknown wildcard "
                f"__{name}__") in r.stderr, r.stderr
    assert f"template error at {tmp_path / 'style.txt'}:2:1: unknown wildcard __medum__" in r.stderr
    assert "key 'checkpoints[0]': unknown checkpoint 'tinny' (did you mean 'tiny'?)" in r.stderr

    exp.write_text('prompt = "a cat"\ncheckpoints = ["tiny", "sd15-randm", "tinny"]\n')
    r = harness("plan", exp)
    assert r.returncode == 2 and f"{exp}: 2 problems" in r.stderr, r.stderr
    assert "key 'checkpoints[1]': unknown checkpoint 'sd15-randm' (did you mean 'sd15-random'?)" in r.stderr
    assert "key 'checkpoints[2]': unknown checkpoint 'tinny' (did you mean 'tiny'?)" in r.stderr


def test_plan_of_one_misspelt_checkpoint_names_the_file_the_key_and_the_closest_name(tmp_path):
    exp = tmp_path / "one.toml"
    exp.write_text('prompt = "a cat"\ncheckpoints = ["tinyy"]\n')
    r = harness("plan", exp)
    assert r.returncode == 2 and r.stderr.startswith(f"{exp}: 1 problem:\n"), r.stderr
    assert "  - key 'checkpoints[0]': unknown checkpoint 'tinyy' (did you mean 'tiny'?); valid: " in r.stderr


def test_plan_of_a_folder_says_it_is_a_folder_and_lists_its_experiment_files(tmp_path):
    (tmp_path / "study.toml").write_text('prompt = "a cat"\n')
    r = harness("plan", f"{tmp_path}/")
    assert r.returncode == 2 and "file not found" not in r.stderr, r.stderr
    assert (f"is a folder; expected an experiment file (.toml) such as {tmp_path / 'study.toml'}; the .toml files "
            "in it: study.toml") in r.stderr


def test_a_template_too_large_to_expand_whole_stops_at_once_and_points_to_sampling(tmp_path):
    """Twelve ten-way alternations are 10^12 prompts: planning them all would never finish."""
    big = tmp_path / "big.toml"
    big.write_text('prompt = "' + " ".join(["{a|b|c|d|e|f|g|h|i|j}"] * 12) + '"\ncheckpoints = ["tiny"]\n')
    r = harness("plan", big)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "the template expands to 1,000,000,000,000 distinct prompts" in r.stderr
    assert 'set expand = "sample" and sample = N' in r.stderr
    sampled = tmp_path / "sampled.toml"
    sampled.write_text(big.read_text() + 'expand = "sample"\nsample = 5\n')
    r = harness("plan", sampled)
    assert r.returncode == 0 and "jobs: 5" in r.stdout


def test_a_negative_prompt_too_large_to_plan_stops_at_once(tmp_path):
    """Every negative prompt is planned with every prompt and never sampled: a negative template of 10^9
    texts, or prompts times negatives over the limit, is refused naming the key, before anything expands."""
    from harness.experiment import ExperimentError, load_experiment
    from harness.plan import variants_of

    ten = "{a|b|c|d|e|f|g|h|i|j}"
    (tmp_path / "e.toml").write_text(f'prompt = "a cat"\nnegative_prompt = "{" ".join([ten] * 9)}"\n')
    with pytest.raises(ExperimentError) as err:
        variants_of(load_experiment(tmp_path / "e.toml"))
    assert "key 'negative_prompt': the template expands to 1,000,000,000 distinct prompts" in str(err.value)
    (tmp_path / "p.toml").write_text(f'prompt = "{ten} {ten} {ten}"\nnegative_prompt = "{ten} {ten}"\n')
    prompts, negatives = variants_of(load_experiment(tmp_path / "p.toml"))  # 100,000 pairs: at the limit
    assert (len(prompts), len(negatives)) == (1000, 100)
    (tmp_path / "q.toml").write_text(f'prompt = "{ten} {ten} {ten}"\nnegative_prompt = "{ten} {ten} x{{y|z}}"\n')
    with pytest.raises(ExperimentError) as err:
        variants_of(load_experiment(tmp_path / "q.toml"))
    assert "1,000 prompts times 200 negative prompts make 200,000 pairs" in str(err.value)


def test_a_template_whose_count_is_an_upper_bound_is_not_reported_as_that_many_prompts(tmp_path):
    """Ten copies of one 8-way alternation chosen 4 at a time spell 1,680 prompts through 20 million
    paths; the count over the limit is a bound, and the message says so."""
    from harness.experiment import ExperimentError, load_experiment
    from harness.plan import variants_of

    options = "{a|b|c|d|e|f|g|h}"
    (tmp_path / "e.toml").write_text('prompt = "{4$$' + "|".join([options] * 10) + '}"\n')
    with pytest.raises(ExperimentError) as err:
        variants_of(load_experiment(tmp_path / "e.toml"))
    assert "expands to up to 20,643,840 distinct prompts (an upper bound" in str(err.value)


def test_run_out_of_space_is_one_line_naming_the_image_and_the_run_resumes(tiny_ref, tmp_path):
    """A PNG over the file-size limit (what a full disk or a quota gives: an OSError) ends the run with one
    line naming the image, the reason and what to do; the image's job stays pending and nothing partial is
    left, so the same command, with room, finishes the run."""
    import os
    import resource
    import sqlite3

    exp = tmp_path / "big.toml"
    exp.write_text('prompt = "a cat"\nseeds = [1]\ncheckpoints = ["tiny"]\nsteps = 1\nwidth = 448\nheight = 448\n')
    # the PNG of a 448 px tiny-model image is ~500 kB; the ledger's files stay under ~170 kB
    limit = (300_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "harness", "run", exp, "--out", tmp_path / "run"], capture_output=True,
                       text=True, cwd=ROOT, env=env,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, limit))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: {tmp_path / 'run' / 'images'}/") and ".png: File too large (EFBIG)" in line
    assert "images already finished are kept" in line and "run the same command again" in line
    assert list((tmp_path / "run" / "images").iterdir()) == []  # no partial image, no temp file
    with sqlite3.connect(tmp_path / "run" / "ledger.sqlite") as db:
        assert db.execute("select status, count(*) from jobs group by status").fetchall() == [("pending", 1)]
    again = subprocess.run([sys.executable, "-m", "harness", "run", exp, "--out", tmp_path / "run"],
                           capture_output=True, text=True, cwd=ROOT, env=env)
    assert again.returncode == 0 and "1 planned, 0 already done, 1 generated" in again.stdout, again.stderr


def test_plan_times_the_estimate_by_the_runs_own_finished_images(tmp_path):
    """The table of step costs is a rough guess; a run folder's timed images correct it, and the jobs not
    done yet are priced at the corrected rate."""
    import numpy as np

    from harness.cli import _duration
    from harness.experiment import load_experiment
    from harness.ledger import Ledger
    from harness.plan import make_plan
    from harness.provenance import write_png_atomic

    exp_path = tmp_path / "exp.toml"
    exp_path.write_text('name = "timed"\nprompt = "a {red|blue} {cat|dog}"\nseeds = [1, 2, 3]\nsteps = 10\n'
                        'width = 64\nheight = 64\nstreams = 1\n')
    plan = make_plan(load_experiment(exp_path))
    before = harness("plan", exp_path, "--out", tmp_path / "run")
    assert f"estimate on cpu: {plan.estimate_seconds('cpu'):.0f} s generating\n" in before.stdout
    with Ledger.open(tmp_path / "run") as ledger:
        ledger.add_jobs(plan.jobs)
        for job in plan.jobs[:8]:
            write_png_atomic(ledger.image_path(job.key), np.zeros((8, 8, 3), np.uint8), parameters="", provenance={})
            ledger.mark_done(job.key, batch_id=1, batch_size=1, slot=0, seconds=30 * plan.job_seconds(job, "cpu"),
                             device="cpu", dtype="fp32")
    r = harness("plan", exp_path, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    total, left = 30 * plan.estimate_seconds("cpu"), 30 * plan.estimate_seconds("cpu", jobs=plan.jobs[8:])
    assert (f"estimate on cpu: {_duration(total)} generating, timed by 8 finished images in "
            f"{tmp_path / 'run'} (30x the table); 4 not done: {_duration(left)}") in r.stdout
    assert "estimate on cuda: <1 s generating\n" in r.stdout  # no image was timed on a GPU: the table stands


def test_each_checkpoint_is_timed_by_its_own_finished_images(tmp_path):
    """A fine-tune can run at another speed than its base: with 4 timed images each, each checkpoint's
    jobs are priced at its own measured rate, not at the run's average."""
    from harness.checkpoints import CheckpointRef
    from harness.experiment import load_experiment
    from harness.plan import make_plan, measured_scale, measured_seconds, scales_said

    exp_path = tmp_path / "exp.toml"
    exp_path.write_text('prompt = "a {red|blue} {cat|dog}"\nseeds = [1, 2]\ncheckpoints = ["tiny", "toy"]\n'
                        'streams = 1\n')
    plan = make_plan(load_experiment(exp_path), resolve=lambda name, base_dir=None, config=None: CheckpointRef(
        name, "stand-in", name, f"fp-{name}", 512, "tiny"))
    rate = {"tiny": 10.0, "toy": 2.0}
    timings = [(job, rate[job.checkpoint] * plan.job_seconds(job, "cpu"), "cpu") for job in plan.jobs]
    seconds, n, own = measured_seconds(plan, plan.jobs, timings, "cpu")
    assert n == 16 and own == pytest.approx(rate)
    by_table = {ck: plan.estimate_seconds("cpu", jobs=[j for j in plan.jobs if j.checkpoint == ck]) for ck in rate}
    assert seconds == pytest.approx(sum(rate[ck] * by_table[ck] for ck in rate))
    assert scales_said(plan, own, measured_scale(plan, timings, "cpu")[0]) == "tiny 10x, toy 2x"
    # toy with 3 timed images: priced at the run's scale, and said to be
    fewer = [t for t in timings if t[0].checkpoint == "tiny"] + [t for t in timings if t[0].checkpoint == "toy"][:3]
    seconds, n, own = measured_seconds(plan, plan.jobs, fewer, "cpu")
    overall = measured_scale(plan, fewer, "cpu")[0]
    assert own == pytest.approx({"tiny": 10.0})
    assert seconds == pytest.approx(10 * by_table["tiny"] + overall * by_table["toy"])
    assert scales_said(plan, own, overall) == f"tiny 10x, others {overall:.2g}x"


def test_images_far_from_a_checkpoints_training_size_get_a_note_from_plan_and_run(tmp_path):
    """A model made to draw at 768 px, asked for 1280 px, and the toy model at 512 px (trained at 128-256)
    are out of their depth; SD 1.5 at 768x512 is within it, and the tiny model's random weights have no size."""
    import dataclasses

    from harness.checkpoints import CheckpointRef
    from harness.experiment import load_experiment
    from harness.plan import Plan, make_plan, size_notes

    native = {"sd15-random": (512, "sd1"), "toy": (768, "sd2"), "tiny": (512, "tiny")}
    exp_path = tmp_path / "exp.toml"
    exp_path.write_text('prompt = "a cat"\nseeds = [1]\ncheckpoints = ["sd15-random", "toy", "tiny"]\n'
                        'width = 768\nheight = 512\n[checkpoint.toy]\nwidth = 1280\nheight = 1280\n'
                        '[checkpoint.tiny]\nwidth = 64\nheight = 64\n')
    plan = make_plan(load_experiment(exp_path), resolve=lambda name, base_dir=None, config=None: CheckpointRef(
        name, "stand-in", name, f"fp-{name}", *native[name]))
    (note,) = size_notes(plan, plan.jobs)
    assert note.startswith("checkpoint toy makes 1280x1280 images, far from the 768 px it was trained at")
    assert note.endswith("[checkpoint.toy] width/height) near 768")
    # a name TOML cannot take bare is quoted in the table it points to
    folder = CheckpointRef("./ft", "folder", "/x/ft", "fp", 768, "sd2")
    moved = Plan(plan.experiment, tuple(dataclasses.replace(j, checkpoint="./ft") for j in plan.jobs
                                        if j.checkpoint == "toy"), plan.factors, {"./ft": folder})
    (note,) = size_notes(moved, moved.jobs)
    assert note.endswith('[checkpoint."./ft"] width/height) near 768')
    exp_path.write_text('prompt = "a cat"\nseeds = [1]\ncheckpoints = ["toy"]\nwidth = 512\nheight = 512\n')
    r = harness("plan", exp_path)
    assert r.returncode == 0 and "note: checkpoint toy makes 512x512 images, far from the 256 px" in r.stdout
    assert "far from" not in harness("plan", "experiments/demo.toml").stdout  # the demo's 128 px is the toy's own
    from harness.core import SettingsError
    from harness.run import run_experiment

    said = []  # `run` says it before it checks the device (which fails here, before any image is made)
    with pytest.raises(SettingsError):
        run_experiment(exp_path, out=tmp_path / "run", device="tpu", log=said.append)
    assert any(line.startswith("note: checkpoint toy makes 512x512 images") for line in said)


def test_plan_refuses_a_folder_of_another_experiment_as_run_does(tmp_path):
    """`plan --out` is priced by the folder's timings only where `harness run --out` would go on in it."""
    from harness.ledger import Ledger

    with Ledger.open(tmp_path / "run") as ledger:
        ledger.set_meta("experiment_name", "first")
    exp = tmp_path / "second.toml"
    exp.write_text('name = "second"\nprompt = "a {red|blue} cat"\ncheckpoints = ["tiny"]\n')
    r = harness("plan", exp, "--out", tmp_path / "run")
    assert r.returncode == 2 and "jobs:" not in r.stdout
    assert (f"the run folder {tmp_path / 'run'} holds experiment 'first', not 'second'; give this one its own "
            "--out folder") in r.stderr, r.stderr
    exp.write_text(exp.read_text().replace('"second"', '"first"'))
    r = harness("plan", exp, "--out", tmp_path / "run")
    assert r.returncode == 0 and "jobs: 2" in r.stdout, r.stderr
