"""Per-group summaries of one metric: count, mean, standard deviation, standard error and
interval (Student t within the metric's range; Wilson's for a 0/1 rate: `mean_interval`) over the
healthy, scored rows of each group, with counts of the unscored, not applicable and
unhealthy rows left out.
"""

from __future__ import annotations

import math

import pandas as pd

from ..columns import sort_key
from .intervals import mean_interval
from .table import _resolve_metric, healthy_mask, in_key_order, inapplicable_mask, metric_bounds


def summarize(df: pd.DataFrame, by: list[str], metric: str, confidence: float = 0.95) -> pd.DataFrame:
    """Per-group n, mean, sd, sem and interval (`mean_interval`) of ``metric`` over healthy, scored rows.

    ``n_unhealthy`` counts rows with ``healthy`` not True; ``n_unscored`` counts
    healthy rows whose metric is NaN; ``n_not_applicable`` the rows the metric does not apply to (a metric
    that compares with the init image, on a txt2img image), which are neither. sd/sem need n >= 2, the
    interval n >= 2.
    """
    metric = _resolve_metric(df, metric)
    bounds = metric_bounds(metric)
    stage_rank = {"main": -1}  # stages in run order (as the table lists them), not by name
    for stage in df["stage"] if "stage" in by else ():
        stage_rank.setdefault(stage, len(stage_rank))
    df = in_key_order(df)
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"summarize: 'by' columns {missing} are not in the table; columns: {list(df.columns)}")
    work = pd.DataFrame({"_v": pd.to_numeric(df[metric], errors="coerce").to_numpy(float),
                         "_h": healthy_mask(df, metric), "_na": inapplicable_mask(df, metric)}, index=df.index)
    for c in by:
        work[c] = df[c]
    groups = work.groupby(by, dropna=False, sort=True) if by else [((), work)]
    records = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        healthy = g[g["_h"]]
        x = healthy["_v"].dropna().to_numpy()
        n = x.size
        sd = float(x.std(ddof=1)) if n >= 2 else math.nan
        lo, hi = mean_interval(x, confidence, bounds)
        records.append({**dict(zip(by, key)), "n": n, "mean": float(x.mean()) if n else math.nan,
                        "sd": sd, "sem": sd / math.sqrt(n) if n >= 2 else math.nan,
                        "ci_low": lo, "ci_high": hi,
                        "n_unscored": int((healthy["_v"].isna() & ~healthy["_na"]).sum()),
                        "n_not_applicable": int(g["_na"].sum()), "n_unhealthy": int((~g["_h"] & ~g["_na"]).sum())})
    records.sort(key=lambda r: tuple((stage_rank.get(r[c], 0),) if c == "stage" else sort_key(r[c])
                                     for c in by))  # natural order (s2 before s10); stages in run order
    return pd.DataFrame.from_records(records, columns=[*by, "n", "mean", "sd", "sem", "ci_low", "ci_high",
                                                      "n_unscored", "n_not_applicable", "n_unhealthy"])
