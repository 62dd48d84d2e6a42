"""Statistics for prompt studies: summaries, paired comparisons, rankings.

Input is the tidy per-image table (one row per image) with factor columns
``f.<factor>``, ``checkpoint``, ``seed``, generation parameters, metric columns
``m.<metric>`` (NaN = unscored) and a boolean ``healthy`` column.

The design behind :func:`paired_compare`:

* **Pairs.** Two images form a pair when they differ only in the compared
  factor: same seed, same other factor choices, same checkpoint and parameters
  (``pair_on``). The difference ``d = level - baseline`` removes the seed's and
  the prompt's own effect from the comparison.
* **Clusters.** Pairs that share every condition but the seed belong to one
  cluster (one prompt condition, seeds nested in it). Seeds of one prompt are
  not independent evidence, so uncertainty is computed over clusters.
* **Interval.** Two-stage cluster bootstrap of the mean pair difference:
  resample clusters with replacement, then resample the seeds within each drawn
  cluster with replacement; percentile interval. Two caveats: a percentile
  interval over few clusters (under ~15-20) is too narrow, and the second stage
  counts seed-to-seed noise twice, so when that noise dominates the cluster
  effect the interval is somewhat conservative (Davison & Hinkley 1997, 3.8).
* **Test.** Two-sided Wilcoxon signed-rank test on the per-cluster mean
  differences (zeros dropped). With n clusters the smallest attainable exact
  two-sided p is 2 / 2**n, so under 6 clusters it can never reach 0.05.
* **Multiplicity.** Holm's step-down adjustment across the non-baseline levels.

Nothing here touches torch; randomness comes in as a ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

# Columns that always tell conditions apart (when present), and parameter columns that do so only
# where they vary independently of the compared factor (see default_pair_on).
DESIGN_COLUMNS = ("checkpoint", "seed", "stage")
PARAM_COLUMNS = (
    "mode", "strength", "steps", "guidance", "width", "height",
    "negative_prompt", "scheduler", "init_image",
)
MIN_CLUSTERS_FOR_TEST = 6
MIN_CLUSTERS_FOR_CI = 15  # below this the percentile bootstrap interval covers less than its nominal 95 %


# ----------------------------------------------------------------- helpers


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (NaN ignored); NaNs when n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return (math.nan, math.nan)
    sem = x.std(ddof=1) / math.sqrt(x.size)
    half = sps.t.ppf(0.5 + confidence / 2, df=x.size - 1) * sem
    return (float(x.mean() - half), float(x.mean() + half))


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


def _sorted_levels(values) -> list:
    uniq = list(pd.unique(values))
    try:
        return sorted(uniq)
    except TypeError:
        return sorted(uniq, key=str)


def _resolve_metric(df: pd.DataFrame, metric: str) -> str:
    for name in (metric, f"m.{metric}"):
        if name in df.columns and name.startswith("m."):
            return name
    avail = [c for c in df.columns if str(c).startswith("m.")]
    raise ValueError(f"metric {metric!r} is not a column of the table; available metrics: {avail or 'none'} "
                     "(bare names like 'clip_score' map to 'm.clip_score')")


def _resolve_factor(df: pd.DataFrame, factor: str) -> str:
    choices = [c for c in df.columns if str(c).startswith("f.")]
    choices += [c for c in (*DESIGN_COLUMNS, *PARAM_COLUMNS) if c in df.columns and c != "seed"]
    for name in (factor, f"f.{factor}"):
        if name in choices:
            return name
    raise ValueError(f"factor {factor!r} is not a factor column of the table; available factors: {choices or 'none'} "
                     "(bare names like 'artist' map to 'f.artist')")


def _healthy_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows whose ``healthy`` value is exactly True; no column means all healthy."""
    if "healthy" not in df.columns:
        return np.ones(len(df), dtype=bool)
    if df["healthy"].dtype == bool:
        return df["healthy"].to_numpy()

    def is_true(v: Any) -> bool:
        return isinstance(v, (bool, np.bool_, int, float, np.number)) and v == 1

    return df["healthy"].map(is_true).to_numpy(bool)


# ---------------------------------------------------------------- summarize


def summarize(df: pd.DataFrame, by: list[str], metric: str, confidence: float = 0.95) -> pd.DataFrame:
    """Per-group n, mean, sd, sem and t-interval of ``metric`` over healthy, scored rows.

    ``n_unhealthy`` counts rows with ``healthy`` not True; ``n_unscored`` counts
    healthy rows whose metric is NaN. sd/sem need n >= 2, the interval n >= 2.
    """
    metric = _resolve_metric(df, metric)
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"summarize: 'by' columns {missing} are not in the table; columns: {list(df.columns)}")
    work = pd.DataFrame({"_v": pd.to_numeric(df[metric], errors="coerce").to_numpy(float),
                         "_h": _healthy_mask(df)}, index=df.index)
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
        lo, hi = t_interval(x, confidence)
        records.append({**dict(zip(by, key)), "n": n, "mean": float(x.mean()) if n else math.nan,
                        "sd": sd, "sem": sd / math.sqrt(n) if n >= 2 else math.nan,
                        "ci_low": lo, "ci_high": hi,
                        "n_unscored": int(healthy["_v"].isna().sum()), "n_unhealthy": int((~g["_h"]).sum())})
    return pd.DataFrame.from_records(records, columns=[*by, "n", "mean", "sd", "sem", "ci_low", "ci_high",
                                                      "n_unscored", "n_unhealthy"])


# ---------------------------------------------------------- paired compare


@dataclass(frozen=True)
class LevelResult:
    """One non-baseline level against the baseline; diff = level - baseline."""

    level: Any
    n_pairs: int
    n_clusters: int
    mean_level: float
    mean_baseline: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    wins: int
    ties: int
    losses: int
    win_rate: float
    note: str = ""


@dataclass(frozen=True)
class RankResult:
    """A level's mean over complete blocks, its rank (1 = best) and bootstrap intervals."""

    level: Any
    rank: float
    mean: float
    ci_low: float
    ci_high: float
    rank_ci_low: float
    rank_ci_high: float
    n_blocks: int
    n_clusters: int


@dataclass(frozen=True)
class Comparison:
    rows: list[LevelResult]
    ranking: list[RankResult] | None
    factor: str
    metric: str
    baseline: Any
    n_excluded: dict
    method: str
    tie_margin: float
    pair_on: list[str] = field(default_factory=list)
    higher_is_better: bool = True
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)
    n_boot: int = 2000

    def to_frame(self) -> pd.DataFrame:
        cols = [f.name for f in LevelResult.__dataclass_fields__.values()]
        return pd.DataFrame([asdict(r) for r in self.rows], columns=cols)

    def to_dict(self) -> dict:
        return _jsonable({
            "factor": self.factor, "metric": self.metric, "baseline": self.baseline,
            "pair_on": list(self.pair_on), "higher_is_better": self.higher_is_better,
            "alpha": self.alpha, "tie_margin": self.tie_margin, "n_boot": self.n_boot, "method": self.method,
            "n_excluded": dict(self.n_excluded), "notes": list(self.notes),
            "rows": [asdict(r) for r in self.rows],
            "ranking": None if self.ranking is None else [asdict(r) for r in self.ranking],
        })

    def _tables(self) -> list[tuple[list[str], list[list[str]]]]:
        conf = f"{100 * (1 - self.alpha):g}%"
        head = ["level", "pairs", "clusters", "mean", f"mean {_label(self.baseline)}", "diff", f"{conf} CI",
                "p", "p (Holm)", "win rate", "note"]
        body = [[_label(r.level), str(r.n_pairs), str(r.n_clusters), _num(r.mean_level), _num(r.mean_baseline),
                 _num(r.mean_diff, sign=True), _ci(r.ci_low, r.ci_high, sign=True), _p(r.p_value), _p(r.p_holm),
                 _num(r.win_rate, ".2f"), r.note] for r in self.rows]
        tables = [(head, body)]
        if self.ranking:
            rhead = ["rank", "level", "mean", f"{conf} CI", f"rank {conf} CI", "blocks"]
            rbody = [[_num(r.rank, "g"), _label(r.level), _num(r.mean), _ci(r.ci_low, r.ci_high),
                      f"{r.rank_ci_low:g}-{r.rank_ci_high:g}", str(r.n_blocks)] for r in self.ranking]
            tables.append((rhead, rbody))
        return tables

    def _footer(self) -> list[str]:
        ex = self.n_excluded
        no_level = f", {ex['no_level']} without a level of the factor" if ex.get("no_level") else ""
        lines = [f"Excluded rows: {ex.get('unhealthy', 0)} unhealthy, {ex.get('unscored', 0)} unscored, "
                 f"{ex.get('unpaired', 0)} unpaired{no_level}.", f"Method: {self.method}"]
        return lines + [f"Note: {n}" for n in self.notes]

    def _title(self) -> str:
        return (f"{self.metric} by {self.factor}, baseline {_label(self.baseline)} "
                f"({'higher' if self.higher_is_better else 'lower'} is better; pairs share {', '.join(self.pair_on)})")

    def to_markdown(self) -> str:
        out = [f"**{_md(self._title())}**", ""]
        for head, body in self._tables():
            out.append("| " + " | ".join(_md(h) for h in head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in body]
            out.append("")
        return "\n".join(out + self._footer()) + "\n"

    def to_text(self) -> str:
        out = [self._title(), ""]
        for head, body in self._tables():
            widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
            fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
            out += [fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in body), ""]
        return "\n".join(out + self._footer()) + "\n"


def _label(level: Any) -> str:
    return "(empty)" if level == "" else str(level)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(x: float, spec: str = ".4g", sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, ("+" if sign else "") + spec)


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def _ci(lo: float, hi: float, sign: bool = False) -> str:
    return "n/a" if math.isnan(lo) else f"[{_num(lo, sign=sign)}, {_num(hi, sign=sign)}]"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def default_pair_on(df: pd.DataFrame, factor: str) -> list[str]:
    """The columns two images must share to form a pair when comparing `factor`.

    Always: the other factors (``f.*``), checkpoint, seed and stage. A parameter column
    (:data:`PARAM_COLUMNS`) joins only where it takes several values among images with the
    same factor level and design, i.e. where it is an axis of its own (mode, strength, init image).
    A parameter that follows the factor or the prompt (the negative prompt of a negative factor,
    a checkpoint's own size, a guidance drawn per prompt by ``[randomize]``) is left out: requiring
    it to match would leave no pairs.
    """
    cols = [c for c in df.columns if str(c).startswith("f.") and c != factor]
    cols += [c for c in DESIGN_COLUMNS if c in df.columns and c != factor]
    for c in PARAM_COLUMNS:
        if c in df.columns and c != factor and _varies_within(df, [*cols, factor], c):
            cols.append(c)
    return cols


def _varies_within(df: pd.DataFrame, by: list[str], column: str) -> bool:
    """Whether `column` takes more than one value (missing counts as a value) in some group of `by`."""
    group = _ids(df, by)
    value = pd.factorize(df[column], use_na_sentinel=False)[0]
    return len(np.unique(np.stack([group, value], axis=1), axis=0)) > len(np.unique(group))


def _ids(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """Group id per row for the distinct combinations of ``cols`` (missing values form their own group)."""
    if not cols:
        return np.zeros(len(df), dtype=np.intp)
    codes = np.stack([pd.factorize(df[c], use_na_sentinel=False)[0] for c in cols], axis=1)
    return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)


def paired_compare(
    df: pd.DataFrame,
    *,
    factor: str,
    metric: str,
    baseline: Any = None,
    pair_on: list[str] | None = None,
    n_boot: int = 2000,
    tie_margin: float = 0.0,
    rng: np.random.Generator,
    alpha: float = 0.05,
    higher_is_better: bool = True,
) -> Comparison:
    """Compare every level of ``factor`` with ``baseline`` on paired images (see module doc).

    A win is ``level - baseline > tie_margin`` (or ``< -tie_margin`` when lower is
    better), a tie ``|d| <= tie_margin``; win rate = (wins + ties / 2) / n_pairs.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(0)), got {type(rng).__name__}")
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 1):
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not tie_margin >= 0:
        raise ValueError(f"tie_margin must be >= 0, got {tie_margin!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    factor = _resolve_factor(df, factor)
    metric = _resolve_metric(df, metric)
    no_level = df[factor].isna()
    if no_level.all():
        raise ValueError(f"factor column {factor!r} has no values; nothing to compare")
    df = df[~no_level]  # images the factor does not apply to (txt2img rows when comparing strength)
    levels = _sorted_levels(df[factor])
    if len(levels) < 2:
        raise ValueError(f"factor {factor!r} has only {len(levels)} level(s) {levels}; a comparison needs two or more")
    if baseline is None:
        baseline = "" if "" in levels else levels[0]
    else:
        match = [lv for lv in levels if lv == baseline] or [lv for lv in levels if str(lv) == str(baseline)]
        if not match:
            raise ValueError(f"baseline {baseline!r} is not a level of {factor!r}; levels: {levels}")
        baseline = match[0]
    if pair_on is None:
        pair_on = default_pair_on(df, factor)
    else:
        pair_on = list(pair_on)
        bad = [c for c in pair_on if c not in df.columns]
        if bad or factor in pair_on:
            raise ValueError(f"pair_on {pair_on} must name table columns other than the factor {factor!r}; "
                             f"unknown: {bad}; columns: {list(df.columns)}")
    cluster_on = [c for c in pair_on if c != "seed"]
    confounded = [c for c in PARAM_COLUMNS if c in df.columns and c != factor and c not in pair_on
                  and _varies_within(df, pair_on, c)]

    block = _ids(df, pair_on)
    level_idx = pd.Index(levels).get_indexer(df[factor])
    n_lv, base_i = len(levels), levels.index(baseline)
    dup = np.bincount(block * n_lv + level_idx)[block * n_lv + level_idx] > 1
    if dup.any():
        example = df.loc[dup, [factor, *pair_on]].head(2).to_dict("records")
        raise ValueError(f"{int(dup.sum())} rows share the same {factor!r} level and pair_on values, so pairs are "
                         f"ambiguous; pass pair_on with the column that tells them apart. pair_on={pair_on}, "
                         f"e.g. {example}")

    healthy = _healthy_mask(df)
    value = pd.to_numeric(df[metric], errors="coerce").to_numpy(float)
    scored = healthy & ~np.isnan(value)
    n_blocks = int(block.max()) + 1 if len(block) else 0
    wide = np.full((n_blocks, n_lv), np.nan)  # block x level, NaN where no healthy scored image
    wide[block[scored], level_idx[scored]] = value[scored]
    cluster_of = np.zeros(n_blocks, dtype=np.intp)
    cluster_of[block] = _ids(df, cluster_on)

    present = ~np.isnan(wide)
    has_base = present[:, base_i]
    paired_block = has_base & (present.sum(axis=1) > 1)
    n_excluded = {"unhealthy": int((~healthy).sum()), "unscored": int((healthy & np.isnan(value)).sum()),
                  "unpaired": int(present[~paired_block].sum()), "no_level": int(no_level.sum())}

    sign = 1.0 if higher_is_better else -1.0
    partial, notes = [], []
    if confounded:
        notes.append(f"{', '.join(confounded)} differ(s) between the images of a pair (set with {factor}), so "
                     "each difference includes that change too")
    for li, lv in enumerate(levels):
        if li == base_i:
            continue
        ok = has_base & present[:, li]
        d = wide[ok, li] - wide[ok, base_i]
        cl_codes = np.unique(cluster_of[ok], return_inverse=True)[1]
        n_pairs, n_clu = int(ok.sum()), int(cl_codes.max()) + 1 if ok.any() else 0
        note = []
        if n_pairs == 0:
            note.append("no complete pairs")
        elif n_clu < MIN_CLUSTERS_FOR_TEST:
            note.append(f"only {n_clu} cluster(s): the Wilcoxon test has little power "
                        f"(smallest attainable p = {min(1.0, 2.0 ** (1 - n_clu)):.3g})")
        if n_pairs >= 2:
            lo, hi = cluster_bootstrap_ci(d, cl_codes, rng=rng, n_boot=n_boot, alpha=alpha)
            if n_clu == 1:
                note.append("one cluster: the interval reflects seed-to-seed variation only")
            elif n_clu < MIN_CLUSTERS_FOR_CI:
                note.append(f"{n_clu} clusters: the 95% interval is likely too narrow (below ~15 clusters)")
        else:
            lo = hi = math.nan
        cmeans = np.bincount(cl_codes, weights=d) / np.bincount(cl_codes) if n_pairs else np.array([])
        wins = int((sign * d > tie_margin).sum())
        ties = int((np.abs(d) <= tie_margin).sum())
        nan_or = (lambda x: float(x.mean()) if n_pairs else math.nan)  # noqa: E731
        partial.append(dict(
            level=lv, n_pairs=n_pairs, n_clusters=n_clu, mean_level=nan_or(wide[ok, li]),
            mean_baseline=nan_or(wide[ok, base_i]), mean_diff=nan_or(d), ci_low=lo, ci_high=hi,
            p_value=_wilcoxon_p(cmeans), wins=wins, ties=ties, losses=n_pairs - wins - ties,
            win_rate=(wins + 0.5 * ties) / n_pairs if n_pairs else math.nan, note="; ".join(note)))
    adjusted = holm([r["p_value"] for r in partial])
    rows = [LevelResult(p_holm=a, **r) for r, a in zip(partial, adjusted)]

    ranking = None
    if len(levels) > 2:
        ranking = _rank(wide, cluster_of, levels, n_boot=n_boot, rng=rng, alpha=alpha, sign=sign)
        if not ranking:
            notes.append("no block has every level scored, so no ranking")
    conf = f"{100 * (1 - alpha):g}%"
    method = (f"paired differences (level - baseline) over images sharing pair_on; clusters = pair_on without seed; "
              f"{conf} CI: two-stage cluster bootstrap (clusters with replacement, then seeds within each drawn "
              f"cluster with replacement), percentile, {n_boot} resamples; p: two-sided Wilcoxon signed-rank test on "
              f"per-cluster mean differences (zeros dropped), Holm-adjusted across {len(rows)} level(s); "
              f"win rate = (wins + ties/2) / pairs, tie if |diff| <= {tie_margin:g}")
    if ranking is not None:
        method += "; ranking: level means over blocks with every level, rank and mean intervals from the same bootstrap"
    return Comparison(rows=rows, ranking=ranking, factor=factor, metric=metric, baseline=baseline,
                      n_excluded=n_excluded, method=method, tie_margin=float(tie_margin), pair_on=pair_on,
                      higher_is_better=higher_is_better, alpha=alpha, notes=notes, n_boot=int(n_boot))


def _rank(wide: np.ndarray, cluster_of: np.ndarray, levels: list, *, n_boot: int,
          rng: np.random.Generator, alpha: float, sign: float) -> list[RankResult]:
    complete = ~np.isnan(wide).any(axis=1)
    if not complete.any():
        return []
    x = wide[complete]
    cl = cluster_of[complete]
    means = x.mean(axis=0)
    rank = sps.rankdata(-sign * means)
    boot = cluster_bootstrap_means(x, cl, n_boot=n_boot, rng=rng)
    branks = sps.rankdata(-sign * boot, axis=1)
    mlo, mhi = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    rlo = np.quantile(branks, alpha / 2, axis=0, method="lower")
    rhi = np.quantile(branks, 1 - alpha / 2, axis=0, method="higher")
    n_clu = len(np.unique(cl))
    out = [RankResult(level=lv, rank=float(rank[i]), mean=float(means[i]), ci_low=float(mlo[i]),
                      ci_high=float(mhi[i]), rank_ci_low=float(rlo[i]), rank_ci_high=float(rhi[i]),
                      n_blocks=int(complete.sum()), n_clusters=n_clu) for i, lv in enumerate(levels)]
    return sorted(out, key=lambda r: r.rank)
