"""Shards of a staged experiment keep together the main variants whose later-stage images one `top_k`
ranks as one variant (a stage that gives their children one prompt and negative prompt), so merged shards
hold what one run holds."""

import pytest

from harness.ledger import Ledger
from harness.run import merge_runs, run_experiment

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

# the two negative-prompt levels of a prompt are two main variants; `blurry|dim` puts them in different
# shards of 2. `refine` makes every child with no negative prompt, so its children of both levels are one
# variant of stage refine, which `polish` ranks with top_k = 1. The colours are ones whose two groups fall
# in different shards of 2, so each shard has work.
EXP = """
name = "topk_across_shards"
prompt = "a {red|green} cat"
negative_prompt = "{@n: blurry|dim}"
seeds = [1, 2]
checkpoints = ["tiny"]
steps = 2
width = 64
height = 64
metrics = ["clip_score:model=tiny"]

[[stages]]
name = "refine"
prompt = "__parent__"
negative_prompt = ""
strengths = [0.5]

[[stages]]
name = "polish"
from = "refine"
prompt = "__parent__, sharp"
strengths = [0.5]
top_k = 1
metric = "clip_score:model=tiny"
"""


def _stage_counts(run):
    with Ledger.open(run, readonly=True) as led:
        jobs = [j for j in led.done_jobs() if j.key in led.planned_keys()]
    out = {}
    for j in jobs:
        out[j.meta.get("stage", "main")] = out.get(j.meta.get("stage", "main"), 0) + 1
    return out


def test_merged_shards_of_a_three_stage_run_keep_as_many_top_k_images_as_one_run(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(EXP)
    run_experiment(exp, out=tmp_path / "full", progress=False, log=lambda m: None)
    for i in range(2):
        run_experiment(exp, out=tmp_path / f"s{i}", shard=(i, 2), progress=False, log=lambda m: None)
    merge_runs(tmp_path / "merged", [tmp_path / "s0", tmp_path / "s1"], log=lambda m: None)
    full, merged = _stage_counts(tmp_path / "full"), _stage_counts(tmp_path / "merged")
    assert full == {"main": 8, "refine": 8, "polish": 2}
    assert merged == full


def test_variants_are_grouped_only_where_a_top_k_ranks_them_together(tmp_path):
    from harness.experiment import load_experiment
    from harness.plan import make_plan, shard, variant_of
    from harness.stages import planned_stages, shard_groups

    exp_path = tmp_path / "exp.toml"
    exp_path.write_text(EXP)
    exp = load_experiment(exp_path)
    plan = make_plan(exp)
    groups = shard_groups(exp, planned_stages(exp, list(plan.jobs), plan.checkpoints))
    by_group = {}
    for v, leader in groups.items():
        by_group.setdefault(leader, set()).add(v)
    # each colour's two negative prompts are one group (refine drops the negative prompt): 4 variants, 2 groups
    assert sorted(len(g) for g in by_group.values()) == [2, 2]
    assert all(len({v[1] for v in g}) == 1 for g in by_group.values())
    halves = [shard(plan.jobs, i, 2, by_variant=True, groups=groups) for i in range(2)]
    assert sorted(j.key for h in halves for j in h) == sorted(j.key for j in plan.jobs)
    first, second = ({groups[variant_of(j)] for j in h} for h in halves)
    assert first and second and first.isdisjoint(second)

    kept = tmp_path / "kept.toml"  # refine keeps each parent's negative prompt: every variant its own group
    kept.write_text(EXP.replace('negative_prompt = ""\n', ""))
    exp = load_experiment(kept)
    plan = make_plan(exp)
    groups = shard_groups(exp, planned_stages(exp, list(plan.jobs), plan.checkpoints))
    assert len(groups) == 4 and len(set(groups.values())) == 4  # each variant alone, standing for what polish ranks
    halves = [shard(plan.jobs, i, 2, by_variant=True, groups=groups) for i in range(2)]
    assert sorted(j.key for h in halves for j in h) == sorted(j.key for j in plan.jobs)


def test_the_plan_command_shows_a_shard_with_its_groups_whole(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    exp = tmp_path / "exp.toml"
    exp.write_text(EXP)
    seen = []
    for i in range(2):
        r = subprocess.run([sys.executable, "-m", "harness", "plan", str(exp), "--shard", f"{i}/2", "--format", "jsonl"],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        assert r.returncode == 0, r.stderr
        seen.append([json.loads(line) for line in r.stdout.splitlines()])
    assert sorted(len(s) for s in seen) == [4, 4]
    for jobs in seen:  # a shard holds both negative prompts of each of its colours
        prompts = {j["prompt"] for j in jobs}
        assert len([j for j in jobs if j["prompt"] in prompts]) == 2 * 2 * len(prompts)


def test_another_negative_prompt_level_moves_no_main_image_to_another_shard(tmp_path):
    """A group stands for what its top_k ranks, not for its first member: levels added to the negative
    prompt (to one, or to two) join their colour's group, and every image a shard held before stays there."""
    from harness.experiment import load_experiment
    from harness.plan import make_plan, shard
    from harness.stages import planned_stages, shard_groups

    def shards(text: str) -> dict[str, int]:
        path = tmp_path / "exp.toml"
        path.write_text(text)
        exp = load_experiment(path)
        plan = make_plan(exp)
        groups = shard_groups(exp, planned_stages(exp, list(plan.jobs), plan.checkpoints))
        return {j.key: i for i in range(2) for j in shard(plan.jobs, i, 2, by_variant=True, groups=groups)}

    alone = shards(EXP.replace("{@n: blurry|dim}", "blurry"))  # one negative prompt: each variant alone
    before = shards(EXP)
    after = shards(EXP.replace("{@n: blurry|dim}", "{@n: blurry|dim|ugly|noisy|grainy}"))
    assert len(alone) == 4 and all(before[key] == i for key, i in alone.items())
    assert len(after) == 20 and all(after[key] == i for key, i in before.items())
