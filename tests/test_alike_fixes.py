"""Planned images that would repeat another's pixels: listed strengths at drawn steps, negative prompts at a
drawn guidance at or below 1, and `[randomize]` draws that differ only in what changes no pixel."""

import pytest

from harness.experiment import ExperimentError, load_experiment
from harness.experiment_tables import Randomize
from harness.plan import make_plan, merged_note, plan_notes

INIT = "experiments/inputs/house.png"


def plan_of(tmp_path, text):
    path = tmp_path / "e.toml"
    path.write_text(text)
    return make_plan(load_experiment(path))


def img2img(strengths="", randomize=""):
    from pathlib import Path

    init = Path(__file__).resolve().parents[1] / INIT
    steps = "" if "steps" in randomize else "steps = 10\n"  # drawn steps leave a fixed value unused: an error
    return (f'prompt = "a red circle"\nseeds = [1, 2, 3, 4, 5, 6, 7, 8]\ncheckpoints = ["tiny"]\n'
            f'mode = ["img2img"]\ninit_images = "{init}"\nwidth = 64\nheight = 64\n{steps}{strengths}'
            f'[randomize]\nseed = 0\n{randomize}')


def test_listed_strengths_that_run_the_same_steps_at_a_drawn_step_count_make_one_image(tmp_path):
    """0.3 and 0.35 run 3 denoising steps at 10 and 11 steps, 3 and 4 at 12: only the seeds that drew 12 get
    a 0.35 image of their own."""
    plan = plan_of(tmp_path, img2img("strengths = [0.3, 0.35]\n", "steps = [10, 12]\n"))
    by_seed = {}
    for j in plan.jobs:
        by_seed.setdefault((j.seed, j.steps), []).append(j.strength)
    assert all(v == [0.3] for (_, n), v in by_seed.items() if n < 12)
    assert all(sorted(v) == [0.3, 0.35] for (_, n), v in by_seed.items() if n == 12)
    assert {n for _, n in by_seed} == {10, 11, 12}  # the seeds drew every step count (the test means something)
    left_out = len(plan.merged)
    assert left_out == sum(1 for (_, n) in by_seed if n < 12) and len(plan.jobs) == 16 - left_out
    assert all(int(a.strength * a.steps) == int(b.strength * b.steps) and a.seed == b.seed for a, b in plan.merged)
    note = merged_note(plan)
    assert note.startswith(f"{left_out} planned images would repeat another's pixels and are made once")
    assert "strength 0.35 runs int(0.35 * 1" in note and note in plan_notes(plan, list(plan.jobs))


def test_negative_prompts_at_a_drawn_guidance_that_reads_none_make_one_image(tmp_path):
    plan = plan_of(tmp_path, 'prompt = "a red circle"\nnegative_prompt = "{@n: blurry|ugly}"\n'
                             'seeds = [1, 2, 3, 4, 5, 6]\ncheckpoints = ["tiny"]\nwidth = 64\nheight = 64\n'
                             '[randomize]\nseed = 0\ndraws = 2\nguidance = [0.5, 3.0]\n')
    low = [j for j in plan.jobs if j.guidance <= 1]
    high = [j for j in plan.jobs if j.guidance > 1]
    assert low and high  # both kinds of draw happen
    assert all(j.negative_prompt == "blurry" for j in low)  # 'ugly' is never read there: one image
    assert {j.negative_prompt for j in high} == {"blurry", "ugly"}
    assert len(plan.merged) == len(low) and "never read" in merged_note(plan)
    # a seed never gets two draws at or below 1: they would be one image
    per_seed = {}
    for j in low:
        per_seed.setdefault(j.seed, set()).add(j.meta["draw"])
    assert all(len(draws) == 1 for draws in per_seed.values())


def test_drawn_strengths_that_run_the_same_steps_are_drawn_again_and_counted_once(tmp_path):
    plan = plan_of(tmp_path, img2img(randomize="draws = 2\nstrength = [0.3, 0.45]\n"))
    for seed in range(1, 9):
        counts = [int(j.strength * j.steps) for j in plan.jobs if j.seed == seed]
        assert sorted(counts) == [3, 4]  # 0.3-0.39 run 3 steps, 0.4-0.45 run 4: one draw of each
    with pytest.raises(ExperimentError) as err:  # every strength in 0.3-0.39 runs 3 steps: one image
        plan_of(tmp_path, img2img(randomize="draws = 3\nstrength = [0.3, 0.39]\n"))
    assert "got 3, but the ranges give every image only one setting" in str(err.value)
    assert "int(strength * steps) denoising steps count once" in str(err.value)


def test_settings_are_counted_by_what_changes_pixels():
    assert Randomize(strength=(0.3, 0.39)).settings_count("img2img", [10]) == 1
    assert Randomize(strength=(0.3, 0.39)).settings_count("img2img", [20]) == 2  # 6 or 7 steps at 20
    assert Randomize(strength=(0.3, 0.39)).settings_count("img2img", [10, 20]) == 1  # one image at 10 steps
    assert Randomize(strength=(0.3, 0.39)).settings_count("txt2img", [10]) == 1
    assert Randomize(strength=(0.3, 0.36), steps=(10, 11)).settings_count("img2img") == 2  # (10, 3), (11, 3)
    assert Randomize(guidance=(0.0, 3.0)).settings_count("txt2img") == 21  # 0.0-1.0 are one; 1.1-3.0
    assert Randomize(guidance=(2.0, 3.0), steps=(5, 6)).settings_count("txt2img") == 22


def test_a_folder_made_before_images_were_merged_keeps_them_and_what_was_made_from_them(tmp_path, monkeypatch):
    """A run made every planned image, twins included (as earlier versions of the planner did); running the
    same experiment again plans them as they are: nothing is 'an earlier version', nothing is made, and an
    ablation's part of the plan stays."""
    from harness import plan as planning
    from harness.ledger import Ledger
    from harness.run import run_experiment

    exp = tmp_path / "e.toml"
    exp.write_text(img2img("strengths = [0.3, 0.35]\n", "steps = [10, 12]\n").replace("seeds = [1, 2, 3, 4, 5, 6, 7, 8]",
                                                                                       "seeds = [1, 2, 3]"))
    with monkeypatch.context() as m:
        m.setattr(planning, "pixel_alike", lambda job, emphasis=True: job.key)  # the planner merging nothing
        first = run_experiment(exp, out=tmp_path / "run", progress=False, evaluate_after=False)
    assert first.generated == 6
    twins = len(make_plan(load_experiment(exp)).merged)
    assert twins > 0  # the seeds drew step counts at which 0.3 and 0.35 run alike
    with Ledger.open(tmp_path / "run") as led:
        led.set_plan("ablation", [k for k in led.plan_keys("main")][:1])
    again = run_experiment(exp, out=tmp_path / "run", progress=False, evaluate_after=False)
    assert (again.planned, again.generated, again.unplanned) == (6, 0, 0)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert "ablation" in led.plan_parts() and len(led.plan_keys("main")) == 6
    fresh = run_experiment(exp, out=tmp_path / "fresh", progress=False, evaluate_after=False)
    assert fresh.generated == 6 - twins  # a new folder makes each image once


def test_each_checkpoint_gets_draws_different_images_at_its_own_steps(tmp_path):
    """tiny at 10 steps, toy at 20: draws of 0.3-0.45 must differ at 10 steps (3 or 4 denoising steps), so
    neither checkpoint makes one image twice."""
    from harness.checkpoints import CheckpointRef

    text = img2img(randomize="draws = 2\nstrength = [0.3, 0.45]\n").replace(
        'checkpoints = ["tiny"]', 'checkpoints = ["tiny", "toy"]') + "[checkpoint.toy]\nsteps = 20\n"
    (tmp_path / "e.toml").write_text(text)
    plan = make_plan(load_experiment(tmp_path / "e.toml"), resolve=lambda name, base_dir=None, config=None:
                     CheckpointRef(name, "stand-in", name, f"fp-{name}", 512, "tiny"))
    assert not plan.merged
    for ck in ("tiny", "toy"):
        for seed in range(1, 9):
            runs = {int(j.strength * j.steps) for j in plan.jobs if j.checkpoint == ck and j.seed == seed}
            assert len(runs) == 2
    with pytest.raises(ExperimentError, match="give every image only one setting"):  # 3 steps at 10 for all
        (tmp_path / "e.toml").write_text(text.replace("strength = [0.3, 0.45]", "strength = [0.3, 0.39]"))
        load_experiment(tmp_path / "e.toml")


def test_a_stage_lists_its_strengths_beside_a_drawn_main_strength_and_they_are_compared(tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from harness.cli import app
    from harness.report import build_report
    from harness.run import run_experiment

    init = Path(__file__).resolve().parents[1] / INIT
    exp = tmp_path / "e.toml"
    exp.write_text(f'prompt = "a red circle"\nseeds = [1, 2]\ncheckpoints = ["tiny"]\nmode = ["img2img"]\n'
                   f'init_images = "{init}"\nwidth = 64\nheight = 64\nsteps = 4\nmetrics = ["health", '
                   f'"clip_score:model=tiny,cache=none"]\n[randomize]\nseed = 0\nstrength = [0.5, 0.9]\n'
                   f'[[stages]]\nname = "refine"\nprompt = "a red circle, sharp"\nstrengths = [0.5, 0.75]\n')
    run_experiment(exp, out=tmp_path / "run", progress=False)
    r = build_report(tmp_path / "run", html=False)
    (strength,) = [c for c in r.comparisons if c.factor == "strength"]
    assert strength.rows[0].n_pairs == 2 and strength.baseline == 0.5  # the stage's 0.75 vs 0.5, per parent
    out = CliRunner().invoke(app, ["compare", str(tmp_path / "run"), "--factor", "strength"])
    assert out.exit_code == 0 and "0.75" in out.output, out.output
    assert (tmp_path / "run" / "tables" / "drawn.csv").is_file()


def test_a_randomized_run_with_nothing_scored_gets_no_drawn_table(tmp_path):
    from harness.report import build_report
    from harness.run import run_experiment

    exp = tmp_path / "e.toml"
    exp.write_text('prompt = "a red circle"\nseeds = [1, 2]\ncheckpoints = ["tiny"]\nwidth = 64\nheight = 64\n'
                   'steps = 2\nmetrics = []\n[randomize]\nseed = 0\nguidance = [4.0, 9.0]\n')
    run_experiment(exp, out=tmp_path / "run", progress=False)
    r = build_report(tmp_path / "run")
    assert r.drawn is None and not (tmp_path / "run" / "tables" / "drawn.csv").exists()
    assert "Settings drawn by [randomize]" not in (tmp_path / "run" / "index.html").read_text()
