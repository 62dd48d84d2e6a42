"""Clause ablation: the leave-one-out arms, contributions paired by seed, `harness ablate` on the tiny model."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from harness.ablation import ASKS_PROMPT_NOTE, FULL, AblationResult, arms_for, contributions, seeds_for_a_verdict
from harness.cli import app
from harness.core import Job, Variant
from harness.metrics.base import Metric, MetricInfo, Option, register


@register
class HasClause(Metric):
    """Test-only: 1 if the prompt has the clause, else 0 (the image is ignored)."""

    INFO = MetricInfo(name="has_clause", description="1 if the prompt has the clause", unit="flag",
                      range=(0.0, 1.0), higher_is_better=True, needs=frozenset({"prompt"}))
    OPTIONS = {"clause": Option("golden hour", "the clause to look for")}

    def _score(self, items):
        return [(float(self.options["clause"] in item.prompt.split(", ")), {}) for item in items]


PROMPT = "a castle on a hill, oil painting, golden hour"


def test_arms_are_the_full_prompt_and_one_per_clause():
    arms, single = arms_for([Variant(PROMPT, {})])
    assert single == []
    assert [a.label for a in arms] == [FULL, "without 0: a castle on a hill", "without 1: oil painting",
                                       "without 2: golden hour"]
    assert [a.prompt for a in arms] == [PROMPT, "oil painting, golden hour", "a castle on a hill, golden hour",
                                        "a castle on a hill, oil painting"]


def test_the_full_prompt_is_rejoined_like_its_leave_one_out_prompts():
    """Spacing and a trailing comma would otherwise differ between the full prompt and every other arm, and
    count as each clause's contribution."""
    arms, _ = arms_for([Variant("a circle,  (on white, plain:1.1),by monet ,", {})])
    assert arms[0].base == "a circle,  (on white, plain:1.1),by monet ,"
    assert [a.prompt for a in arms] == ["a circle, (on white, plain:1.1), by monet", "(on white, plain:1.1), by monet",
                                        "a circle, by monet", "a circle, (on white, plain:1.1)"]


def test_one_clause_prompts_are_set_aside_and_only_all_of_them_is_an_error():
    """A template such as `a castle{, oil painting|}` expands to one prompt of one clause: that prompt is
    left out, the other is ablated."""
    arms, single = arms_for([Variant("a castle, oil painting", {}), Variant("a castle", {})])
    assert single == ["a castle"] and {a.base for a in arms} == {"a castle, oil painting"}
    with pytest.raises(ValueError, match="no prompt has two or more clauses to leave out \\('a castle'\\)"):
        arms_for([Variant("a castle", {})])


def synthetic(effects, seeds=range(8), noise=0.1, rng=np.random.default_rng(0)):
    """Per-image table and arms where removing clause i changes the metric by -effects[i] (plus noise)."""
    arms, _ = arms_for([Variant(PROMPT, {})])
    jobs_of, rows = [], []
    for arm in arms:
        jobs = [Job("tiny", "fp", "txt2img", arm.prompt, "", s, 1, 1.0, "ddim", 64, 64) for s in seeds]
        jobs_of.append((arm, jobs))
        for j in jobs:
            base = 10.0 + j.seed  # the seed's own effect: cancels in pairs
            drop = 0.0 if arm.clause_index is None else effects[arm.clause_index]
            rows.append({"key": j.key, "m.score": base - drop + rng.normal(0, noise), "healthy": True})
    return pd.DataFrame(rows), jobs_of


def test_contributions_are_ranked_full_minus_without_with_intervals():
    images, jobs_of = synthetic([-1.0, 0.0, 2.0])
    t = contributions(images, jobs_of, ["score"], {"score": True}, n_boot=500)
    assert list(t["clause"]) == ["golden hour", "oil painting", "a castle on a hill"]
    assert list(t["rank"]) == [1, 2, 3]
    assert list(t["verdict"]) == ["helps", "unclear", "hurts"]
    for row, truth in zip(t.itertuples(), [2.0, 0.0, -1.0]):
        assert row.ci_low <= row.contribution <= row.ci_high and abs(row.contribution - truth) < 0.15
        assert row.n_pairs == 8
    assert t.iloc[0]["full_win_rate"] == 1.0 and t.iloc[2]["full_win_rate"] == 0.0


def test_contributions_do_not_depend_on_the_order_the_jobs_are_listed_in():
    """The bootstrap resamples seeds by position: jobs listed in another order (seeds shuffled within each
    arm) give the same intervals, as the rows are put in key order first."""
    images, jobs_of = synthetic([-1.0, 0.0, 2.0], noise=0.5)
    shuffled = [(arm, list(reversed(jobs))) for arm, jobs in jobs_of]
    a = contributions(images, jobs_of, ["score"], {"score": True}, n_boot=300)
    b = contributions(images, shuffled, ["score"], {"score": True}, n_boot=300)
    pd.testing.assert_frame_equal(a, b)


def test_few_seeds_give_no_verdict_however_clear_their_interval_looks():
    """Four seeds: the percentile interval of four values is too narrow, and the signed-rank test's smallest
    p is 0.125, so no clause is called helpful or harmful, whatever its interval."""
    images, jobs_of = synthetic([-1.0, 0.0, 2.0], seeds=range(4))
    t = contributions(images, jobs_of, ["score"], {"score": True}, n_boot=500)
    assert list(t["verdict"]) == ["unclear"] * 3 and (t["p_holm"] >= 0.125).all()
    assert t.iloc[0]["ci_low"] > 0  # the interval alone would have said "helps"


def test_seeds_a_verdict_takes_grow_with_the_clauses_holm_corrects_over():
    """k clauses tested: the smallest Holm-adjusted p on n seeds is k * 2^(1-n), which must be below 0.05."""
    assert [seeds_for_a_verdict(k) for k in (1, 2, 3, 4, 5, 6, 7, 12, 13)] == [6, 7, 7, 8, 8, 8, 9, 9, 10]


def test_a_verdict_no_result_could_reach_is_said_so_with_the_seeds_it_takes():
    """Six seeds suffice for one clause but not for three: every difference of one sign still reads
    p(Holm) = 3 * 2^-5, and the note says 7 seeds are needed. Eight seeds are enough: no such note."""
    images, jobs_of = synthetic([-1.0, 0.0, 2.0], seeds=range(6))
    t = contributions(images, jobs_of, ["score"], {"score": True}, n_boot=200)
    assert t.iloc[0]["p_holm"] == pytest.approx(3 / 32) and t.iloc[0]["ci_low"] > 0
    assert (t["verdict"] == "unclear").all()
    assert all("no verdict is possible: on 6 seeds with 3 clauses tested the smallest Holm-adjusted p is 0.0938; "
               "a verdict takes at least 7 seeds" in n for n in t["note"])
    images, jobs_of = synthetic([-1.0, 0.0, 2.0], seeds=range(8))
    assert not any("no verdict" in n for n in contributions(images, jobs_of, ["score"], {"score": True},
                                                            n_boot=200)["note"])


def test_unhealthy_images_left_out_are_counted_in_the_notes_and_said_once():
    images, jobs_of = synthetic([-1.0, 0.0, 2.0])
    images["healthy"] = [i != 3 for i in range(len(images))]
    t = contributions(images, jobs_of, ["score"], {"score": True}, n_boot=200)
    assert all("images left out: 1 unhealthy" in n for n in t["note"])
    text = AblationResult(Path("."), t, higher_is_better={"score": True}).to_text()
    assert text.count("images left out: 1 unhealthy") == 1


def test_seeds_are_the_clusters_whatever_the_settings_init_images_and_negatives():
    """txt2img and img2img images of one seed share its noise: one cluster, not two."""
    images, jobs_of = synthetic([-1.0, 0.0, 2.0], seeds=range(3))
    moved = [(arm, [*jobs, *(Job("tiny", "fp", "img2img", arm.prompt, "blurry", j.seed, 1, 1.0, "ddim", 64, 64,
                                 strength=0.5, init_hash="ab" * 32) for j in jobs)]) for arm, jobs in jobs_of]
    extra = [{"key": j.key, "m.score": float(images.set_index("key").loc[jobs[i].key, "m.score"]), "healthy": True}
             for (arm, jobs), (_, both) in zip(jobs_of, moved) for i, j in enumerate(both[len(jobs):])]
    t = contributions(pd.concat([images, pd.DataFrame(extra)]), moved, ["score"], {"score": True}, n_boot=200)
    assert (t["n_pairs"] == 6).all() and (t["n_seeds"] == 3).all()
    assert all("only 3 cluster" in n for n in t["note"]), list(t["note"])


def test_a_clause_that_changes_nothing_reads_zero_not_minus_zero():
    images, jobs_of = synthetic([0.0, 0.0, 0.0], noise=0.0)
    t = contributions(images, jobs_of, ["score"], {"score": True}, n_boot=100)
    assert all(f"{v:+.4g}" == "+0" for v in (*t["contribution"], *t["ci_low"], *t["ci_high"]))


def test_lower_is_better_metrics_rank_the_clause_that_lowers_it_first():
    images, jobs_of = synthetic([-1.0, 0.0, 2.0])
    t = contributions(images, jobs_of, ["score"], {"score": False}, n_boot=500)
    assert list(t["clause"]) == ["a castle on a hill", "oil painting", "golden hour"]
    assert list(t["verdict"]) == ["helps", "unclear", "hurts"]


def test_a_clause_written_twice_is_named_with_its_position_in_the_text_output():
    from pathlib import Path

    from harness.ablation import AblationResult

    table = pd.DataFrame([{"prompt": "a castle, golden hour, a castle", "metric": "score", "rank": r,
                           "clause_index": i, "clause": c, "contribution": v, "ci_low": v - 1, "ci_high": v + 1,
                           "verdict": "unclear", "p_value": 0.5, "p_holm": 0.5, "full_win_rate": 0.5,
                           "mean_full": 1.0, "mean_without": 1.0 - v, "n_pairs": 20, "n_seeds": 20, "note": ""}
                          for r, (i, c, v) in enumerate([(0, "a castle", 1.5), (1, "golden hour", 0.1),
                                                         (2, "a castle", -1.2)], start=1)])
    lines = AblationResult(Path("."), table).to_text().splitlines()
    assert lines[2].split()[:4] == ["1.", "a", "castle", "(#1)"] and lines[4].split()[:4] == ["3.", "a", "castle", "(#3)"]
    assert lines[3].split()[:3] == ["2.", "golden", "hour"]  # written once: no position


def test_an_unscored_arm_has_no_interval():
    images, jobs_of = synthetic([0.0, 0.0, 1.0])
    images.loc[images["key"].isin({j.key for j in jobs_of[3][1]}), "m.score"] = math.nan
    t = contributions(images, jobs_of, ["score"], {"score": True}, n_boot=200)
    row = t[t["clause"] == "golden hour"].iloc[0]
    assert row.n_pairs == 0 and math.isnan(row.contribution) and row.verdict == "unclear" and row["rank"] == 3


EXPERIMENT = f"""
name = "ablation-test"
prompt = "{PROMPT}"
seeds = [1, 2, 3]
checkpoints = ["tiny"]
steps = 1
guidance = 1.0
width = 64
height = 64
metrics = ["has_clause", "health"]
"""


def test_harness_ablate_on_the_tiny_model_prints_and_writes_the_ranked_table(tmp_path):
    exp = tmp_path / "exp.toml"  # a metric that needs an init image cannot score txt2img images: left out
    exp.write_text(EXPERIMENT.replace('"health"]', '"health", "clip_image_similarity:model=tiny"]'))
    r = CliRunner().invoke(app, ["ablate", str(exp), "--out", str(tmp_path / "run"), "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    lines = [ln.strip() for ln in r.output.splitlines()]
    ranked = [ln for ln in lines if ln[:2] in ("1.", "2.", "3.")]
    # +1 on each of 3 seeds: the signed-rank test cannot reach 0.05 on 3, so no verdict (add seeds); the line
    # shows the Holm-adjusted p the verdict reads, and the seeds beside the pairs
    assert ranked[0].startswith("1. golden hour") and "+1" in ranked[0] and "unclear" in ranked[0]
    assert "p(Holm)=" in ranked[0] and ranked[0].endswith("seeds=3  pairs=3")
    assert "note: under 15 seeds the percentile interval is too narrow" in r.output
    table = pd.read_csv(tmp_path / "run" / "tables" / "ablation.csv")
    assert list(table["clause"]) == ["golden hour", "a castle on a hill", "oil painting"]
    assert list(table["contribution"]) == [1.0, 0.0, 0.0] and list(table["n_pairs"]) == [3, 3, 3]
    assert set(table["metric"]) == {"has_clause[clause=golden hour]"}
    # has_clause reads the prompt: each arm is asked its own question, and the table and output say so
    assert all(note.endswith(ASKS_PROMPT_NOTE) for note in table["note"]) and f"note: {ASKS_PROMPT_NOTE}" in r.output
    assert (tmp_path / "run" / "tables" / "ablation.md").is_file()
    assert "12 images made now" in r.output
    again = CliRunner().invoke(app, ["ablate", str(exp), "--out", str(tmp_path / "run"), "--n-boot", "200"])
    assert again.exit_code == 0 and "0 images made now" in again.output


def test_harness_ablate_skips_one_clause_expansions_and_names_an_unknown_metric(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(EXPERIMENT.replace(PROMPT, "a castle{, golden hour|}"))
    r = CliRunner().invoke(app, ["ablate", str(exp), "--out", str(tmp_path / "run"), "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    assert "prompt: a castle, golden hour" in r.output
    assert "not ablated: 1 prompt(s) of one clause, nothing to leave out: 'a castle'" in r.output
    bad = CliRunner().invoke(app, ["ablate", str(exp), "--out", str(tmp_path / "run"), "-m", "clip_scor"])
    assert bad.exit_code == 2 and "--metric: unknown metric 'clip_scor'" in bad.output
    assert "\"unknown metric" not in bad.output


def test_ablate_with_randomized_settings_pairs_each_arm_with_the_full_prompts_settings(tmp_path):
    """[randomize] draws settings per seed, shared by every arm: full and leave-one-out images of a seed are
    made alike, so every clause gets its pairs."""
    exp = tmp_path / "exp.toml"
    exp.write_text(EXPERIMENT.replace("guidance = 1.0\n", "").replace("steps = 1\n", "") + "[randomize]\nsteps = [1, 3]\nguidance = [2.0, 9.0]\n")
    r = CliRunner().invoke(app, ["ablate", str(exp), "--out", str(tmp_path / "run"), "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "run" / "tables" / "ablation.csv")
    assert list(table["n_pairs"]) == [3, 3, 3] and list(table["contribution"]) == [1.0, 0.0, 0.0]


def test_an_ablation_in_a_run_folder_keeps_the_main_runs_failures_and_their_errors(tmp_path):
    """The folder's main images that failed stay failed, with their errors, for its report: an ablation (or a
    search) in the folder drops only the rows no plan asks for."""
    from harness.ledger import Ledger
    from harness.run import run_experiment

    exp = tmp_path / "exp.toml"
    exp.write_text(EXPERIMENT.replace(PROMPT, "a castle{, golden hour, oil painting|}")
                   .replace("seeds = [1, 2, 3]", "seeds = [1, 2]"))
    run_experiment(exp, out=tmp_path / "run", progress=False, log=lambda m: None)
    with Ledger.open(tmp_path / "run") as led:  # "a castle" has one clause: the ablation leaves it alone
        failed = next(j.key for j in led.all_jobs() if j.prompt == "a castle")
        led.reset([failed])
        led.mark_failed(failed, "CUDA out of memory at batch 4")
    r = CliRunner().invoke(app, ["ablate", str(exp), "--out", str(tmp_path / "run"), "--n-boot", "200"])
    assert r.exit_code == 0, r.output
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert led.status_of(failed) == "failed"
        jobs = led.jobs_frame()
        assert jobs.loc[jobs["key"] == failed, "error"].item() == "CUDA out of memory at batch 4"
