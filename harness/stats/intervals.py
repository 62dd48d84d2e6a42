"""Interval estimates and tests for means: the Student-t interval (Wilson's for rates), the two-stage cluster bootstrap
(its replicate means and percentile interval), the Wilcoxon signed-rank p-value on per-cluster mean
differences and Holm's step-down adjustment, plus the cluster counts below which the test has little
power and the bootstrap interval undercovers. Pure numpy/scipy; randomness comes in as a
``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

MIN_CLUSTERS_FOR_TEST = 6
MIN_CLUSTERS_FOR_CI = 15  # below this the percentile bootstrap interval covers less than its nominal 95 %



def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (NaN ignored); NaNs when n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return (math.nan, math.nan)
    sem = x.std(ddof=1) / math.sqrt(x.size)
    half = sps.t.ppf(0.5 + confidence / 2, df=x.size - 1) * sem
    return (float(x.mean() - half), float(x.mean() + half))


def mean_interval(values: Sequence[float], confidence: float = 0.95,
                  bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """Interval for the mean of ``values`` (NaN ignored) of a metric whose scores lie in ``bounds``: for a
    rate (every value 0 or 1, bounds (0, 1): the toy oracles, health) the Wilson score interval, which stays
    in [0, 1] and keeps its coverage near 0 and 1; else the Student-t interval, cut to ``bounds`` (a score
    cannot average outside its range; values outside ``bounds`` widen them). NaNs when n < 2, as
    :func:`t_interval`."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return (math.nan, math.nan)
    if bounds is not None and tuple(bounds) == (0.0, 1.0) and np.isin(x, (0.0, 1.0)).all():
        n, p = x.size, float(x.mean())
        z = float(sps.norm.ppf(0.5 + confidence / 2))
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return (0.0 if p == 0 else max(0.0, centre - half), 1.0 if p == 1 else min(1.0, centre + half))
    lo, hi = t_interval(x, confidence)
    if bounds is not None:  # a range the values themselves leave (a metric that misstates it) stretches to them
        lo, hi = max(lo, min(bounds[0], float(x.min()))), min(hi, max(bounds[1], float(x.max())))
    return (float(lo), float(hi))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, same order as given; NaN passes through.

    Sorted ascending, the i-th smallest of m p-values becomes
    ``max over j <= i of min(1, (m - j + 1) * p_(j))`` (monotone in p).
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out.tolist()


def cluster_bootstrap_means(
    values: np.ndarray,
    clusters: Sequence[Any],
    *,
    n_boot: int,
    rng: np.random.Generator,
    two_stage: bool = True,
) -> np.ndarray:
    """Bootstrap distribution of the mean of ``values`` under cluster resampling.

    ``values`` is shape (n,) or (n, k) (k columns resampled jointly, row-wise);
    ``clusters`` gives each row's cluster. Each replicate draws as many clusters
    as there are, with replacement; with ``two_stage`` each drawn cluster's rows
    are then drawn with replacement (as many as it has). The statistic is the
    mean over all drawn rows. Returns shape (n_boot,) or (n_boot, k).
    Vectorised: clusters are padded into a (C, S, k) array and indexed.
    """
    v = np.asarray(values, dtype=float)
    one_d = v.ndim == 1
    v = v[:, None] if one_d else v
    codes, uniq = pd.factorize(np.asarray(clusters), sort=False)
    if len(codes) != v.shape[0] or v.shape[0] == 0:
        raise ValueError(f"values ({v.shape[0]} rows) and clusters ({len(codes)}) must be non-empty and equal in length")
    n_c, k = len(uniq), v.shape[1]
    sizes = np.bincount(codes, minlength=n_c)
    width = int(sizes.max())
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = np.arange(len(codes)) - starts[codes[order]]
    padded = np.zeros((n_c, width, k))
    padded[codes[order], pos] = v[order]
    slot = np.arange(width)
    out = np.empty((n_boot, k))
    chunk = max(1, 4_000_000 // (n_c * width * k))
    for b0 in range(0, n_boot, chunk):
        nb = min(chunk, n_boot - b0)
        drawn = rng.integers(0, n_c, size=(nb, n_c))
        sz = sizes[drawn]
        if two_stage:
            rows = (rng.random((nb, n_c, width)) * sz[..., None]).astype(np.intp)
        else:
            rows = np.broadcast_to(slot, (nb, n_c, width))
        valid = slot < sz[..., None]
        picked = padded[drawn[..., None], rows] * valid[..., None]
        out[b0:b0 + nb] = picked.sum(axis=(1, 2)) / sz.sum(axis=1)[:, None]
    return out[:, 0] if one_d else out


def cluster_bootstrap_ci(
    values: Sequence[float],
    clusters: Sequence[Any],
    *,
    rng: np.random.Generator,
    n_boot: int = 2000,
    alpha: float = 0.05,
    two_stage: bool = True,
) -> tuple[float, float]:
    """Percentile (1 - alpha) interval for the mean from :func:`cluster_bootstrap_means`."""
    boot = cluster_bootstrap_means(np.asarray(values, float), clusters, n_boot=n_boot, rng=rng, two_stage=two_stage)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def _wilcoxon_p(cluster_means: np.ndarray) -> float:
    nz = cluster_means[cluster_means != 0]
    if cluster_means.size == 0:
        return math.nan
    if nz.size == 0:
        return 1.0
    return float(sps.wilcoxon(nz, alternative="two-sided").pvalue)

