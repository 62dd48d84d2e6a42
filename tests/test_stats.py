"""Tests for harness.stats: calibration by simulation, hand-checked numbers, reporting."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, strategies as st
from scipy import stats as sps

from harness.stats.results import md_text
from harness.stats import (
    cluster_bootstrap_ci,
    cluster_bootstrap_means,
    holm,
    paired_compare,
    summarize,
    t_interval,
)

ARTISTS = ["", "greg rutkowski", "ian mcque"]


def study_table(values: dict[str, np.ndarray], n_clusters: int, n_seeds: int) -> pd.DataFrame:
    """A tidy table: one row per (subject, seed, artist); values[artist] has shape (clusters, seeds)."""
    rows = []
    for c in range(n_clusters):
        for s in range(n_seeds):
            for artist, v in values.items():
                rows.append({"key": f"{c}-{s}-{artist}", "f.subject": f"subject {c}", "f.artist": artist,
                             "checkpoint": "tiny", "seed": s, "mode": "txt2img", "steps": 20, "guidance": 7.5,
                             "width": 256, "height": 256, "m.clip_score": float(v[c, s]), "healthy": True})
    return pd.DataFrame(rows)


def simulated_pair(rng, n_clusters, n_seeds, effect, sd_cluster=0.5, sd_noise=0.5):
    """Baseline arm and treatment arm whose difference is effect + cluster effect + noise."""
    base = rng.normal(20, 1, (n_clusters, n_seeds))
    diff = effect + rng.normal(0, sd_cluster, (n_clusters, 1)) + rng.normal(0, sd_noise, (n_clusters, n_seeds))
    return {"": base, "greg rutkowski": base + diff}


def test_a_seed_is_drawn_with_all_its_pairs_so_repeating_them_at_other_strengths_adds_no_certainty():
    """Each image made again at a second strength with the same difference: the pairs of one seed are one
    draw of its noise, so the interval, the ranking intervals and the Method line are those of the design
    with one pair per seed (drawing the pairs alone would narrow the interval as if the seeds were twice
    as many)."""
    rng = np.random.default_rng(3)
    once = study_table(simulated_pair(rng, 6, 5, effect=0.4, sd_noise=1.0), 6, 5)
    once["mode"], once["strength"] = "img2img", 0.3
    twice = pd.concat([once, once.assign(strength=0.6, key=once["key"] + "-0.6")], ignore_index=True)
    one, two = (paired_compare(df, factor="artist", metric="clip_score", n_boot=500, rng=np.random.default_rng(0))
                for df in (once, twice))
    assert "strength" in two.pair_on and two.rows[0].n_pairs == 2 * one.rows[0].n_pairs == 60
    assert (two.rows[0].ci_low, two.rows[0].ci_high) == pytest.approx((one.rows[0].ci_low, one.rows[0].ci_high))
    assert "then seeds within each drawn cluster" in two.method
    three = {**simulated_pair(rng, 6, 5, effect=0.4), "ian mcque": rng.normal(20, 1, (6, 5))}
    once = study_table(three, 6, 5).assign(mode="img2img", strength=0.3)
    twice = pd.concat([once, once.assign(strength=0.6, key=once["key"] + "-0.6")], ignore_index=True)
    one, two = (paired_compare(df, factor="artist", metric="clip_score", n_boot=500, rng=np.random.default_rng(0))
                for df in (once, twice))
    bounds = [[b for r in c.ranking for b in (r.ci_low, r.ci_high, r.rank_ci_low, r.rank_ci_high)] for c in (one, two)]
    assert bounds[1] == pytest.approx(bounds[0])


# ------------------------------------------------------------ calibration


def test_cluster_bootstrap_ci_covers_true_effect_at_nominal_rate():
    # Design: 30 clusters x 4 seeds, cluster SD 0.5 and seed noise SD 0.5 on the
    # difference. With 30 clusters the percentile interval's small-sample
    # shrinkage and the two-stage double count of seed noise roughly cancel
    # (about 95% by a 2000-run simulation; 20 clusters with a dominant cluster
    # effect gives about 93%). An interval that ignored clusters would cover
    # only about 78% here.
    rng = np.random.default_rng(20240501)
    reps, covered = 400, 0
    for _ in range(reps):
        df = study_table(simulated_pair(rng, 30, 4, effect=0.5), 30, 4)
        row = paired_compare(df, factor="artist", metric="clip_score", n_boot=400, rng=rng).rows[0]
        covered += row.ci_low <= 0.5 <= row.ci_high
    assert 0.925 <= covered / reps <= 0.975


def test_wilcoxon_rejects_at_nominal_rate_without_effect():
    # The cluster effect is shared by a cluster's seeds: a test that treated the
    # 80 pairs as independent would reject far more often than 5%.
    rng = np.random.default_rng(7)
    reps, rejected = 400, 0
    for _ in range(reps):
        df = study_table(simulated_pair(rng, 20, 4, effect=0.0), 20, 4)
        row = paired_compare(df, factor="artist", metric="clip_score", n_boot=1, rng=rng).rows[0]
        rejected += row.p_value < 0.05
    assert 0.02 <= rejected / reps <= 0.08


def test_settings_of_one_prompt_and_seed_are_one_cluster_so_the_test_stays_calibrated():
    """Three strengths of each prompt and seed share the prompt's effect and the seed's noise: counted as
    three clusters, the test rejected a true null about 30% of the time and the interval covered about 73%."""
    rng = np.random.default_rng(11)
    reps, rejected, covered = 120, 0, 0
    for _ in range(reps):
        pair = simulated_pair(rng, 20, 4, effect=0.0, sd_cluster=1.0, sd_noise=1.0)
        base = study_table(pair, 20, 4)
        df = pd.concat([base.assign(mode="img2img", strength=s, key=base["key"] + f"-{s}",
                                    **{"m.clip_score": base["m.clip_score"] + rng.normal(0, 0.2, len(base))})
                        for s in (0.3, 0.5, 0.7)], ignore_index=True)
        row = paired_compare(df, factor="artist", metric="clip_score", n_boot=200, rng=rng).rows[0]
        assert row.n_pairs == 240 and row.n_clusters == 20
        rejected += row.p_value < 0.05
        covered += row.ci_low <= 0.0 <= row.ci_high
    assert rejected / reps <= 0.10 and covered / reps >= 0.88


def test_a_stage_image_falls_in_its_parents_cluster_whatever_factors_its_own_prompt_adds():
    """A refine stage adds `{sharp|soft}` to each main prompt: its images share their parents' prompt
    condition, so comparing colour counts the 6 subjects, not 6 main plus 12 refine clusters."""
    rng = np.random.default_rng(12)
    main = study_table({a: rng.normal(0, 1, (6, 2)) for a in ARTISTS[:2]}, 6, 2).assign(stage="main")
    refine = pd.concat([main.assign(stage="refine", key=main["key"] + f"-{f}", **{"f.finish": f})
                        for f in ("sharp", "soft")], ignore_index=True)
    c = paired_compare(pd.concat([main, refine], ignore_index=True), factor="artist", metric="clip_score",
                       rng=rng, n_boot=50)
    assert c.rows[0].n_pairs == 36 and c.rows[0].n_clusters == 6 and "clusters = prompt conditions (f.subject)" in c.method


def test_two_stage_bootstrap_resamples_seeds_within_a_cluster():
    rng = np.random.default_rng(0)
    values, clusters = np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4)
    one_stage = cluster_bootstrap_means(values, clusters, n_boot=200, rng=rng, two_stage=False)
    two_stage = cluster_bootstrap_means(values, clusters, n_boot=200, rng=rng, two_stage=True)
    assert np.allclose(one_stage, 2.5)
    assert two_stage.std() > 0.3
    assert set(np.round(two_stage * 4)).issubset(set(range(4, 17)))


def test_bootstrap_means_center_on_the_pair_mean_and_weight_by_pairs():
    rng = np.random.default_rng(1)
    values = np.array([0.0, 0.0, 0.0, 3.0])  # cluster a: three pairs, cluster b: one
    clusters = ["a", "a", "a", "b"]
    boot = cluster_bootstrap_means(values, clusters, n_boot=20000, rng=rng)
    # draws: {a,a} -> 0, {b,b} -> 3, {a,b} -> 3/4 (pair-weighted, not 1.5)
    assert set(np.round(boot, 6)) == {0.0, 0.75, 3.0}
    lo, hi = cluster_bootstrap_ci(values, clusters, rng=rng, n_boot=400)
    assert lo == 0.0 and hi == 3.0


# ------------------------------------------------------------ hand-checked


def crafted_table() -> pd.DataFrame:
    # subjects s1, s2; seeds 0, 1; baseline values 10; diffs (style a) 0.5, 0.0 | 1.0, -0.25
    # and (style b) 2, 2 | 2, 2.
    rows = []
    diffs = {"a": {("s1", 0): 0.5, ("s1", 1): 0.0, ("s2", 0): 1.0, ("s2", 1): -0.25},
             "b": {("s1", 0): 2.0, ("s1", 1): 2.0, ("s2", 0): 2.0, ("s2", 1): 2.0}}
    for subj in ("s1", "s2"):
        for seed in (0, 1):
            rows.append({"f.subject": subj, "f.style": "", "seed": seed, "m.score": 10.0, "healthy": True})
            for style in ("a", "b"):
                rows.append({"f.subject": subj, "f.style": style, "seed": seed,
                             "m.score": 10.0 + diffs[style][(subj, seed)], "healthy": True})
    return pd.DataFrame(rows)


def test_crafted_table_mean_diff_pairs_and_win_rate_with_ties():
    c = paired_compare(crafted_table(), factor="style", metric="score", tie_margin=0.1,
                       rng=np.random.default_rng(0), n_boot=200)
    a = c.rows[0]
    assert (a.level, a.n_pairs, a.n_clusters) == ("a", 4, 2)
    assert a.mean_diff == pytest.approx(0.3125)
    assert (a.wins, a.ties, a.losses) == (2, 1, 1)
    assert a.win_rate == pytest.approx(0.625)
    assert c.tie_margin == 0.1 and "tie if |diff| <= 0.1" in c.method
    # per-cluster mean diffs 0.25 and 0.375, both positive: exact two-sided p = 2 / 2**2
    assert a.p_value == pytest.approx(0.5)
    assert "smallest attainable p = 0.5" in a.note


def test_crafted_table_holm_adjusts_across_levels():
    c = paired_compare(crafted_table(), factor="style", metric="score", rng=np.random.default_rng(0), n_boot=200)
    ps = [r.p_value for r in c.rows]
    assert [r.p_holm for r in c.rows] == pytest.approx(holm(ps))
    b = c.rows[1]
    assert b.mean_diff == 2.0 and (b.ci_low, b.ci_high) == (2.0, 2.0) and b.win_rate == 1.0


def test_holm_matches_hand_computed_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    out = holm([0.02, float("nan")])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_is_monotone_bounded_and_never_below_raw(ps):
    adj = holm(ps)
    order = np.argsort(ps, kind="stable")
    assert all(a >= p - 1e-12 and a <= 1.0 for a, p in zip(adj, ps))
    sorted_adj = np.asarray(adj)[order]
    assert np.all(np.diff(sorted_adj) >= -1e-12)


def test_all_zero_differences_give_p_one():
    df = crafted_table()
    df.loc[df["f.style"] == "a", "m.score"] = 10.0
    row = paired_compare(df, factor="style", metric="score", rng=np.random.default_rng(0), n_boot=50).rows[0]
    assert row.p_value == 1.0 and row.mean_diff == 0.0 and row.win_rate == 0.5


# ------------------------------------------------------------ exclusions


def test_unhealthy_unscored_and_unpaired_rows_are_excluded_and_counted():
    df = crafted_table()
    base = df["f.style"] == ""
    unhealthy = df.index[(df["f.subject"] == "s1") & (df.seed == 0) & base][0]
    df.loc[unhealthy, "healthy"] = False  # partners a and b of (s1, 0) become unpaired
    unscored = df.index[(df["f.subject"] == "s2") & (df.seed == 1) & (df["f.style"] == "a")][0]
    df.loc[unscored, "m.score"] = np.nan
    c = paired_compare(df, factor="style", metric="score", tie_margin=0.1, rng=np.random.default_rng(0), n_boot=50)
    assert c.n_excluded == {"unhealthy": 1, "unscored": 1, "unpaired": 2, "no_level": 0}
    a = c.rows[0]
    assert a.n_pairs == 2 and a.mean_diff == pytest.approx((0.0 + 1.0) / 2)
    assert c.rows[1].n_pairs == 3


def test_duplicate_conditions_fail_with_advice_on_pair_on():
    df = pd.concat([crafted_table(), crafted_table().head(1)])
    with pytest.raises(ValueError, match="pair_on"):
        paired_compare(df, factor="style", metric="score", rng=np.random.default_rng(0))
    # the example shows two rows that do share the level and pair_on values, even when others come first
    with pytest.raises(ValueError) as e:
        paired_compare(crafted_table(), factor="style", metric="score", pair_on=["f.subject"],
                       rng=np.random.default_rng(0))
    assert "e.g. [{'f.style': '', 'f.subject': 's1'}, {'f.style': '', 'f.subject': 's1'}]" in str(e.value)


def test_parameters_that_follow_the_factor_do_not_break_pairs_and_are_noted():
    # a negative-prompt factor changes the negative prompt; a checkpoint brings its own size
    rng = np.random.default_rng(5)
    df = study_table({a: rng.normal(0, 1, (6, 2)) for a in ARTISTS[:2]}, 6, 2)
    df = df.rename(columns={"f.artist": "f.negative:neg"})
    df["negative_prompt"] = df["f.negative:neg"].map({"": "", "greg rutkowski": "blurry"})
    c = paired_compare(df, factor="negative:neg", metric="clip_score", rng=rng, n_boot=50)
    assert "negative_prompt" not in c.pair_on and c.rows[0].n_pairs == 12
    assert not any(n.startswith("negative_prompt differs") for n in c.notes)  # the treatment itself, no confound
    big = df.assign(checkpoint="big", width=512, height=512)
    c = paired_compare(pd.concat([df, big]), factor="checkpoint", metric="clip_score", rng=rng, n_boot=50)
    assert "width" not in c.pair_on and c.rows[0].n_pairs == 24
    assert [n.split(" (")[0] for n in c.notes] == ["width differs between the images of a pair",
                                                   "height differs between the images of a pair"]
    assert all("(set with checkpoint)" in n for n in c.notes)


def test_parameters_varying_on_their_own_pair_and_tell_conditions_apart():
    # two init images and two stages: each an axis of the study, so pairs must match on them
    rng = np.random.default_rng(6)
    parts = []
    for init in ("a.png", "b.png"):
        for stage in ("main", "refine"):
            t = study_table({a: rng.normal(0, 1, (6, 2)) for a in ARTISTS[:2]}, 6, 2)
            parts.append(t.assign(init_image=init, stage=stage, mode="img2img", strength=0.5))
    df = pd.concat(parts, ignore_index=True)
    c = paired_compare(df, factor="artist", metric="clip_score", rng=rng, n_boot=50)
    assert {"init_image", "stage"} <= set(c.pair_on) and "strength" not in c.pair_on
    # init images are units of their own; the stages of one prompt, init image and seed share their evidence
    assert c.rows[0].n_pairs == 48 and c.rows[0].n_clusters == 12 and not c.notes
    expected = (df[df["f.artist"] != ""]["m.clip_score"].to_numpy() - df[df["f.artist"] == ""]["m.clip_score"].to_numpy())
    assert c.rows[0].mean_diff == pytest.approx(expected.mean())


def test_randomize_draws_pair_by_draw_index_and_the_drawn_parameter_is_noted():
    """[randomize] with draws > 1: guidance is drawn per prompt, seed and draw, so it differs within every
    pair; pairs share the draw index (a replicate like the seed) and the note says the parameter varies."""
    rng = np.random.default_rng(8)
    df = pd.concat([study_table({a: rng.normal(0, 1, (6, 3)) for a in ARTISTS[:2]}, 6, 3).assign(draw=d)
                    for d in (0, 1)], ignore_index=True)
    df["guidance"] = rng.uniform(5, 9, len(df)).round(1)
    c = paired_compare(df, factor="artist", metric="clip_score", rng=rng, n_boot=50)
    assert "draw" in c.pair_on and "guidance" not in c.pair_on
    assert c.rows[0].n_pairs == 36 and c.rows[0].n_clusters == 6  # draws, like seeds, are within a cluster
    assert any(n.startswith("guidance differs between the images of a pair (it varies from image to image, "
                            "as [randomize] draws do)") for n in c.notes)
    with pytest.raises(ValueError, match="factor 'draw' is not a factor column"):
        paired_compare(df, factor="draw", metric="clip_score", rng=rng)


def test_stage_images_pair_although_each_starts_from_its_own_parent():
    """A stage's images compared on a factor of their parents: the init image (the parent's file) differs
    within every pair as a consequence of the factor, not as a change of its own, so they pair with no
    confounding note (their chain's input init image is what must match)."""
    rng = np.random.default_rng(9)
    df = study_table({a: rng.normal(0, 1, (6, 3)) for a in ARTISTS[:2]}, 6, 3)
    df["parent_key"] = [f"{i:064x}" for i in range(len(df))]
    df["init_image"] = [f"images/{key}.png" for key in df["parent_key"]]
    c = paired_compare(df, factor="artist", metric="clip_score", rng=rng, n_boot=50)
    assert c.rows[0].n_pairs == 18 and not any("init_image" in note for note in c.notes)
    df.loc[0, "parent_key"] = None  # one init image not a parent's: the stage reason would not hold for all
    mixed = paired_compare(df, factor="artist", metric="clip_score", rng=rng, n_boot=50)
    assert not any("parent" in note for note in mixed.notes)
    df["parent_key"] = None  # the same varying init images without stages: no reason is made up
    plain = paired_compare(df, factor="artist", metric="clip_score", rng=rng, n_boot=50)
    assert "init_image differs between the images of a pair (it varies from image to image), so each " \
           "difference includes that change too" in plain.notes


def stage_table(parent_seeds: dict[str, list[int]]) -> pd.DataFrame:
    """Stage images with a seed of their own (7) refined from parents of the given seeds per artist level."""
    rows = []
    for artist, seeds in parent_seeds.items():
        for subject in ("s1", "s2"):
            for seed in seeds:
                parent = f"{artist}-{subject}-{seed}"
                rows.append({"key": f"stage-{parent}", "f.artist": artist, "f.subject": subject, "seed": 7,
                             "parent_seed": seed, "parent_key": parent, "init_image": f"images/{parent}.png",
                             "stage": "refine", "checkpoint": "tiny", "m.clip_score": float(seed + (artist != "")),
                             "healthy": True})
    return pd.DataFrame(rows)


def test_stage_images_with_their_own_seed_pair_on_their_parents_seed():
    c = paired_compare(stage_table({"": [1, 2], "ian mcque": [1, 2]}), factor="artist", metric="clip_score",
                       rng=np.random.default_rng(0), n_boot=50)
    assert c.pair_on == ["f.subject", "checkpoint", "seed", "parent_seed", "stage"]
    assert c.rows[0].n_pairs == 4 and c.rows[0].mean_diff == 1.0 and c.n_excluded["unpaired"] == 0
    assert not any(n.startswith("stage ") for n in c.notes)


def test_stage_images_whose_levels_refine_parents_of_other_seeds_get_a_note_naming_the_stage():
    c = paired_compare(stage_table({"": [1, 2], "ian mcque": [2, 3]}), factor="artist", metric="clip_score",
                       rng=np.random.default_rng(0), n_boot=50)
    assert c.rows[0].n_pairs == 2 and c.n_excluded["unpaired"] == 4
    assert ("stage refine: 4 of its 8 images have no pair at another level of f.artist: a pair needs images refined "
            "from parents of the same seed, and the levels refine parents of different seeds ((empty): 1, 2; "
            "ian mcque: 2, 3), as when top_k keeps each variant's best images") in c.notes


def test_stage_images_at_their_parents_seed_whose_levels_kept_other_seeds_get_the_same_reason():
    """A stage with no seeds of its own (the shipped staged.toml) makes each image at its parent's seed: a
    top_k that kept other seeds at each level is the reason given, not a missing image."""
    df = stage_table({"": [1, 2], "ian mcque": [2, 3]})
    df["seed"] = df["parent_seed"]
    c = paired_compare(df, factor="artist", metric="clip_score", rng=np.random.default_rng(0), n_boot=50)
    assert c.rows[0].n_pairs == 2 and c.n_excluded["unpaired"] == 4
    assert ("stage refine: 4 of its 8 images have no pair at another level of f.artist: a pair needs images of "
            "the same seed, which this stage takes from each parent, and the levels refine parents of different "
            "seeds ((empty): 1, 2; ian mcque: 2, 3), as when top_k keeps each variant's best images") in c.notes


def test_no_complete_pairs_names_the_column_that_keeps_the_levels_apart():
    """Comparing mode in a run with img2img strengths: strength is part of every pair and never matches."""
    rng = np.random.default_rng(9)
    df = study_table({a: rng.normal(0, 1, (6, 2)) for a in ARTISTS[:1]}, 6, 2)
    both = pd.concat([df.assign(strength=np.nan), df.assign(mode="img2img", strength=0.5),
                      df.assign(mode="img2img", strength=0.7)], ignore_index=True)
    c = paired_compare(both, factor="mode", metric="clip_score", rng=rng, n_boot=50)
    assert c.rows[0].n_pairs == 0
    assert c.rows[0].note == ("no complete pairs: strength never take(s) the same value at txt2img and img2img "
                              "(pass --pair-on without it to pair across it)")
    one = both[both["strength"] != 0.7]  # one img2img strength: leaving strength out of pair_on pairs them
    paired = paired_compare(one, factor="mode", metric="clip_score", rng=rng, n_boot=50,
                            pair_on=["f.subject", "checkpoint", "seed"])
    assert paired.rows[0].n_pairs == 12


def test_rows_without_a_level_of_the_factor_are_left_out_and_counted():
    # comparing img2img strengths in a run that also has txt2img images (strength missing there)
    rng = np.random.default_rng(7)
    df = study_table({a: rng.normal(0, 1, (6, 2)) for a in ARTISTS[:1]}, 6, 2)
    img = [df.assign(mode="img2img", strength=s, **{"m.clip_score": df["m.clip_score"] + s}) for s in (0.3, 0.6)]
    txt = df.assign(strength=np.nan)
    c = paired_compare(pd.concat([txt, *img]), factor="strength", metric="clip_score", rng=rng, n_boot=50)
    assert c.baseline == 0.3 and c.rows[0].n_pairs == 12 and c.rows[0].mean_diff == pytest.approx(0.3)
    assert c.n_excluded["no_level"] == 12 and "12 without a level of the factor" in c.to_text()
    with pytest.raises(ValueError, match="no values"):
        paired_compare(txt, factor="strength", metric="clip_score", rng=rng)
    # a number level however written on the command line; the error shows levels as plain numbers
    for spelling in ("0.60", ".6", "0.6", 0.6):
        c = paired_compare(pd.concat([txt, *img]), factor="strength", metric="clip_score", baseline=spelling,
                           rng=rng, n_boot=20)
        assert c.baseline == 0.6 and c.rows[0].level == 0.3
    with pytest.raises(ValueError, match=r"baseline '0.45' is not a level of 'strength'; levels: 0.3, 0.6$"):
        paired_compare(pd.concat([txt, *img]), factor="strength", metric="clip_score", baseline="0.45", rng=rng)


# ------------------------------------------------------------ names and errors


def test_bare_factor_and_metric_names_map_to_columns():
    c = paired_compare(crafted_table(), factor="style", metric="score", rng=np.random.default_rng(0), n_boot=20)
    assert (c.factor, c.metric, c.baseline) == ("f.style", "m.score", "")
    assert c.pair_on == ["f.subject", "seed"]


def test_unknown_factor_error_lists_available_factors():
    with pytest.raises(ValueError, match=r"'styel'.*did you mean 'style'\?.*vary in this run: f\.subject, f\.style \("):
        paired_compare(crafted_table(), factor="styel", metric="score", rng=np.random.default_rng(0))


@pytest.mark.parametrize("kwargs, expected", [
    (dict(factor="style", pair_on=["f.style", "seed"]), "holds the compared factor 'f.style': pairs share everything"),
    (dict(factor="style", pair_on=["f.subjct"]), "'f.subjct' not a column of the table"),
    (dict(factor="checkpoint"), "factor 'checkpoint' has only 1 level ('tiny') in these images"),
])
def test_comparison_mistakes_are_named_plainly(kwargs, expected):
    df = crafted_table().assign(checkpoint="tiny")
    with pytest.raises(ValueError) as info:
        paired_compare(df, metric="score", rng=np.random.default_rng(0), **kwargs)
    assert expected in str(info.value) and "np." not in str(info.value)


def test_text_levels_that_are_numbers_take_the_smallest_as_the_default_baseline():
    df = crafted_table()
    df = df[df["f.style"] != ""].assign(**{"f.style": lambda d: d["f.style"].map({"a": "10", "b": "5"})})
    c = paired_compare(df, factor="style", metric="score", rng=np.random.default_rng(0), n_boot=20)
    assert c.baseline == "5" and [r.level for r in c.rows] == ["10"]


def test_unknown_baseline_error_lists_levels():
    with pytest.raises(ValueError, match=r"'c' is not a level.*'a', 'b'"):
        paired_compare(crafted_table(), factor="style", metric="score", baseline="c", rng=np.random.default_rng(0))


def test_the_empty_level_is_named_as_the_tables_show_it():
    c = paired_compare(crafted_table(), factor="style", metric="score", baseline="a", rng=np.random.default_rng(0))
    assert c.baseline == "a"
    c = paired_compare(crafted_table(), factor="style", metric="score", baseline="(empty)",
                       rng=np.random.default_rng(0))
    assert c.baseline == "" and [r.level for r in c.rows] == ["a", "b"]


def test_text_and_markdown_quote_a_level_spelled_like_the_empty_mark():
    df = crafted_table()
    df["f.style"] = df["f.style"].replace({"a": "(empty)"})
    c = paired_compare(df, factor="style", metric="score", rng=np.random.default_rng(0), n_boot=50)
    text = c.to_text()
    assert "baseline (empty)" in text and '\n"(empty)" ' in text
    assert '| "(empty)" |' in c.to_markdown()


def test_unknown_metric_error_lists_metrics():
    with pytest.raises(ValueError, match=r"m\.score"):
        paired_compare(crafted_table(), factor="style", metric="clip", rng=np.random.default_rng(0))


def test_rng_must_be_a_generator():
    with pytest.raises(TypeError, match="Generator"):
        paired_compare(crafted_table(), factor="style", metric="score", rng=0)


def test_checkpoint_factor_pairs_on_artist_and_defaults_baseline_to_first_level():
    rng = np.random.default_rng(3)
    df = study_table({a: rng.normal(0, 1, (6, 2)) for a in ARTISTS}, 6, 2)
    other = df.assign(checkpoint="sd-v1-5", **{"m.clip_score": df["m.clip_score"] + 1.0})
    c = paired_compare(pd.concat([df, other]), factor="checkpoint", metric="clip_score", rng=rng, n_boot=50)
    assert c.baseline == "sd-v1-5" and "f.artist" in c.pair_on and "checkpoint" not in c.pair_on
    row = c.rows[0]
    assert row.level == "tiny" and row.n_pairs == 36 and row.n_clusters == 18
    assert row.mean_diff == pytest.approx(-1.0) and row.win_rate == 0.0
    assert c.ranking is None


def test_explicit_baseline_and_lower_is_better_flip_wins():
    c = paired_compare(crafted_table(), factor="style", metric="score", baseline="b", higher_is_better=False,
                       rng=np.random.default_rng(0), n_boot=20)
    assert [r.level for r in c.rows] == ["", "a"]
    assert all(r.win_rate == 1.0 for r in c.rows)  # both are lower than b everywhere
    assert [r.level for r in c.ranking][0] == ""


# ------------------------------------------------------------ ranking


def test_ranking_recovers_clearly_different_levels_with_tight_intervals():
    rng = np.random.default_rng(11)
    true = {"": 0.0, "greg rutkowski": 2.0, "ian mcque": 1.0}
    subject = rng.normal(0, 1, (12, 1))
    values = {a: subject + m + rng.normal(0, 0.2, (12, 3)) for a, m in true.items()}
    c = paired_compare(study_table(values, 12, 3), factor="artist", metric="clip_score", rng=rng, n_boot=500)
    assert [r.level for r in c.ranking] == ["greg rutkowski", "ian mcque", ""]
    for i, r in enumerate(c.ranking, start=1):
        assert r.rank == i and (r.rank_ci_low, r.rank_ci_high) == (i, i)
        assert r.n_blocks == 36 and r.n_clusters == 12
        # means share the subject effect, so intervals are wide but rank-stable
        assert r.ci_low <= np.mean(values[r.level]) <= r.ci_high
    # 12 clusters: the ranking's intervals carry the level rows' warning, and the table shows the count
    assert any(n.startswith("ranking: 12 cluster(s), so its rank and mean intervals are likely too narrow")
               for n in c.notes)
    assert "| rank | level | mean | 95% CI | rank 95% CI | blocks | clusters |" in c.to_markdown()


def test_the_health_metric_is_read_over_every_image_not_only_the_healthy_ones():
    """`healthy` is decided by `health`: comparing or summarising `health` over the healthy images alone would
    show 1 everywhere. Over every image its mean is the share of healthy images, and a checkpoint that makes
    failed images shows it; other metrics still leave the unhealthy images out."""
    df = study_table({"": np.ones((8, 2)), "greg rutkowski": np.ones((8, 2))}, 8, 2)
    failed = (df["f.artist"] == "greg rutkowski") & (df["seed"] == 1)
    df["m.health"] = np.where(failed, 0.0, 1.0)
    df["healthy"] = ~failed
    (row,) = paired_compare(df, factor="artist", metric="health", rng=np.random.default_rng(0), n_boot=200).rows
    assert (row.n_pairs, row.mean_diff, row.losses) == (16, -0.5, 8)
    means = summarize(df, ["f.artist"], "health").set_index("f.artist")["mean"]
    assert (means[""], means["greg rutkowski"]) == (1.0, 0.5)
    assert summarize(df, ["f.artist"], "clip_score").set_index("f.artist").loc["greg rutkowski", "n_unhealthy"] == 8


def test_the_order_rows_are_stored_in_changes_no_number():
    """A run merged from shards stores its rows in shard order: its comparisons, rankings and summaries must
    be those of the same images stored in plan order, to the last digit."""
    rng = np.random.default_rng(3)
    df = study_table({a: rng.normal(i, 1, (16, 3)) for i, a in enumerate(ARTISTS)}, 16, 3)
    shuffled = df.sample(frac=1.0, random_state=7)

    def numbers(table):
        c = paired_compare(table, factor="artist", metric="clip_score", rng=np.random.default_rng(0), n_boot=300)
        return (c.to_frame().to_dict("records"), [r.__dict__ for r in c.ranking],
                summarize(table, ["f.artist"], "clip_score").to_dict("records"))

    assert numbers(shuffled) == numbers(df)


# ------------------------------------------------------------ summarize


def test_the_ranking_does_not_depend_on_the_baseline():
    rng = np.random.default_rng(4)
    df = study_table({a: rng.normal(i, 1, (10, 2)) for i, a in enumerate(ARTISTS)}, 10, 2)
    rankings = [paired_compare(df, factor="artist", metric="clip_score", baseline=b, rng=np.random.default_rng(0),
                               n_boot=300).ranking for b in ARTISTS]
    assert rankings[0] == rankings[1] == rankings[2]


def test_summarize_matches_scipy_t_interval_and_counts_exclusions():
    rng = np.random.default_rng(5)
    df = study_table({a: rng.normal(i, 1, (5, 2)) for i, a in enumerate(ARTISTS)}, 5, 2)
    df.loc[0, "healthy"] = False
    df.loc[1, "m.clip_score"] = np.nan
    out = summarize(df, ["f.artist"], "clip_score").set_index("f.artist")
    for artist in ARTISTS:
        x = df[(df["f.artist"] == artist) & df.healthy]["m.clip_score"].dropna().to_numpy()
        lo, hi = sps.t.interval(0.95, df=len(x) - 1, loc=x.mean(), scale=sps.sem(x))
        row = out.loc[artist]
        assert row["n"] == len(x) and row["sd"] == pytest.approx(x.std(ddof=1))
        assert row["sem"] == pytest.approx(sps.sem(x))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi))
    assert out.loc["", "n_unhealthy"] == 1 and out.loc["greg rutkowski", "n_unscored"] == 1
    assert out["n_unhealthy"].sum() == 1 and out["n_unscored"].sum() == 1


def test_summarize_counts_images_a_metric_does_not_apply_to_apart_from_the_unscored():
    """Image similarity to the init image has no score on a txt2img image: that is no failed score."""
    metric = "m.clip_image_similarity[model=toy,pretrained=toy]"
    df = pd.DataFrame({"key": [f"k{i}" for i in range(6)], "f.color": ["red", "blue"] * 3,
                       "mode": ["txt2img", "txt2img", "img2img", "img2img", "img2img", "img2img"],
                       metric: [np.nan, np.nan, 0.5, 0.6, np.nan, 0.7], "healthy": True})
    out = summarize(df, ["f.color"], metric).set_index("f.color")
    assert out.loc["red", ["n", "n_unscored", "n_not_applicable", "n_unhealthy"]].tolist() == [1, 1, 1, 0]
    assert out.loc["blue", ["n", "n_unscored", "n_not_applicable", "n_unhealthy"]].tolist() == [2, 0, 1, 0]


def test_t_interval_is_nan_below_two_values():
    assert all(math.isnan(v) for v in t_interval([1.0]))
    assert all(math.isnan(v) for v in t_interval([1.0, float("nan")]))


# ------------------------------------------------------------ output


def test_to_dict_is_json_serialisable_with_nan_as_null():
    df = crafted_table()
    df.loc[df["f.style"] == "a", "healthy"] = False  # level a has no pairs: NaN fields
    c = paired_compare(df, factor="style", metric="score", rng=np.random.default_rng(0), n_boot=20)
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    a = d["rows"][0]
    assert a["level"] == "a" and a["n_pairs"] == 0 and a["mean_diff"] is None and a["p_value"] is None
    assert "no complete pairs" in a["note"]
    assert d["n_excluded"]["unhealthy"] == 4 and d["ranking"] == []


def test_ambiguous_pairs_name_the_column_that_tells_them_apart():
    """`--pair-on seed` over a study with a subject factor: two images of a level share the seed, and the
    error names f.subject (what would pair them) rather than leaving the user to guess."""
    with pytest.raises(ValueError) as e:
        paired_compare(crafted_table(), factor="style", metric="score", pair_on=["seed"],
                       rng=np.random.default_rng(0), n_boot=20)
    message = str(e.value)
    assert "share their 'f.style' level and pair_on values with another row" in message
    assert "pass pair_on with the column that tells them apart ('f.subject' differs there)" in message


def test_to_markdown_has_header_and_one_row_per_level():
    c = paired_compare(crafted_table(), factor="style", metric="score", rng=np.random.default_rng(0), n_boot=20)
    lines = c.to_markdown().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    table = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        table.append(ln)
    assert table[0].startswith("| level | pairs |") and set(table[1]) <= set("|-")
    assert [row.split("|")[1].strip() for row in table[2:]] == ["a", "b"]
    assert len({ln.count("|") for ln in table}) == 1


def test_to_markdown_shows_html_in_levels_literally():
    df = crafted_table()
    df["f.style"] = df["f.style"].map({"": "", "a": "by x <b>", "b": "<!-- y"})
    text = paired_compare(df, factor="style", metric="score", rng=np.random.default_rng(0), n_boot=20).to_markdown()
    assert "<b>" not in text and "<!--" not in text
    assert "| by x &lt;b&gt; |" in text and "| &lt;!-- y |" in text
    df["f.style"] = df["f.style"].map({"": "", "by x <b>": "*best* `v2`", "<!-- y": "_old_ oil_paint"})
    text = paired_compare(df, factor="style", metric="score", rng=np.random.default_rng(0), n_boot=20).to_markdown()
    assert "| \\*best\\* \\`v2\\` |" in text and "| \\_old\\_ oil_paint |" in text  # literal, not emphasis


def test_markdown_prose_lines_stay_readable_and_still_cannot_open_a_tag():
    c = paired_compare(crafted_table(), factor="style", metric="score", rng=np.random.default_rng(0), n_boot=20)
    method = next(ln for ln in c.to_markdown().splitlines() if ln.startswith("Method:"))
    assert "tie if |diff| <= 0" in method and "\\|" not in method and "&lt;" not in method
    assert md_text("a <b> & <!-- c &amp; | d", cell=False) == "a &lt;b> & &lt;!-- c &amp;amp; | d"
    assert md_text("a <b> | d") == "a &lt;b&gt; \\| d"


def test_to_text_and_to_frame_list_every_level():
    c = paired_compare(crafted_table(), factor="style", metric="score", rng=np.random.default_rng(0), n_boot=20)
    text = c.to_text()
    assert "pairs" in text and "\na " in text and "\nb " in text and "(empty)" in text
    frame = c.to_frame()
    assert list(frame["level"]) == ["a", "b"] and {"mean_diff", "ci_low", "p_holm", "win_rate"} <= set(frame)


@pytest.mark.parametrize("clusters, narrow", [(10, True), (15, False)])
def test_fewer_than_15_clusters_are_flagged_as_a_too_narrow_interval(clusters, narrow):
    rng = np.random.default_rng(3)
    rows = [{"f.subject": f"s{k}", "f.style": style, "seed": seed, "m.score": rng.normal(), "healthy": True}
            for k in range(clusters) for seed in (1, 2) for style in ("", "a")]
    (a,) = paired_compare(pd.DataFrame(rows), factor="style", metric="score", rng=rng, n_boot=100).rows
    assert a.n_clusters == clusters
    assert ("likely too narrow" in a.note) is narrow and "little power" not in a.note


def test_a_bare_name_that_is_a_one_level_parameter_points_at_the_prompt_factor_of_that_name():
    """`{@mode: portrait|landscape}` next to the parameter column `mode` (txt2img only): `--factor mode` is
    the parameter, and the error says the prompt factor is `f.mode`."""
    df = crafted_table().assign(mode="txt2img").rename(columns={"f.style": "f.mode"})
    with pytest.raises(ValueError, match=r"factor 'mode' names the parameter column 'mode', which has one level "
                                         r"here; the prompt factor of that name is 'f.mode'"):
        paired_compare(df, factor="mode", metric="score", rng=np.random.default_rng(0))
    c = paired_compare(df, factor="f.mode", metric="score", rng=np.random.default_rng(0), n_boot=20)
    assert c.factor == "f.mode" and c.rows[0].n_pairs > 0


def test_a_metric_that_does_not_apply_to_txt2img_images_says_so_not_that_the_prompt_lacks_a_question():
    metric = "clip_image_similarity[model=tiny,pretrained=tiny]"
    df = crafted_table().rename(columns={"m.score": f"m.{metric}"}).assign(mode="txt2img")
    df[f"m.{metric}"] = np.nan  # txt2img images have no init image to compare with
    c = paired_compare(df, factor="style", metric=metric, rng=np.random.default_rng(0), n_boot=20)
    note = c.rows[0].note
    assert note.endswith("(all NaN: 4 at a, 4 at (empty); the metric does not apply to them: it compares each "
                         "image with its init image (img2img) or its parent (a stage's image), and they have "
                         "none)"), note
    assert c.n_excluded["not_applicable"] == 12


def test_a_level_with_no_scored_image_says_so_in_its_note():
    df = crafted_table()
    df.loc[df["f.style"] == "b", "m.score"] = np.nan  # the metric failed on every image of style b
    c = paired_compare(df, factor="style", metric="score", rng=np.random.default_rng(0), n_boot=20)
    b = next(r for r in c.rows if r.level == "b")
    assert b.n_pairs == 0 and b.note.startswith("no complete pairs: no healthy image at b has a score (all NaN: ")
    df["m.score"] = np.nan  # nothing scored: the baseline (the empty level) has none either
    c = paired_compare(df, factor="style", metric="score", rng=np.random.default_rng(0), n_boot=20)
    assert c.rows[0].note.startswith(f"no complete pairs: no healthy image at {c.rows[0].level} or (empty) has a "
                                     "score (all NaN: ")
