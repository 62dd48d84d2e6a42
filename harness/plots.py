"""Default plots of a run's per-image table (matplotlib, no display needed).

Each plot is a PNG under ``RUN/plots/`` that the contact sheet links to. Means
come with 95 % intervals (:func:`harness.stats.mean_interval`: Student t within the metric's range, Wilson's
for a 0/1 rate) over
healthy, scored images; unhealthy images and NaN scores are left out and the
number of images behind each point is printed under it.

Figures are made with ``matplotlib.figure.Figure`` directly (the Agg canvas),
never through pyplot, so importing this module changes no global backend and
works without a display.
"""

from __future__ import annotations

import hashlib
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from .columns import dim_name, level_label, resolve_dim, resolve_metric, resolve_metrics, short_metric, sorted_levels
from .atomic import write_atomic
from .fonts import plot_fonts, undrawable
from .stats import mean_interval
from .stats.drawn import drawn_effect, drawn_units
from .stats.table import healthy_mask, metric_bounds

PLOTS_DIR = "plots"
SLUG_MAX = 60  # characters of readable name per part of a plot file name
LABEL_MAX = 120  # characters of a metric id shown in a title or axis label


def _usable(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Healthy rows with a finite score; the score as float column '_v'."""
    values = pd.to_numeric(table[metric], errors="coerce")
    keep = np.isfinite(values.to_numpy(float))
    keep &= healthy_mask(table, metric)
    return table[keep].assign(_v=values[keep])


def _mean_ci(x: np.ndarray, bounds: tuple[float, float] | None) -> tuple[float, float, float]:
    lo, hi = mean_interval(x, bounds=bounds)
    return (float(np.mean(x)) if len(x) else math.nan), lo, hi


CAPTION = "Title"  # the PNG text chunk that names what a plot shows (the contact sheet's caption)


def _save(fig, out: Path, caption: str) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        with plot_fonts():
            fig.savefig(tmp, format="png", dpi=100, metadata={CAPTION: caption})

    return write_atomic(out, save)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _digest(text: str) -> str:
    """A short hash of `text`, the same in every run."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def metric_label(column: str, limit: int = LABEL_MAX) -> str:
    """The full metric id without 'm.'; past `limit` characters its middle is cut and its hash added."""
    text = column[2:] if column.startswith("m.") else column
    if len(text) <= limit:
        return text
    tag = f" #{_digest(text)}"
    keep = max(limit - len(tag) - 1, 2)
    head = keep - keep // 3
    return f"{text[:head]}…{text[len(text) - (keep - head):]}{tag}"


def _wrap(text: str, width: int) -> str:
    """`text` in lines of at most `width` characters."""
    return "\n".join(textwrap.wrap(text, width=max(width, 10), break_on_hyphens=False)) or text


TICK_CHARS, TICK_LINES = 11, 3  # a level's tick label: lines of at most 11 characters (0.9 in per level)


def _tick_label(level, n: int) -> str:
    """A level's x tick label that fits its slot: wrapped to TICK_CHARS, at most TICK_LINES lines (the
    last ending in '…' when cut; the full level is in the tables), then its image count."""
    lines = textwrap.wrap(str(level), width=TICK_CHARS, break_on_hyphens=False) or [str(level)]
    if len(lines) > TICK_LINES:
        lines = lines[:TICK_LINES]
        lines[-1] = lines[-1][:TICK_CHARS - 1] + "…"
    return "\n".join(lines + [f"n={n}"])


def _height(title: str) -> float:
    """Figure height in inches: room for a plot plus every line of its title."""
    return 3.2 + 0.17 * title.count("\n")


def level_stats(table: pd.DataFrame, factor: str, metric: str) -> pd.DataFrame:
    """Per level of `factor`: n, mean, ci_low, ci_high of `metric` over healthy, scored images."""
    fcol, mcol = resolve_dim(table, factor, "factor"), resolve_metric(table, metric)
    data = _usable(table, mcol)
    labels = data[fcol].map(level_label)
    levels = [level_label(v) for v in sorted_levels(data[fcol])]
    rows, bounds = [], metric_bounds(mcol)
    for lv in levels:
        x = data.loc[labels == lv, "_v"].to_numpy()
        mean, lo, hi = _mean_ci(x, bounds)
        rows.append({"level": lv, "n": len(x), "mean": mean, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["level", "n", "mean", "ci_low", "ci_high"])


def _stages(data: pd.DataFrame) -> list[str]:
    """The stages among `data`'s rows, main first, when there are two or more (else [])."""
    if "stage" not in data.columns or data["stage"].nunique(dropna=True) < 2:
        return []
    return sorted(data["stage"].dropna().map(str).unique(), key=lambda s: (s != "main", s))


@plot_fonts()
def level_figure(table: pd.DataFrame, factor: str, metric: str):
    """The figure :func:`metric_by_level` saves: mean and 95 % CI of `metric` per level of `factor`; a
    staged run gets a series per stage, side by side (a refined image is not another draw of its parent)."""
    fcol, mcol = resolve_dim(table, factor, "factor"), resolve_metric(table, metric)
    stats = level_stats(table, fcol, mcol)
    if stats.empty:
        raise ValueError(f"metric_by_level: no healthy image has a {metric_label(mcol)} score; nothing to plot")
    stages = _stages(_usable(table, mcol))
    series = [(stage, level_stats(table[table["stage"].map(str) == stage], fcol, mcol).set_index("level")
               .reindex(stats["level"]).reset_index()) for stage in stages] or [(None, stats)]
    name = dim_name(fcol)
    width = max(3.6, (0.9 + 0.2 * len(stages)) * len(stats) + 1.8)
    per_stage = ", per stage" if stages else ""
    title = _wrap(f"{metric_label(mcol)} by {name} (mean, 95% CI{per_stage})", int(width * 9))
    ticks = [_tick_label(lv, n) for lv, n in zip(stats["level"], stats["n"])]
    extra = 0.15 * max(0, max(t.count("\n") for t in ticks) - 1)  # room for levels wrapped to more lines
    fig = _figure(width, _height(title) + extra)
    ax = fig.subplots()
    x = np.arange(len(stats))
    step = min(0.6 / len(series), 0.2)
    for i, (stage, part) in enumerate(series):
        means = part["mean"].to_numpy(float)
        below = np.nan_to_num(means - part["ci_low"].to_numpy(float))  # no bar where n < 2
        above = np.nan_to_num(part["ci_high"].to_numpy(float) - means)
        ax.errorbar(x + (i - (len(series) - 1) / 2) * step, means, yerr=[below, above], fmt="o", capsize=4,
                    markersize=6, label=stage, **({} if stages else {"color": "#2f5dbd"}))
    if stages:
        ax.legend(fontsize=8, title="stage", title_fontsize=8)
    ax.set_xticks(x, ticks, fontsize=9)
    ax.set_xlabel(name)
    ax.set_ylabel(_wrap(metric_label(mcol, 60), 30), fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_xlim(-0.6, len(stats) - 0.4)
    return fig


def metric_by_level(table: pd.DataFrame, factor: str, metric: str, out: Path) -> Path:
    """Mean and 95 % CI of `metric` per level of `factor` (healthy, scored images only)."""
    fcol, mcol = resolve_dim(table, factor, "factor"), resolve_metric(table, metric)
    return _save(level_figure(table, factor, metric), out, f"{metric_label(mcol)} by {dim_name(fcol)}")


def _img2img(table: pd.DataFrame) -> pd.DataFrame:
    if "strength" not in table.columns:
        return table.iloc[0:0]
    strength = pd.to_numeric(table["strength"], errors="coerce")
    mask = strength.notna()
    if "mode" in table.columns:
        mask &= table["mode"] == "img2img"
    return table[mask].assign(strength=strength[mask])


@plot_fonts()
def strength_figure(table: pd.DataFrame, metrics: list[str]):
    """The figure :func:`strength_curves` saves, or None when there is nothing to draw."""
    rows = _img2img(table)
    if rows.empty:
        return None
    columns = [resolve_metric(table, m) for m in metrics]
    panels = [(c, _usable(rows, c)) for c in columns]
    panels = [(c, d) for c, d in panels if not d.empty]
    if not panels:
        return None
    # a line per checkpoint and per stage: a later stage's strengths start from other images
    by = [c for c in ("checkpoint", "stage") if c in rows.columns and rows[c].nunique(dropna=False) > 1]
    groups = sorted({tuple(level_label(v) for v in row) for row in rows[by].itertuples(index=False)},
                    key=lambda g: tuple((c == "stage" and v != "main", v) for c, v in zip(by, g)))  # main first
    titles = [_wrap(f"{metric_label(c)} by img2img strength", 42) for c, _ in panels]
    fig = _figure(4.2 * len(panels), max(_height(t) for t in titles))
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    for ax, (col, data), title in zip(axes, panels, titles):
        _strength_panel(ax, data, by, groups, metric_bounds(col))
        ax.set_xlabel("strength")
        ax.set_ylabel(_wrap(metric_label(col, 60), 30), fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend(fontsize=8, title=", ".join(by), title_fontsize=8)
    return fig


def _strength_panel(ax, data: pd.DataFrame, by: list[str], groups: list[tuple],
                    bounds: tuple[float, float] | None) -> None:
    labels = [data[c].map(level_label) for c in by]
    for group in groups:
        part = data[np.logical_and.reduce([lab == g for lab, g in zip(labels, group)])] if by else data
        xs = sorted(part["strength"].unique())
        if not xs:
            continue
        stats = [_mean_ci(part.loc[part["strength"] == s, "_v"].to_numpy(), bounds) for s in xs]
        means = np.array([s[0] for s in stats])
        lo = np.array([s[1] for s in stats])
        hi = np.array([s[2] for s in stats])
        line, = ax.plot(xs, means, marker="o", label=", ".join(group) if group else None)
        ok = ~np.isnan(lo)
        if ok.any():
            ax.fill_between(np.array(xs)[ok], lo[ok], hi[ok], alpha=0.2, color=line.get_color(), linewidth=0)


def strength_curves(table: pd.DataFrame, metrics: list[str], out: Path) -> Path | None:
    """img2img strength on x, mean and 95 % CI of each metric (one panel each, a line per checkpoint and
    per stage when they vary).

    None when the table has no img2img rows or none of them has a healthy score.
    """
    fig = strength_figure(table, metrics)
    return None if fig is None else _save(fig, out, "metrics by img2img strength")


@plot_fonts()
def drawn_figure(table: pd.DataFrame, parameter: str, metrics: list[str]):
    """The figure :func:`drawn_plot` saves, or None when no metric has a scored image with a drawn value."""
    panels = [(c, drawn_units(table, parameter, c)) for c in (resolve_metric(table, m) for m in metrics)]
    panels = [(c, units) for c, units in panels if len(units)]
    if not panels:
        return None
    effects = [drawn_effect(table, parameter, col) for col, _ in panels]
    titles = []
    for (col, _), e in zip(panels, effects):
        within = " within seeds" if e["within_seed"] else ""
        rho = (f"rho{within} {e['rho']:+.2f} [{e['rho_low']:+.2f}, {e['rho_high']:+.2f}]" if e["p"] == e["p"]
               else f"rho{within} {e['rho']:+.2f}, no interval: {e['why_none']}" if e["rho"] == e["rho"]
               else f"no rho: {e['why_none']}")
        titles.append(_wrap(f"{metric_label(col)} by drawn {parameter} ({e['units']} draws, {rho})", 42))
    fig = _figure(4.2 * len(panels), max(_height(t) for t in titles))
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    for ax, (col, units), e, title in zip(axes, panels, effects, titles):
        _drawn_panel(ax, units, e, metric_bounds(col))
        ax.set_xlabel(f"{parameter} (drawn)")
        ax.set_ylabel(_wrap(metric_label(col, 60), 30), fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    return fig


def _drawn_panel(ax, units: pd.DataFrame, effect: dict, bounds: tuple[float, float] | None) -> None:
    """A point per draw; a thin line joins the draws of one seed (they share its noise: the analysis is
    within seeds); the fitted line, where there is a slope, through the mean, kept within the metric's range."""
    x, y = units["value"].to_numpy(float), units["score"].to_numpy(float)
    for _, seed in units.groupby("seed"):
        if len(seed) > 1 and effect["within_seed"]:
            ordered = seed.sort_values("value")
            ax.plot(ordered["value"], ordered["score"], color="#999999", linewidth=0.6, alpha=0.6)
    ax.scatter(x, y, s=12 + 4 * np.minimum(units["images"].to_numpy(), 8), alpha=0.6, color="#2f5dbd",
               label="one draw (mean of its images)", zorder=3)
    slope = effect["slope"]
    if slope == slope:
        xs = np.linspace(x.min(), x.max(), 50)
        ys = y.mean() + slope * (xs - x.mean())
        inside = np.ones_like(xs, dtype=bool) if bounds is None else (ys >= bounds[0]) & (ys <= bounds[1])
        ax.plot(xs[inside], ys[inside], color="#c0392b", linewidth=1.5,
                label="fitted slope" + (" (within seeds)" if effect["within_seed"] else ""))
    ax.legend(fontsize=7)


def drawn_plot(table: pd.DataFrame, parameter: str, metrics: list[str], out: Path) -> Path | None:
    """Each metric against a setting `[randomize]` drew: a point per draw (the mean of the images made with
    it), the least-squares line and Spearman's rho in the title (:mod:`harness.stats.drawn`)."""
    fig = drawn_figure(table, parameter, metrics)
    return None if fig is None else _save(fig, out, f"metrics by drawn {parameter}")


def _slug(text: str, limit: int = SLUG_MAX) -> str:
    """`text` when it is a short, plain ASCII name; else a readable ASCII cut of it plus its hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    if slug == text and len(slug) <= limit:
        return slug
    return f"{slug[:limit].rstrip('._-') or 'x'}-{_digest(text)}"


def plot_names(metrics: list[str], factors: list[str]) -> dict[tuple[str, str], str]:
    """A PNG file name per (metric, factor): ASCII, bounded in length, distinct even on case-blind disks."""
    slugs = {m: _slug(short_metric(m)) for m in metrics}
    if len({s.casefold() for s in slugs.values()}) < len(slugs):  # two configurations of one metric
        slugs = {m: _slug(m[2:]) for m in metrics}
    names = {(m, f): f"{slugs[m]}__by__{_slug(dim_name(f))}" for m in metrics for f in factors}
    seen: dict[str, int] = {}
    for name in names.values():
        seen[name.casefold()] = seen.get(name.casefold(), 0) + 1
    return {key: (f"{name}-{_digest(repr(key))}" if seen[name.casefold()] > 1 else name) + ".png"
            for key, name in names.items()}


def plot_metrics(table: pd.DataFrame) -> list[str]:
    """Metric columns with at least one score, without the 0/1 health and watermark flags."""
    return [c for c in resolve_metrics(table, None) if table[c].notna().any()]


def plot_factors(table: pd.DataFrame) -> list[str]:
    """Factor columns (and checkpoint) with more than one level: each gets a plot per metric."""
    factors = [c for c in table.columns if str(c).startswith("f.")]
    factors += [c for c in ("checkpoint",) if c in table.columns]
    return [f for f in factors if table[f].nunique(dropna=False) > 1]


def undrawn(table: pd.DataFrame) -> str:
    """Characters of the plots' factor names, levels, checkpoints and metric ids that no installed font
    has: they show as boxes in the plots (the tables and the contact sheet show them)."""
    factors = plot_factors(table)
    texts = [*map(metric_label, plot_metrics(table)), *map(dim_name, factors)]
    texts += [level_label(v) for f in {*factors, *({"checkpoint"} & set(table.columns))} for v in table[f].unique()]
    return undrawable(texts)


def plots_for(table: pd.DataFrame, run_dir: Path, drawn: list[str] = ()) -> list[Path]:
    """The default plots: every varying factor (and checkpoint) x every metric, the strength curves and, for
    each setting in `drawn` (what `[randomize]` draws), the metrics against it.

    Each factor plot pools the images over everything else (other factors, seeds) but the stage: a staged
    run's plot has a series per stage. A drawn strength has no curve of its own for the main stage (each
    draw is its own strength): its drawn plot shows it.
    """
    run_dir = Path(run_dir)
    metrics = plot_metrics(table)
    factors = plot_factors(table)
    out: list[Path] = []
    folder = run_dir / PLOTS_DIR
    names = plot_names(metrics, factors)
    for metric in metrics:
        if _usable(table, metric).empty:
            continue
        for factor in factors:
            out.append(metric_by_level(table, factor, metric, folder / names[metric, factor]))
    curved = table[table["stage"].fillna("main") != "main"] if "strength" in drawn and "stage" in table.columns else table
    curve = strength_curves(curved, metrics, folder / "strength.png") if metrics else None
    if curve is not None:
        out.append(curve)
    for parameter in drawn:
        made = drawn_plot(table, parameter, metrics, folder / f"drawn__{parameter}.png") if metrics else None
        if made is not None:
            out.append(made)
    return out
