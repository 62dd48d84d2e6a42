"""Metrics against settings [randomize] drew: draw units, rank correlation and slope (harness.stats.drawn)."""

import math

import numpy as np
import pandas as pd
import pytest

from harness.stats.drawn import describe, drawn_effect, drawn_effects, drawn_units

METRIC = "m.clip_score:model=tiny"


def _table(rows):
    cols = ["key", "stage", "seed", "draw", "guidance", "healthy", METRIC]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols)


def _linear(n_draws=6, prompts=("a", "b")):
    """Each draw (seed s, draw 0) made at guidance 3 + s for every prompt; the score is 2 * guidance plus the
    prompt's own offset (0 or 10)."""
    rows = []
    for s in range(n_draws):
        for i, p in enumerate(prompts):
            rows.append((f"{p}{s}", "main", s, 0, 3.0 + s, True, 2 * (3.0 + s) + 10 * i))
    return _table(rows)


def test_a_draw_is_one_unit_whose_score_averages_its_images():
    units = drawn_units(_linear(), "guidance", METRIC)
    assert len(units) == 6 and units["images"].tolist() == [2] * 6
    assert units["score"].tolist() == [2 * (3 + s) + 5 for s in range(6)]  # the two prompts' mean


def test_a_straight_line_has_rho_one_and_its_slope_with_a_tight_interval():
    e = drawn_effect(_linear(n_draws=12), "guidance", METRIC)
    assert e["units"] == 12 and e["images"] == 24 and (e["low"], e["high"]) == (3.0, 14.0)
    assert e["rho"] == pytest.approx(1.0) and e["rho_high"] == pytest.approx(1.0) and e["rho_low"] > 0.5
    assert e["slope"] == pytest.approx(2.0) and e["slope_low"] == pytest.approx(2.0)
    assert e["metric"] == "clip_score:model=tiny"


def test_a_perfect_order_is_no_rarer_than_two_of_the_orders_the_draws_could_take():
    """Ten draws in order: the z of rho clipped near 1 says p 1e-77; only 2 of the 10! orders are as
    extreme, so p is 2/10!."""
    e = drawn_effect(_linear(n_draws=10), "guidance", METRIC)
    assert e["p"] == pytest.approx(2 / math.factorial(10)) and e["rho"] == pytest.approx(1.0)


def test_under_ten_draws_rho_has_no_interval_or_p_and_says_why_while_the_slope_keeps_its_own():
    """Four draws in perfect order: by the normal approximation p would be 2e-12, where 2 of the 24
    orders are as extreme (0.083). Below 10 draws rho stands alone; the slope's t interval holds."""
    e = drawn_effect(_linear(n_draws=6), "guidance", METRIC)
    assert e["rho"] == pytest.approx(1.0) and math.isnan(e["rho_low"]) and math.isnan(e["p"])
    assert e["why_none"] == "rho's interval and p need 10 draws, 6 here"
    assert e["slope"] == pytest.approx(2.0) and e["slope_low"] == pytest.approx(2.0)
    assert describe(e).endswith("Spearman rho +1.00 (rho's interval and p need 10 draws, 6 here); "
                                "slope +2 per unit [+2, +2]")


def test_a_falling_noisy_relation_has_a_negative_rho_whose_interval_holds_it():
    rng = np.random.default_rng(0)
    rows = [(f"k{s}", "main", s, 0, g, True, -g + rng.normal(0, 1.0))
            for s, g in enumerate(np.linspace(1, 20, 30))]
    e = drawn_effect(_table(rows), "guidance", METRIC)
    assert -1 < e["rho"] < -0.8 and e["rho_low"] < e["rho"] < e["rho_high"] < 0 and e["p"] < 1e-6
    assert e["slope_low"] < -1 < e["slope_high"] < 0  # the true slope, inside the interval


def test_unhealthy_unscored_and_later_stage_images_are_not_draws():
    t = _linear()
    extra = _table([("x1", "refine", 0, 0, 100.0, True, 1e6),     # a later stage's image: its own settings
                    ("x2", "main", 9, 0, 50.0, False, 1e6),       # unhealthy
                    ("x3", "main", 10, 0, 60.0, True, math.nan)])  # not scored
    e = drawn_effect(pd.concat([t, extra], ignore_index=True), "guidance", METRIC)
    assert e["units"] == 6 and e["high"] == 8.0 and e["slope"] == pytest.approx(2.0)


def test_too_few_draws_or_no_variation_give_no_correlation_and_say_why():
    few = drawn_effect(_linear(n_draws=3), "guidance", METRIC)
    assert few["units"] == 3 and math.isnan(few["rho"]) and math.isnan(few["slope"])
    assert describe(few).endswith("no correlation: too few draws (3 of the 4 needed)")
    flat = _linear()
    flat[METRIC] = 1.0
    e = drawn_effect(flat, "guidance", METRIC)
    assert math.isnan(e["rho"]) and math.isnan(e["slope"]) and describe(e).endswith("the metric does not vary")


def test_draws_of_one_seed_are_compared_within_it_so_a_seeds_luck_is_no_effect():
    """Six seeds, two draws each; the score is the seed's own level (90 or 10) plus noise, and the lucky
    seeds happened to draw low guidance. Across draws that reads as a strong negative effect; within seeds
    there is none, and over 100 such studies the test finds one about 5% of the time."""
    from scipy import stats as sps

    naive_hits = within_hits = 0
    for r in range(100):
        rng = np.random.default_rng(r)
        rows = []
        for seed in range(6):
            lucky = seed % 2 == 0
            for draw in range(2):
                g = (2.0 if lucky else 7.0) + draw + rng.uniform(0, 0.5)
                for p in ("a", "b"):
                    rows.append((f"{p}{seed}{draw}", "main", seed, draw, g, True,
                                 (90 if lucky else 10) + rng.normal(0, 3)))
        t = _table(rows)
        units = drawn_units(t, "guidance", METRIC)
        naive_hits += sps.spearmanr(units["value"], units["score"])[1] < 0.05
        e = drawn_effect(t, "guidance", METRIC)
        within_hits += e["p"] < 0.05
        assert e["within_seed"] and (e["p"] < 0.05) == (e["rho_low"] > 0 or e["rho_high"] < 0)
    assert naive_hits > 60 and within_hits <= 10
    assert "rho within seeds" in describe(e)


def test_the_p_value_agrees_with_the_interval():
    rng = np.random.default_rng(2)
    for n in (6, 9, 15, 40):
        rows = [(f"k{s}", "main", s, 0, float(s), True, s * 0.1 + rng.normal(0, 1)) for s in range(n)]
        e = drawn_effect(_table(rows), "guidance", METRIC)
        assert (e["p"] < 0.05) == (e["rho_low"] > 0 or e["rho_high"] < 0)


def test_effects_cover_each_drawn_parameter_the_table_has_and_lines_read_as_numbers():
    t = _linear()
    t["steps"] = 20  # a fixed setting is no draw, but a column the table has
    out = drawn_effects(t, ["guidance", "strength"], [METRIC])
    assert out["parameter"].tolist() == ["guidance"]  # no strength column: nothing to say about it
    line = describe(out.iloc[0])
    assert line.startswith("guidance (3-8, 6 draws of 12 images): clip_score:model=tiny: Spearman rho +1.00")
    assert "slope +2 per unit" in line
