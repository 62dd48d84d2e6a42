"""How a metric moves with a setting `[randomize]` drew (strength, steps, guidance).

A drawn setting has no levels to compare, so it gets a rank correlation and a slope instead. The unit is
one draw: every image made with the same seed, draw index and drawn value (all prompts, negative prompts
and checkpoints at that seed and draw share the setting). Its score is the mean over those images, so
prompts average out and the images of one draw, which share their noise, count once.

Draws of one seed share its noise too: with `draws > 1` a seed's luck would read as an effect of whatever
values its draws happened to get. So where seeds have two draws or more the analysis is within seeds: the
value and score of each draw are taken as differences from their seed's means (seeds with a single draw
drop out), which removes every seed's own level. Over the units (or those differences):

* Spearman's rho with a Fisher-z interval whose standard error is sqrt(1.06 / (n - 3 - k)) (the variance
  Fieller, Hartley & Pearson found for rank correlations; k = seeds - 1 where the seeds' means were taken
  out), and the p-value of the same z, so the p-value and the interval agree, except that p is never below
  2 over the number of orders the draws could take (2/n!, within seeds the product of theirs): no order
  is rarer; both from RHO_UNITS units beyond the seeds, as on fewer the normal approximation makes a
  near-perfect rank order near certain;
* the least-squares slope of score on value with its Student-t interval (n - 2 - k degrees of freedom): the
  change in the metric per unit of the setting, read as a straight-line summary, not a model.

Only the experiment's own (main-stage) images carry drawn settings; later stages' images are left out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from .table import _resolve_metric, healthy_mask, in_key_order

MIN_UNITS = 4  # rho and the slope's interval need n - k > 3
# rho's Fisher-z interval and p need this many: on fewer, a rank order near perfect reads as near certain
# (4 draws in order: p 2e-12 by z, where only 2 of the 24 orders are as extreme: 0.083)
RHO_UNITS = 10
DRAWN_COLUMNS = ["parameter", "metric", "units", "images", "low", "high", "within_seed", "rho", "rho_low",
                 "rho_high", "p", "slope", "slope_low", "slope_high", "why_none"]


def drawn_units(df: pd.DataFrame, parameter: str, metric: str) -> pd.DataFrame:
    """One row per draw unit (seed, draw, drawn value) of the main stage's healthy, scored images:
    `seed`, `value`, `score` (the mean over its images) and `images`."""
    metric = _resolve_metric(df, metric)
    if parameter not in df.columns:
        raise ValueError(f"drawn: {parameter!r} is not a column of the table; columns: {list(df.columns)}")
    df = in_key_order(df)
    work = pd.DataFrame({"value": pd.to_numeric(df[parameter], errors="coerce").to_numpy(float),
                         "score": pd.to_numeric(df[metric], errors="coerce").to_numpy(float),
                         "seed": df["seed"].to_numpy() if "seed" in df.columns else 0,
                         "draw": pd.to_numeric(df["draw"], errors="coerce").fillna(0).to_numpy()
                         if "draw" in df.columns else 0}, index=df.index)
    keep = healthy_mask(df, metric) & np.isfinite(work["value"]) & np.isfinite(work["score"])
    if "stage" in df.columns:
        keep &= (df["stage"].fillna("main") == "main").to_numpy()
    units = work[keep].groupby(["seed", "draw", "value"], sort=True)["score"].agg(["mean", "size"])
    return units.reset_index().rename(columns={"mean": "score", "size": "images"})


def within_seed(units: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
    """(values, scores, seed means taken out): the units as analysed. Where some seed has two draws or
    more, each as its difference from its seed's means, over the seeds with two or more (k = their number
    - 1); else the units as they are (k = 0)."""
    per_seed = units.groupby("seed")["value"].transform("size")
    if not (per_seed > 1).any():
        return units["value"].to_numpy(float), units["score"].to_numpy(float), 0
    many = units[per_seed > 1]
    centred = many[["value", "score"]] - many.groupby("seed")[["value", "score"]].transform("mean")
    return centred["value"].to_numpy(float), centred["score"].to_numpy(float), many["seed"].nunique() - 1


def _orders(units: pd.DataFrame) -> list[int]:
    """The sizes of the groups whose values may be shuffled under no relation: each seed's draws where the
    analysis is within seeds (seeds of two or more), else all the units."""
    per_seed = units.groupby("seed")["value"].size()
    return [int(c) for c in per_seed if c > 1] if (per_seed > 1).any() else [len(units)]


def drawn_effect(df: pd.DataFrame, parameter: str, metric: str, confidence: float = 0.95) -> dict:
    """Rank correlation and slope of `metric` on the drawn `parameter` over draw units (see the module)."""
    units = drawn_units(df, parameter, metric)
    x, y, k = within_seed(units)
    n = len(x)
    row = {"parameter": parameter, "metric": _resolve_metric(df, metric).removeprefix("m."), "units": len(units),
           "images": int(units["images"].sum()), "low": float(units["value"].min()) if len(units) else math.nan,
           "high": float(units["value"].max()) if len(units) else math.nan, "within_seed": k > 0, "rho": math.nan,
           "rho_low": math.nan, "rho_high": math.nan, "p": math.nan, "slope": math.nan, "slope_low": math.nan,
           "slope_high": math.nan, "why_none": ""}
    if n - k < MIN_UNITS:
        row["why_none"] = (f"too few draws ({n - k} {'beyond the seeds' if k else ''} of the {MIN_UNITS} "
                           "needed)").replace("  ", " ")
        return row
    if np.ptp(x) == 0:
        row["why_none"] = f"{parameter} does not vary" + (" within seeds" if k else "")
        return row
    if np.ptp(y) == 0:
        row["why_none"] = "the metric does not vary" + (" within seeds" if k else "")
        return row
    rho = float(sps.spearmanr(x, y)[0])
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    se = math.sqrt(1.06 / (n - 3 - k))
    centre = math.atanh(min(max(rho, -0.999999), 0.999999))
    # no order is rarer than 2 of the orders the draws could take (within their seeds): p claims no more, so
    # a perfect order of 10 draws reads p 5.5e-7 (2/10!), not the 1e-77 of its z
    floor = math.exp(max(-745.0, math.log(2) - sum(math.lgamma(c + 1) for c in _orders(units))))
    slope = float(np.dot(x - x.mean(), y - y.mean()) / np.dot(x - x.mean(), x - x.mean()))
    resid = (y - y.mean()) - slope * (x - x.mean())
    dof = n - 2 - k
    half = (float(sps.t.ppf(0.5 + confidence / 2, df=dof))
            * math.sqrt(float(np.dot(resid, resid)) / dof / float(np.dot(x - x.mean(), x - x.mean())))
            if dof > 0 else math.nan)
    row.update(rho=rho, rho_low=math.tanh(centre - z * se), rho_high=math.tanh(centre + z * se),
               p=max(float(2 * sps.norm.sf(abs(centre) / se)), floor), slope=slope, slope_low=slope - half,
               slope_high=slope + half)
    if n - k < RHO_UNITS:
        row.update(rho_low=math.nan, rho_high=math.nan, p=math.nan,
                   why_none=(f"rho's interval and p need {RHO_UNITS} draws{' beyond the seeds' if k else ''}, "
                             f"{n - k} here"))
    return row


def drawn_effects(df: pd.DataFrame, parameters: list[str], metrics: list[str]) -> pd.DataFrame:
    """:func:`drawn_effect` for every drawn parameter the table has and every metric, one row each."""
    rows = [drawn_effect(df, p, m) for p in parameters if p in df.columns for m in metrics]
    return pd.DataFrame(rows, columns=DRAWN_COLUMNS)


def describe(row) -> str:
    """One line for a terminal: `guidance (4-9, 24 draws of 96 images): clip_score: Spearman rho +0.45
    [+0.05, +0.73], p 0.03; slope +1.2 per unit [+0.1, +2.3]` (`within seeds` where seeds have 2+ draws)."""
    span = f"{row['low']:g}-{row['high']:g}"
    head = f"{row['parameter']} ({span}, {row['units']} draws of {row['images']} images): {row['metric']}"
    if not row["rho"] == row["rho"]:
        return f"{head}: no correlation: {row['why_none']}"
    within = " within seeds" if row["within_seed"] else ""
    rho = (f"[{row['rho_low']:+.2f}, {row['rho_high']:+.2f}], p {row['p']:.3g}" if row["p"] == row["p"]
           else f"({row['why_none']})")
    return (f"{head}: Spearman rho{within} {row['rho']:+.2f} {rho}; "
            f"slope {row['slope']:+.4g} per unit [{row['slope_low']:+.4g}, {row['slope_high']:+.4g}]")
