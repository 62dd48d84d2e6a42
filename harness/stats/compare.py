"""Paired comparison of a factor's levels against a baseline: which columns two images must share
to form a pair, the per-level paired differences with their cluster bootstrap interval, Wilcoxon
p-value (Holm-adjusted across levels) and win rate, and, with three or more levels, a ranking of the
level means over blocks that have every level (design notes in the :mod:`harness.stats` package doc).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..columns import level_label
from ..core import NEGATIVE_PREFIX
from .intervals import (
    MIN_CLUSTERS_FOR_CI,
    MIN_CLUSTERS_FOR_TEST,
    _wilcoxon_p,
    cluster_bootstrap_means,
    holm,
    t_interval,
)
from .results import Comparison, LevelResult, RankResult
from .table import (
    DESIGN_COLUMNS,
    PARAM_COLUMNS,
    REPLICATE_COLUMNS,
    SEED_LINKS,
    SETTING_COLUMNS,
    STAGE_ONLY,
    _plain,
    _resolve_factor,
    _resolve_metric,
    _sorted_levels,
    healthy_mask,
    inapplicable_mask,
    in_key_order,
    matching_levels,
    metric_bounds,
    unmatched_level_hint,
)


def default_pair_on(df: pd.DataFrame, factor: str) -> list[str]:
    """The columns two images must share to form a pair when comparing `factor`.

    Always: the other factors (``f.*``) but those nested in `factor` or holding it (the table's
    ``attrs["nesting"]``: an outer factor's value is its option's text, which holds the inner choice),
    checkpoint, seed, draw and stage, and for stage images with seeds of their own (``[[stages]] seeds``) their
    parent's seed (``parent_seed``): level A's image from A's seed-1 parent pairs with level B's from B's
    seed-1 parent; and where two stages in a chain have seeds of their own, the seed the chain started from
    (``root_seed``). A parameter column
    (:data:`PARAM_COLUMNS`) joins only where it takes several values among images with the
    same factor level and design, i.e. where it is an axis of its own (mode, strength, init image).
    A parameter that follows the factor or the prompt (the negative prompt of a negative factor,
    a checkpoint's own size, a strength drawn per seed by ``[randomize]`` when comparing strengths) is left
    out: requiring it to match would leave no pairs.
    """
    df = stage_design_view(df)
    related = {c for pair in df.attrs.get("nesting", []) if factor in pair for c in pair}
    cols = [c for c in df.columns if str(c).startswith("f.") and c != factor and c not in related]
    cols += [c for c in DESIGN_COLUMNS
             if c in df.columns and c != factor and (c not in SEED_LINKS or _own_seeds(df, c))]
    for c in PARAM_COLUMNS:
        if c in df.columns and c != factor and _varies_within(df, [*cols, factor], c):
            cols.append(c)
    return cols


def stage_design_view(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with each later stage's image given the input init image its chain of parents started from
    (none for a txt2img root) in place of its parent's file: that file is one per parent, never the same at
    two factor levels, so pairing on it would pair no stage image, and a stage image belongs to its root's
    cluster. How the parent was made (txt2img or img2img, its strength) is `parent_condition`."""
    if "parent_key" not in df.columns or "init_image" not in df.columns or not df["parent_key"].notna().any():
        return df
    parent_of = dict(zip(df["key"], df["parent_key"]))
    init_of = dict(zip(df["key"], df["init_image"]))

    def root_init(key):
        seen = set()
        while isinstance(parent_of.get(key), str) and key not in seen:
            seen.add(key)
            key = parent_of[key]
        return init_of.get(key)  # None where the root is txt2img, or not among these images

    staged = df["parent_key"].notna()
    out = df.copy()
    out["init_image"] = out["init_image"].astype(object)
    out.loc[staged, "init_image"] = [root_init(k) for k in df.loc[staged, "key"]]
    return out


def _own_seeds(df: pd.DataFrame, column: str = "parent_seed") -> bool:
    """Whether seed column `column` tells some stage image apart from the one it may repeat (`SEED_LINKS`):
    a parent's seed other than the image's (a stage with seeds of its own), a chain's first seed other than
    the parent's (two stages in a chain with their own); else it repeats that column."""
    other = SEED_LINKS[column]
    if other not in df.columns:
        return False
    staged = df[column].notna()
    return bool((df.loc[staged, column] != df.loc[staged, other]).any())


def cluster_columns(df: pd.DataFrame, pair_on: list[str]) -> list[str]:
    """The columns of `pair_on` that tell clusters apart: the prompt condition (other factors, negative
    prompt, init image), not the replicates (seed, draw) nor the generation settings (checkpoint, stage,
    mode, strength, steps...). Images of one prompt and seed at two strengths or on two checkpoints share
    their prompt's effect and their noise, so counting them as two clusters would count one piece of
    evidence twice. A factor that only a later stage's prompt has is left out too, so a stage image falls
    in its parent's cluster (the table's `STAGE_ONLY` attrs name them when it is a part of a run, such as one
    stage's images)."""
    stage_only = df.attrs.get(STAGE_ONLY)
    if stage_only is None:
        stage_only = stage_only_factors(df)
    return [c for c in pair_on if c not in REPLICATE_COLUMNS and c not in SETTING_COLUMNS and c not in stage_only]


def stage_only_factors(df: pd.DataFrame) -> list[str]:
    """The factor columns some stage's images all lack, in a table of two or more stages: a factor that only
    a later stage's prompt has."""
    stages = df["stage"].dropna().unique() if "stage" in df.columns else []
    if len(stages) < 2:
        return []
    return [c for c in df.columns if str(c).startswith("f.")
            and any(df.loc[df["stage"] == s, c].isna().all() for s in stages)]


def _varies_within(df: pd.DataFrame, by: list[str], column: str) -> bool:
    """Whether `column` takes more than one value (missing counts as a value) in some group of `by`."""
    group = _ids(df, by)
    value = pd.factorize(df[column], use_na_sentinel=False)[0]
    return len(np.unique(np.stack([group, value], axis=1), axis=0)) > len(np.unique(group))


def _is_treatment(factor: str, column: str) -> bool:
    """Whether parameter `column` differs within pairs because it is what `factor` changes: the negative
    prompt's text, when comparing a negative-prompt factor."""
    return column == "negative_prompt" and factor.startswith(f"f.{NEGATIVE_PREFIX}")


def _why_it_differs(df: pd.DataFrame, factor: str, column: str) -> str:
    if not _varies_within(df, [factor], column):
        return f"set with {factor}"
    if "draw" in df.columns and df["draw"].notna().any():
        return "it varies from image to image, as [randomize] draws do"
    return "it varies from image to image"


def _named_columns(df: pd.DataFrame, names) -> list[str]:
    """Table columns as `--pair-on` and `--cluster-on` name them: a column as it is (`seed`, `f.artist`), or a
    factor without its `f.` (`artist`), as `--factor` and `--where` take it. A name that is neither stays, for
    the caller's error."""
    return [c if c in df.columns or f"f.{c}" not in df.columns else f"f.{c}" for c in names]


def _default_baseline(df: pd.DataFrame, factor: str, metric: str, levels: list) -> tuple[Any, Any]:
    """The default baseline and the level it passed over: the empty level where there is one, else the first
    in table order, unless no healthy image there has a score (an oracle that cannot judge that artist):
    then every comparison with it would be empty, and the first level that has one is the baseline."""
    first = "" if "" in levels else levels[0]
    value = pd.to_numeric(df[metric], errors="coerce").to_numpy(float)
    has = pd.Series(healthy_mask(df, metric) & ~np.isnan(value), index=df.index).groupby(df[factor]).any()
    if has.get(first, False) or not has.any():
        return first, None
    return next(lv for lv in levels if has.get(lv, False)), first


def _stage_notes(df: pd.DataFrame, factor: str, pair_on: list[str], unpaired: np.ndarray) -> list[str]:
    """A note per later stage some of whose scored images found no pair, saying why."""
    if "parent_key" not in df.columns or "stage" not in df.columns:
        return []
    staged = df["parent_key"].notna().to_numpy()
    notes = []
    for stage in pd.unique(df.loc[staged & unpaired, "stage"]):
        in_stage = staged & (df["stage"] == stage).to_numpy()
        notes.append(f"stage {stage}: {int((in_stage & unpaired).sum())} of its {int(in_stage.sum())} images have "
                     f"no pair at another level of {factor}: {_why_unpaired(df[in_stage], factor, pair_on)}")
    return notes


def _why_unpaired(rows: pd.DataFrame, factor: str, pair_on: list[str]) -> str:
    """Why images of one later stage (`rows`) found no pair."""
    own = _sorted_levels(rows[factor])
    if len(own) == 1:  # a stage that lists one strength of its own, compared with the first stage's strengths
        return (f"they all have {factor} {level_label(own[0])}" + (
            ", and pairs share their stage (pair_on), so no image at another level is in theirs"
            if "stage" in pair_on else ", and no image at another level shares their pair_on values"))
    reasons = {"parent_seed": ("images refined from parents of the same seed", "refine parents of different seeds"),
               "root_seed": ("images whose chains of stages started from the same seed (root_seed)",
                             "chains started from different seeds"),
               "seed": ("images of the same seed, which this stage takes from each parent",
                        "refine parents of different seeds")}
    inherited = "parent_seed" in rows.columns and (rows["seed"] == rows["parent_seed"]).all()
    for column, (needs, levels) in reasons.items():
        if column not in pair_on or column not in rows.columns or (column == "seed" and not inherited):
            continue
        seeds = {level_label(lv): sorted(int(s) for s in rows.loc[rows[factor] == lv, column].dropna().unique())
                 for lv in _sorted_levels(rows[factor])}
        if len({tuple(v) for v in seeds.values()}) > 1:
            listing = "; ".join(f"{lv}: {', '.join(map(str, s))}" for lv, s in seeds.items())
            return (f"a pair needs {needs}, and the levels {levels} ({listing}), as when top_k keeps each "
                    "variant's best images")
    return "the image with the same pair_on values at the baseline is missing, unhealthy or unscored"


def _all_nan(df: pd.DataFrame, factor: str, levels: list, nan: np.ndarray, not_applicable: np.ndarray) -> str:
    """How many healthy images of `levels` were scored NaN, with the likeliest cause: the metric does not
    apply to them (no init or parent image), or it reads its question from the prompt and has nothing to
    ask where an optional clause is left out."""
    at = [(df[factor] == lv).to_numpy() for lv in levels]
    counts = [(level_label(lv), int(nan[m].sum())) for lv, m in zip(levels, at)]
    counts = [(lv, n) for lv, n in counts if n]
    if not counts:
        return ""
    where = ", ".join(f"{n} at {lv}" for lv, n in counts)
    if all(not (nan[m] & ~not_applicable[m]).any() for m in at):
        return (f" (all NaN: {where}; the metric does not apply to them: it compares each image with its init "
                "image (img2img) or its parent (a stage's image), and they have none)")
    return (f" (all NaN: {where}; a metric that reads what to look for from the prompt, such as the toy "
            "oracles, gives NaN where the prompt does not name it: a fixed question, `want=` or `text=`, or a CLIP "
            "score against the prompt scores every image)")


def _never_shared(df: pd.DataFrame, factor: str, pair_on: list[str], a: Any, b: Any) -> list[str]:
    """The pair_on columns whose values at level `a` never meet those at level `b`: each one alone
    keeps every image of `a` from pairing with one of `b` (strength, when comparing txt2img with img2img)."""
    at_a, at_b = df[df[factor] == a], df[df[factor] == b]
    return [c for c in pair_on if not set(at_a[c].map(str)) & set(at_b[c].map(str))]


def _sets(df: pd.DataFrame, column: str, factor: str) -> bool:
    """Whether design column `column` (checkpoint, stage) sets `factor`: each of its values comes with one level
    (`[checkpoint.ft] guidance = 5.0`: every guidance-5 image is ft's), so the factor's levels are its values."""
    return (column in ("checkpoint", "stage") and df[column].nunique(dropna=True) > 1
            and not _varies_within(df, [column], factor))


def _apart_advice(df: pd.DataFrame, factor: str, apart: list[str]) -> str:
    """What to do about pair_on columns whose values never meet at two levels: a checkpoint (or stage) that
    sets the factor is what the comparison would measure; another column can be left out of --pair-on."""
    setters = [c for c in apart if _sets(df, c, factor)]
    if not setters:
        return "(pass --pair-on without it to pair across it)"
    c = setters[0]
    return (f"({factor} is set by {c}, as a per-{c} override does, so comparing it means comparing {c}s: "
            f"--factor {c}; leaving {c} out of --pair-on would measure the {c}s' difference under {factor}'s name)")


SEED_SPREAD = 1.5  # a seed-unit interval this many times wider than the cluster one is worth a note


def _shared_seed_note(d: np.ndarray, clusters: np.ndarray, seeds: np.ndarray, width: float,
                      alpha: float, span: float | None = None) -> list[str]:
    """A note when the difference moves with the seed alike across prompts. Every prompt is made at every seed,
    so a seed whose noise suits one arm suits it in every cluster; the cluster bootstrap resamples seeds within
    each cluster as if they were the cluster's own, and such shared luck then looks like a consistent effect.
    Taking the seeds as the units (a t interval over per-seed mean differences) says how far that goes; the
    note gives it where it is over SEED_SPREAD times wider than the interval above (and [] otherwise), cut
    to +-`span`, the width of the metric's range, which no difference can leave."""
    codes = np.unique(seeds, return_inverse=True)[1]
    n_seeds = int(codes.max()) + 1
    shared = np.bincount(np.unique(np.stack([codes, clusters]), axis=1)[0], minlength=n_seeds) > 1
    if n_seeds < 3 or not shared.any():
        return []
    means = np.bincount(codes, weights=d) / np.bincount(codes)
    lo, hi = t_interval(means, 1 - alpha)
    if span is not None:
        lo, hi = max(lo, -span), min(hi, span)
    if not hi - lo > SEED_SPREAD * width:
        return []
    p = float(sps.ttest_1samp(means, 0.0).pvalue)
    return [f"the difference moves with the seed alike across prompts (per-seed means {_spread(means)}): "
            f"with the {n_seeds} seeds as the units the {100 * (1 - alpha):g}% interval is [{lo:+.4g}, {hi:+.4g}] "
            f"and p {p:.3g}; the interval and p above treat each prompt's seeds as its own, so run more seeds "
            "before trusting them"]


def _spread(values: np.ndarray) -> str:
    return f"{values.min():+.4g} to {values.max():+.4g}"


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
    cluster_on: list[str] | None = None,
) -> Comparison:
    """Compare every level of ``factor`` with ``baseline`` on paired images (see :mod:`harness.stats`).

    cluster_on: the columns whose values make the independent units (default :func:`cluster_columns`
    of `pair_on`: the prompt conditions); an ablation of one prompt passes its seed.

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
    df = stage_design_view(in_key_order(df))
    no_level = df[factor].isna()
    if no_level.all():
        raise ValueError(f"factor column {factor!r} has no values; nothing to compare")
    df = df[~no_level]  # images the factor does not apply to (txt2img rows when comparing strength)
    levels = _sorted_levels(df[factor])
    shown = ", ".join(repr(level_label(lv) if isinstance(lv, str) else _plain(lv)) for lv in levels)  # as tables show
    if len(levels) < 2:
        raise ValueError(f"factor {factor!r} has only {len(levels)} level ({shown}) in these images; a comparison "
                         "needs two or more")
    passed_over = None
    if baseline is None:
        baseline, passed_over = _default_baseline(df, factor, metric, levels)
    else:
        match = matching_levels(levels, baseline)
        if not match:
            raise ValueError(f"baseline {baseline!r} is not a level of {factor!r}; levels: {shown}"
                             + unmatched_level_hint(levels, baseline))
        baseline = match[0]
    if pair_on is None:
        pair_on = default_pair_on(df, factor)
    else:
        pair_on = _named_columns(df, pair_on)
        if factor in pair_on:
            raise ValueError(f"pair_on {pair_on} holds the compared factor {factor!r}: pairs share everything "
                             "but the factor, so leave it out")
        bad = [c for c in pair_on if c not in df.columns]
        if bad:
            raise ValueError(f"pair_on {pair_on}: {', '.join(map(repr, bad))} not a column of the table nor a "
                             f"factor; columns: {', '.join(map(str, df.columns))}")
    given_clusters = cluster_on
    cluster_on = cluster_columns(df, pair_on) if cluster_on is None else _named_columns(df, cluster_on)
    confounded = [c for c in ("checkpoint", *PARAM_COLUMNS) if c in df.columns and c != factor and c not in pair_on
                  and _varies_within(df, pair_on, c) and not _is_treatment(factor, c)]

    block = _ids(df, pair_on)
    level_idx = pd.Index(levels).get_indexer(df[factor])
    n_lv, base_i = len(levels), levels.index(baseline)
    dup = np.bincount(block * n_lv + level_idx)[block * n_lv + level_idx] > 1
    if dup.any():
        cell = (block * n_lv + level_idx)[dup][0]  # two rows of one block at one level
        rows = df.loc[(block * n_lv + level_idx) == cell]
        example = [{k: _plain(v) for k, v in row.items()} for row in rows[[factor, *pair_on]].head(2).to_dict("records")]
        design = [c for c in df.columns if str(c).startswith("f.") or c in (*DESIGN_COLUMNS, *PARAM_COLUMNS)]
        apart = [c for c in design if c != factor and c not in pair_on and rows[c].map(str).nunique() > 1]
        which = (f" ({' and '.join(map(repr, apart))} differ{'s' if len(apart) == 1 else ''} there)" if apart
                 else "")
        raise ValueError(f"{int(dup.sum())} rows each share their {factor!r} level and pair_on values with another "
                         f"row, so pairs are ambiguous; pass pair_on with the column that tells them apart{which}. "
                         f"pair_on={pair_on}, e.g. {example}")

    healthy = healthy_mask(df, metric)
    value = pd.to_numeric(df[metric], errors="coerce").to_numpy(float)
    scored = healthy & ~np.isnan(value)
    n_blocks = int(block.max()) + 1 if len(block) else 0
    wide = np.full((n_blocks, n_lv), np.nan)  # block x level, NaN where no healthy scored image
    wide[block[scored], level_idx[scored]] = value[scored]
    cluster_of = np.zeros(n_blocks, dtype=np.intp)
    cluster_of[block] = _ids(df, cluster_on)
    seed_of = None
    if "seed" in pair_on:  # seeds are crossed with prompts: every prompt is made at every seed
        seed_of = np.zeros(n_blocks, dtype=np.intp)
        seed_of[block] = _ids(df, ["seed"])
    bounds = metric_bounds(metric)
    span = bounds[1] - bounds[0] if bounds else None  # no difference of two scores is wider

    present = ~np.isnan(wide)
    has_base = present[:, base_i]
    paired_block = has_base & (present.sum(axis=1) > 1)
    unscored = healthy & np.isnan(value)
    not_applicable = unscored & inapplicable_mask(df, metric)  # txt2img images under an init-image metric
    n_excluded = {"unhealthy": int((~healthy).sum()), "unscored": int((unscored & ~not_applicable).sum()),
                  "unpaired": int(present[~paired_block].sum()), "no_level": int(no_level.sum())}
    if not_applicable.any():
        n_excluded["not_applicable"] = int(not_applicable.sum())

    sign = 1.0 if higher_is_better else -1.0
    partial, notes = [], []
    if passed_over is not None:
        notes.append(f"baseline {level_label(baseline)}: the first level with a healthy scored image "
                     f"({level_label(passed_over)} has none); --baseline picks another")
    for c in confounded:
        notes.append(f"{c} differs between the images of a pair ({_why_it_differs(df, factor, c)}), so each "
                     "difference includes that change too")
    notes += _stage_notes(df, factor, pair_on, scored & ~paired_block[block])
    for li, lv in enumerate(levels):
        if li == base_i:
            continue
        ok = has_base & present[:, li]
        d = wide[ok, li] - wide[ok, base_i]
        cl_codes = np.unique(cluster_of[ok], return_inverse=True)[1]
        n_pairs, n_clu = int(ok.sum()), int(cl_codes.max()) + 1 if ok.any() else 0
        note = []
        if n_pairs == 0:
            apart = _never_shared(df, factor, pair_on, lv, baseline)
            unscored = [x for x, i in ((lv, li), (baseline, base_i)) if not present[:, i].any()]
            note.append("no complete pairs" + (
                f": {', '.join(apart)} never take(s) the same value at {level_label(lv)} and {level_label(baseline)} "
                + _apart_advice(df, factor, apart) if apart else
                f": no healthy image at {' or '.join(map(level_label, unscored))} has a score"
                + _all_nan(df, factor, unscored, healthy & np.isnan(value), not_applicable) if unscored else
                f": no combination of {', '.join(pair_on)} has scored images at both {level_label(lv)} and "
                f"{level_label(baseline)} (a shard or an unfinished run may not have made the other yet)"))
        elif n_clu < MIN_CLUSTERS_FOR_TEST:
            note.append(f"only {n_clu} cluster(s): the Wilcoxon test has little power "
                        f"(smallest attainable p = {min(1.0, 2.0 ** (1 - n_clu)):.3g})")
        if n_pairs >= 2:
            boot = _seed_bootstrap_means(d, cl_codes, None if seed_of is None else seed_of[ok], n_boot=n_boot, rng=rng)
            lo, hi = (float(q) for q in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
            if n_clu == 1:
                note.append("one cluster: the interval reflects seed-to-seed variation only")
            elif n_clu < MIN_CLUSTERS_FOR_CI:
                note.append(f"{n_clu} clusters: the 95% interval is likely too narrow (below ~15 clusters)")
        else:
            lo = hi = math.nan
        if seed_of is not None and n_pairs >= 2 and lo == lo:
            note += _shared_seed_note(d, cl_codes, seed_of[ok], hi - lo, alpha, span)
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
        # A stream of its own (spawning draws nothing from `rng`): the ranking is one whatever the baseline.
        ranking = _rank(wide, cluster_of, seed_of, levels, n_boot=n_boot, rng=rng.spawn(1)[0], alpha=alpha,
                        sign=sign)
        if not ranking:
            notes.append("no block has every level scored, so no ranking")
        elif ranking[0].n_clusters < MIN_CLUSTERS_FOR_CI:
            notes.append(f"ranking: {ranking[0].n_clusters} cluster(s), so its rank and mean intervals are likely "
                         "too narrow (below ~15 clusters); a rank interval of one rank is no proof of the order")
    conf = f"{100 * (1 - alpha):g}%"
    tested = sum(not math.isnan(r.p_value) for r in rows)
    units = "prompt conditions" if given_clusters is None else "values of"
    method = (f"paired differences (level - baseline) over images sharing pair_on; clusters = {units} "
              f"({', '.join(cluster_on) or 'one'}); {conf} CI: two-stage cluster bootstrap (clusters with replacement, then seeds within "
              f"each drawn cluster with replacement), percentile, {n_boot} resamples; p: two-sided Wilcoxon "
              f"signed-rank test on per-cluster mean differences (zeros dropped), Holm-adjusted across {tested} "
              f"tested level(s); "
              f"win rate = (wins + ties/2) / pairs, tie if |diff| <= {tie_margin:g}")
    if ranking is not None:
        method += "; ranking: level means over blocks with every level, rank and mean intervals from the same bootstrap"
    return Comparison(rows=rows, ranking=ranking, factor=factor, metric=metric, baseline=baseline,
                      n_excluded=n_excluded, method=method, tie_margin=float(tie_margin), pair_on=pair_on,
                      higher_is_better=higher_is_better, alpha=alpha, notes=notes, n_boot=int(n_boot))


def _seed_bootstrap_means(x: np.ndarray, clusters: np.ndarray, seeds: np.ndarray | None, *, n_boot: int,
                          rng: np.random.Generator) -> np.ndarray:
    """`cluster_bootstrap_means` of the pairs (rows of `x`) with seeds, not pairs, drawn within each drawn
    cluster: the pairs of one prompt condition and seed (its strengths, modes, checkpoints) share that seed's
    noise, so a seed is drawn with all of them. Where each seed has one pair in its cluster, or no seeds are
    given, the seeds are the pairs and the draws are the pairs' own."""
    x = np.asarray(x, dtype=float)
    if seeds is None:
        return cluster_bootstrap_means(x, clusters, n_boot=n_boot, rng=rng)
    units, unit_of = np.unique(np.stack([clusters, seeds]), axis=1, return_inverse=True)
    if units.shape[1] == len(x):
        return cluster_bootstrap_means(x, clusters, n_boot=n_boot, rng=rng)
    unit_of = unit_of.reshape(-1)
    columns = x[:, None] if x.ndim == 1 else x
    sums = np.stack([np.bincount(unit_of, weights=col) for col in columns.T], axis=1)
    drawn = cluster_bootstrap_means(np.column_stack([sums, np.bincount(unit_of)]), units[0], n_boot=n_boot,
                                    rng=rng)
    means = drawn[:, :-1] / drawn[:, -1:]  # over the drawn seeds' pairs: their sums over their counts
    return means[:, 0] if x.ndim == 1 else means


def _rank(wide: np.ndarray, cluster_of: np.ndarray, seed_of: np.ndarray | None, levels: list, *, n_boot: int,
          rng: np.random.Generator, alpha: float, sign: float) -> list[RankResult]:
    complete = ~np.isnan(wide).any(axis=1)
    if not complete.any():
        return []
    x = wide[complete]
    cl = cluster_of[complete]
    means = x.mean(axis=0)
    rank = sps.rankdata(-sign * means)
    boot = _seed_bootstrap_means(x, cl, None if seed_of is None else seed_of[complete], n_boot=n_boot, rng=rng)
    branks = sps.rankdata(-sign * boot, axis=1)
    mlo, mhi = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    rlo = np.quantile(branks, alpha / 2, axis=0, method="lower")
    rhi = np.quantile(branks, 1 - alpha / 2, axis=0, method="higher")
    n_clu = len(np.unique(cl))
    out = [RankResult(level=lv, rank=float(rank[i]), mean=float(means[i]), ci_low=float(mlo[i]),
                      ci_high=float(mhi[i]), rank_ci_low=float(rlo[i]), rank_ci_high=float(rhi[i]),
                      n_blocks=int(complete.sum()), n_clusters=n_clu) for i, lv in enumerate(levels)]
    return sorted(out, key=lambda r: r.rank)
