"""How a metric moves with a setting `[randomize]` drew (strength, steps, guidance).

A drawn setting has no levels to compare, so it gets a rank correlation and a slope instead. The unit is
one draw: every image made with the same seed, draw index and drawn value (all prompts, negative prompts
and checkpoints at that seed and draw share the setting). Its score is the mean over those images, so
prompts average out and the images of one draw, which share their noise, count once. Over the units:

* Spearman's rho with a Fisher-z interval whose standard error is sqrt(1.06 / (n - 3)) (the variance
  Fieller, Hartley & Pearson found for rank correlations), and scipy's p-value;
* the least-squares slope of unit score on the drawn value with its Student-t interval: the change in the
  metric per unit of the setting, read as a straight-line summary, not a model.

Only the experiment's own (main-stage) images carry drawn settings; later stages' images are left out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from .table import _resolve_metric, healthy_mask, in_key_order

MIN_UNITS = 4  # the Fisher-z interval needs n > 3
DRAWN_COLUMNS = ["parameter", "metric", "units", "images", "low", "high", "rho", "rho_low", "rho_high", "p",
                 "slope", "slope_low", "slope_high"]


def drawn_units(df: pd.DataFrame, parameter: str, metric: str) -> pd.DataFrame:
    """One row per draw unit (seed, draw, drawn value) of the main stage's healthy, scored images:
    `value`, `score` (the mean over its images) and `images`."""
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


def drawn_effect(df: pd.DataFrame, parameter: str, metric: str, confidence: float = 0.95) -> dict:
    """Rank correlation and slope of `metric` on the drawn `parameter` over draw units (see the module)."""
    units = drawn_units(df, parameter, metric)
    n = len(units)
    x, y = units["value"].to_numpy(float), units["score"].to_numpy(float)
    row = {"parameter": parameter, "metric": _resolve_metric(df, metric).removeprefix("m."), "units": n,
           "images": int(units["images"].sum()), "low": float(x.min()) if n else math.nan,
           "high": float(x.max()) if n else math.nan, "rho": math.nan, "rho_low": math.nan, "rho_high": math.nan,
           "p": math.nan, "slope": math.nan, "slope_low": math.nan, "slope_high": math.nan}
    if n < MIN_UNITS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return row  # too few draws, or nothing varies: no correlation to speak of
    rho, p = sps.spearmanr(x, y)
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    half = z * math.sqrt(1.06 / (n - 3))
    centre = math.atanh(min(max(float(rho), -0.999999), 0.999999))
    fit = sps.linregress(x, y)
    t = float(sps.t.ppf(0.5 + confidence / 2, df=n - 2))
    row.update(rho=float(rho), rho_low=math.tanh(centre - half), rho_high=math.tanh(centre + half), p=float(p),
               slope=float(fit.slope), slope_low=float(fit.slope - t * fit.stderr),
               slope_high=float(fit.slope + t * fit.stderr))
    return row


def drawn_effects(df: pd.DataFrame, parameters: list[str], metrics: list[str]) -> pd.DataFrame:
    """:func:`drawn_effect` for every drawn parameter the table has and every metric, one row each."""
    rows = [drawn_effect(df, p, m) for p in parameters if p in df.columns for m in metrics]
    return pd.DataFrame(rows, columns=DRAWN_COLUMNS)


def describe(row) -> str:
    """One line for a terminal: `guidance (4-9, 24 draws): clip_score rho +0.45 [+0.05, +0.73], p 0.03;
    +1.2 per unit [+0.1, +2.3]`."""
    span = f"{row['low']:g}-{row['high']:g}"
    head = f"{row['parameter']} ({span}, {row['units']} draws of {row['images']} images): {row['metric']}"
    if not row["rho"] == row["rho"]:
        return f"{head}: too few draws or no variation to correlate (needs {MIN_UNITS} draws)"
    return (f"{head}: Spearman rho {row['rho']:+.2f} [{row['rho_low']:+.2f}, {row['rho_high']:+.2f}], "
            f"p {row['p']:.3g}; slope {row['slope']:+.4g} per unit [{row['slope_low']:+.4g}, {row['slope_high']:+.4g}]")
