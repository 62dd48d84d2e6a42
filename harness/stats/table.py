"""Reading the tidy per-image table: which columns name the design (checkpoint, seed, stage) and the
generation parameters, how a bare metric or factor name maps to its ``m.``/``f.`` column (failing
with the available choices), which rows count as healthy, and the order in which a factor's levels
are listed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..core import NEGATIVE_PREFIX

# Columns that always tell conditions apart (when present), and parameter columns that do so only
# where they vary independently of the compared factor (see default_pair_on). `draw` numbers the
# [randomize] draws of one prompt and seed; like the seed, it is a replicate, not a factor. `parent_seed`
# is a stage image's parent's seed: a stage with seeds of its own gives one variant's images one seed,
# and the parent's seed is what tells them apart (and pairs them across levels); `root_seed`, the seed of
# the first-stage image a chain of stages starts from, does so where two stages in a chain have their own.
DESIGN_COLUMNS = ("checkpoint", "seed", "parent_seed", "root_seed", "draw", "stage")
REPLICATE_COLUMNS = ("seed", "parent_seed", "root_seed", "draw")
SEED_LINKS = {"parent_seed": "seed", "root_seed": "parent_seed"}  # a seed column that may repeat another
PARAM_COLUMNS = (
    "mode", "strength", "steps", "guidance", "width", "height",
    "negative_prompt", "scheduler", "parent_condition", "init_image",
)
# df.attrs key: the parameter columns the run's [randomize] table draws (not factors: tables/drawn.*).
DRAWN = "drawn"
# df.attrs key: the factor columns only later stages' prompts have, known from the whole run (a table
# filtered to one stage cannot tell them; see compare.cluster_columns).
STAGE_ONLY = "stage_only"
# Generation settings: images of one prompt and seed that differ only in these share that prompt's effect
# and that seed's noise, so they are one cluster of evidence (see compare.cluster_columns).
SETTING_COLUMNS = ("checkpoint", "stage", "mode", "strength", "steps", "guidance", "width", "height", "scheduler",
                   "parent_condition")


def in_key_order(df: pd.DataFrame) -> pd.DataFrame:
    """The table's rows sorted by image key (when it has one): the statistics of a run must not depend on
    the order its rows were stored in (a run merged from shards keeps shard order, and a seeded bootstrap
    resamples clusters by their position; floating-point sums depend on order too)."""
    if "key" not in df.columns or df["key"].is_monotonic_increasing:
        return df
    return df.sort_values("key", kind="stable")


def _sorted_levels(values) -> list:
    """Distinct levels in the order tables and the contact sheet show them (numbers, then text in natural
    order: `5` before `10`); the first is the default baseline when there is no empty level."""
    from ..columns import sort_key

    return sorted(pd.unique(values), key=sort_key)


def _plain(value):
    """A numpy scalar as the Python number it holds (so messages show 0.5, not np.float64(0.5))."""
    return value.item() if isinstance(value, np.generic) else value


def matching_levels(levels: list, given) -> list:
    """The levels `given` (a command line's text, say) names, by the first rule that names any: the label
    the tables show (`(empty)` for the empty level, `"(empty)"` in quotes for a level whose own text is
    `(empty)`), the level's own text where that is not one of the two marks, or for a number level the same
    number however written (`0.50`, `.5` and `0.5` are strength 0.5), or the label with its line breaks
    written `\\n`, as the text tables show it."""
    from ..columns import EMPTY, MISSING, level_label, one_line

    by_label = [lv for lv in levels if isinstance(given, str) and level_label(lv) == given]
    by_text = [lv for lv in levels if str(lv) == str(given) and given not in (EMPTY, MISSING)]
    by_number = [lv for lv in levels if _same_number(lv, given)]
    return by_label or by_text or by_number or [lv for lv in levels if one_line(level_label(lv)) == given]


def _same_number(level, given) -> bool:
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, float, np.number)):
        return False
    try:
        return float(given) == float(level)
    except (TypeError, ValueError):
        return False


def unmatched_level_hint(levels: list, given) -> str:
    """What to write instead of a `given` that names no level, where it is one of the two marks."""
    from ..columns import EMPTY, MISSING, level_label

    meaning = {EMPTY: f"; {EMPTY} names the empty level, which this factor does not have",
               MISSING: f"; {MISSING} marks the images the factor does not apply to, which a comparison leaves out"}
    if given not in meaning:
        return ""
    literal = f"; the level whose text is {given} is named as the tables show it, in quotes: {level_label(given)}"
    return meaning[given] + (literal if given in levels else "")


def _resolve_metric(df: pd.DataFrame, metric: str) -> str:
    for name in (metric, f"m.{metric}"):
        if name in df.columns and name.startswith("m."):
            return name
    avail = [c for c in df.columns if str(c).startswith("m.")]
    raise ValueError(f"metric {metric!r} is not a column of the table; available metrics: {avail or 'none'} "
                     "(bare names like 'clip_score' map to 'm.clip_score')")


def metric_bounds(column: str) -> tuple[float, float] | None:
    """The range a metric column's scores lie in (its `MetricInfo.range`, for this instance's options: a
    CLIP score's scale), or None for a metric this process does not know (a plugin not loaded)."""
    from ..metrics import metric_from_spec

    try:
        lo, hi = metric_from_spec(str(column).removeprefix("m.")).info.range
    except (KeyError, ValueError, TypeError):
        return None
    return (float(lo), float(hi)) if lo < hi else None


def inapplicable_mask(df: pd.DataFrame, metric: str) -> np.ndarray:
    """Rows `metric` does not apply to, so their NaN is no failure: it compares with the init image and the
    row is no img2img image (txt2img has none), or with the parent image and the row has no parent."""
    from ..metrics import metric_from_spec

    out = np.zeros(len(df), dtype=bool)
    try:
        needs = metric_from_spec(str(metric).removeprefix("m.")).info.needs
    except (KeyError, ValueError, TypeError):
        return out
    if "init_image" in needs and "mode" in df.columns:
        out |= (df["mode"] != "img2img").to_numpy()
    if "parent_image" in needs and "parent_key" in df.columns:
        out |= df["parent_key"].isna().to_numpy()
    return out


def drawn_columns(df: pd.DataFrame) -> list[str]:
    """The parameter columns the run's [randomize] table draws per seed and draw (``df.attrs[DRAWN]``, set by
    whoever read the run's experiment: `harness compare`); [] when not known."""
    return [c for c in df.attrs.get(DRAWN, []) if c in df.columns]


def _drawn_error(df: pd.DataFrame, factor: str, name: str) -> ValueError:
    """A drawn setting named as a factor: it has no levels to pair; where to read its effect instead."""
    prompt_factor = (f"; the prompt factor of that name is 'f.{factor}': name it so"
                     if name == factor and f"f.{factor}" in df.columns else "")
    return ValueError(f"factor {factor!r} is drawn by the experiment's [randomize] table, per seed and draw, so it "
                      "has no levels to pair (each draw would be a level of its own); `harness report` relates each "
                      "metric to it instead: tables/drawn.* and the report's 'settings drawn by [randomize]' block"
                      + prompt_factor)


def _resolve_factor(df: pd.DataFrame, factor: str) -> str:
    choices = [c for c in df.columns if str(c).startswith("f.")]
    choices += [c for c in (*DESIGN_COLUMNS, *PARAM_COLUMNS) if c in df.columns and c not in REPLICATE_COLUMNS]
    drawn = drawn_columns(df)
    for name in (factor, f"f.{factor}", f"f.{NEGATIVE_PREFIX}{factor}"):  # `neg`: the negative prompt's factor
        if name in choices:
            if name in drawn:
                raise _drawn_error(df, factor, name)
            if name == factor and f"f.{factor}" in choices and df[name].nunique(dropna=True) < 2:
                raise ValueError(f"factor {factor!r} names the parameter column {factor!r}, which has one level "
                                 f"here; the prompt factor of that name is 'f.{factor}': name it so")
            return name
    import difflib

    negative_factors = any(str(c).startswith(f"f.{NEGATIVE_PREFIX}") for c in choices)
    varying = [c for c in choices if df[c].nunique(dropna=True) > 1  # the ones a comparison can use (not the
               and not (c == "negative_prompt" and negative_factors)  # text negative-prompt factors set, nor
               and c not in drawn]  # the settings [randomize] draws)
    close = difflib.get_close_matches(factor, varying + [c[2:] for c in varying if c.startswith("f.")], n=1)
    one = len(drawn) == 1
    also = (f"; {', '.join(drawn)} {'is' if one else 'are'} drawn by [randomize], not compared as "
            f"{'a factor' if one else 'factors'} (see tables/drawn.*)") if drawn else ""
    raise ValueError(f"factor {factor!r} is not a factor column of the table"
                     + (f"; did you mean {close[0]!r}?" if close else ".")
                     + f" Factors that vary in this run: {', '.join(varying) or 'none'} "
                     f"(bare names like 'artist' map to 'f.artist'){also}")


def judges_health(metric: str) -> bool:
    """True for the `health` metric's columns: what decides `healthy`, so it is read over every image (its
    mean is the share of healthy images); leaving the unhealthy out would make it 1 everywhere."""
    return metric == "m.health" or metric.startswith("m.health[")


def healthy_mask(df: pd.DataFrame, metric: str | None = None) -> np.ndarray:
    """Rows whose ``healthy`` value is exactly True (every row for a `health` metric column, see
    `judges_health`); no column means all healthy."""
    if "healthy" not in df.columns or (metric is not None and judges_health(metric)):
        return np.ones(len(df), dtype=bool)
    if df["healthy"].dtype == bool:
        return df["healthy"].to_numpy()

    def is_true(v: Any) -> bool:
        return isinstance(v, (bool, np.bool_, int, float, np.number)) and v == 1

    return df["healthy"].map(is_true).to_numpy(bool)
