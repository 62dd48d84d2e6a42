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
    return (f'prompt = "a red circle"\nseeds = [1, 2, 3, 4, 5, 6, 7, 8]\ncheckpoints = ["tiny"]\n'
            f'mode = ["img2img"]\ninit_images = "{init}"\nwidth = 64\nheight = 64\nsteps = 10\n{strengths}'
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
    assert Randomize(strength=(0.3, 0.39)).settings_count("img2img", [10, 20]) == 2  # 6 or 7 steps at 20
    assert Randomize(strength=(0.3, 0.39)).settings_count("txt2img", [10]) == 1
    assert Randomize(strength=(0.3, 0.36), steps=(10, 11)).settings_count("img2img") == 2  # (10, 3), (11, 3)
    assert Randomize(guidance=(0.0, 3.0)).settings_count("txt2img") == 21  # 0.0-1.0 are one; 1.1-3.0
    assert Randomize(guidance=(2.0, 3.0), steps=(5, 6)).settings_count("txt2img") == 22
