"""A run's report: its tables (see `tables`), comparisons, plots and the contact sheet.

Everything written here is derived: delete `tables/`, `plots/`, `thumbs/` or
`index.html` and `harness report` rebuilds them from the ledger.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .atomic import write_atomic
from .ledger import Ledger
from .columns import is_missing, level_label, resolve_metrics
from .stats import Comparison, paired_compare
from .tables import (TEXT_LIMITS, checkpoint_summary, factor_columns, factor_summary, image_table, metric_columns,
                     short_metric, truncation_note, variant_summary, write_table)

FLAG_METRICS = ("health", "watermark")  # compared only when named


def _finite(values: pd.Series) -> pd.Series:
    """Which values are finite numbers (not NaN, missing, infinite or text)."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return pd.Series(np.isfinite(numbers), index=values.index)


def default_compare_metric(df: pd.DataFrame) -> str | None:
    """The metric a comparison uses when none is named: a toy-world oracle, else CLIP score against the
    prompt (not against a fixed `text=` probe), else another CLIP score, else the first scored metric; only
    a metric with some finite score."""
    cols = [c for c in metric_columns(df) if short_metric(c) not in FLAG_METRICS and _finite(df[c]).any()]

    def rank(col: str) -> int:
        name = short_metric(col)
        if name.startswith("toy_"):
            return 0
        if name == "clip_score":
            return 2 if "text=" in col else 1
        return 3

    return min(cols, key=rank) if cols else None


def compare(df: pd.DataFrame, factor: str, *, metric: str | None = None, baseline: str | None = None,
            n_boot: int = 2000, seed: int = 0, tie_margin: float = 0.0,
            pair_on: list[str] | None = None, run_dir: Path | str | None = None) -> Comparison:
    """Paired comparison of a factor's levels on a metric (defaults: the first CLIP/oracle metric);
    `pair_on` overrides the columns pairs share (:func:`harness.stats.default_pair_on`); `run_dir` is the
    run folder the hints' commands name."""
    from .metrics.base import metric_class

    metric = metric or default_compare_metric(df)
    if metric is None:
        raise ValueError("no image of this run is made yet; run `harness run` first" if not len(df) else
                         _no_default_metric(df, run_dir))
    col = _find_metric(df, metric, run_dir)
    try:
        higher = metric_class(short_metric(col)).INFO.higher_is_better
    except (KeyError, ValueError, AttributeError):
        higher = True
    result = paired_compare(df, factor=factor, metric=col, baseline=baseline, n_boot=n_boot, tie_margin=tie_margin,
                            rng=np.random.default_rng(seed), higher_is_better=higher, pair_on=pair_on)
    note = truncation_note(df, col)
    return result if note is None else replace(result, notes=[*result.notes, note])


def comparison_tables(comparisons: list[Comparison]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`comparisons.*`: one row per level with the settings of its comparison and the caveats that apply
    to all of it (excluded images, notes); `rankings.*`: one row per level of the comparisons of three
    or more levels."""
    levels, rankings = [], []
    for c in comparisons:
        settings = {"factor": c.factor, "metric": c.metric, "baseline": c.baseline,
                    "higher_is_better": c.higher_is_better, "pair_on": ",".join(c.pair_on), "n_boot": c.n_boot}
        frame = c.to_frame()
        for i, (name, value) in enumerate(settings.items()):
            frame.insert(i, name, [value] * len(frame))
        frame["excluded"] = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.n_excluded.items())
        frame["comparison_notes"] = "; ".join(c.notes)
        levels.append(frame)
        if c.ranking:
            rank = pd.DataFrame([asdict(r) for r in c.ranking])
            rank.insert(0, "factor", c.factor)
            rank.insert(1, "metric", c.metric)
            rankings.append(rank)
    concat = lambda frames: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()  # noqa: E731
    return concat(levels), concat(rankings)


def _no_default_metric(df: pd.DataFrame, run_dir: Path | str | None) -> str:
    """Why a table with images has no metric to compare on by default: every score of its metrics is NaN
    (with how many and the most common reason), it scored only the health/watermark flags, or nothing."""
    flags = [c[2:] for c in metric_columns(df) if short_metric(c) in FLAG_METRICS and df[c].notna().any()]
    unusable = [c for c in metric_columns(df) if short_metric(c) not in FLAG_METRICS
                and (pd.api.types.is_numeric_dtype(df[c]) or df[c].isna().all())]
    if unusable:
        reasons = _nan_reasons(run_dir, df["key"], unusable)
        text = "; ".join(_no_finite_value(df, c, reasons.get(c, {})) for c in unusable)
        also = (f"; {', '.join(flags)} {'is' if len(flags) == 1 else 'are'} compared only when named (the "
                "experiment's compare_metrics, or --metric)") if flags else ""
        return (f"no metric to compare on by default: {text}; a comparison needs finite scores: score a metric "
                f"that applies to these images (`harness eval {_shell_run(run_dir)} -m METRIC`){also}")
    if flags:
        return (f"no metric to compare on by default: this run scored only {', '.join(flags)}, which is compared "
                "only when named (the experiment's compare_metrics, or --metric)")
    return f"no scored metric in this run; run `harness eval {_shell_run(run_dir)}` first"


def _no_finite_value(df: pd.DataFrame, column: str, reasons: dict[str, int]) -> str:
    """`column` was scored but has no finite value: for how many images, and the reason most of them give."""
    n = int((~_finite(df[column])).sum())
    unscored = n - sum(reasons.values())
    text = (f"{column[2:]} was scored but has no finite value (NaN for "
            + (f"all {n} images" if n == len(df) else f"{n} of {len(df)} images"))
    if unscored > 0 and reasons:
        text += f", {unscored} of them not scored yet"
    if reasons:
        reason, count = max(reasons.items(), key=lambda rc: rc[1])
        text += f"; most common reason: {reason!r}, {count} image{'s' if count != 1 else ''}"
    return text + ")"


def _nan_reasons(run_dir: Path | str | None, keys: pd.Series, columns: list[str]) -> dict[str, dict[str, int]]:
    """Metric column -> {reason: images} of the NaN scores the ledger stored for `keys` (their detail's
    "reason"); {} when the run folder is not known or its ledger cannot be read."""
    import json
    from collections import Counter

    from .ledger import LedgerError

    if run_dir is None or not (Path(run_dir) / "ledger.sqlite").is_file():
        return {}
    try:
        with Ledger.open(run_dir, readonly=True) as ledger:
            scores = ledger.scores_frame()
    except (LedgerError, OSError):
        return {}
    ids = {c[2:]: c for c in columns}
    nan = scores[scores["metric"].isin(list(ids)) & scores["value"].isna() & scores["key"].isin(set(keys))]
    out: dict[str, Counter] = {}
    for metric, detail in zip(nan["metric"], nan["detail"]):
        try:
            reason = json.loads(detail or "{}").get("reason")
        except (ValueError, AttributeError):
            reason = None
        out.setdefault(ids[metric], Counter())[str(reason) if reason else "(no reason recorded)"] += 1
    return {c: dict(counts) for c, counts in out.items()}


def _shell_run(run_dir: Path | str | None) -> str:
    """The run folder as a shell argument for a hint's command (`RUN` when not known)."""
    import shlex

    return "RUN" if run_dir is None else shlex.quote(str(run_dir))


def _shell_spec(metric: str) -> str:
    """A metric id as a `-m` argument to paste into a shell: the `name:options` form, quoted where needed."""
    import shlex

    from .metrics.spec import format_metric_spec, parse_metric_spec
    try:
        return shlex.quote(format_metric_spec(*parse_metric_spec(metric)))
    except ValueError:
        return shlex.quote(metric)


def _find_metric(df: pd.DataFrame, metric: str, run_dir: Path | str | None = None) -> str:
    """The score column of `metric`: an id (`toy_color_match[want=red]`, in full or with options at their
    defaults left out), the label the contact sheet shows (`clip_score[text=a cat]`: the options that tell it
    from the run's other instances), a spec (`toy_color_match:want=red`) or a bare name when only one instance
    was scored."""
    from .columns import label_match, options_match

    cols, given = metric_columns(df), metric
    if (":" in metric or "[" in metric) and not any(metric in (c, c[2:]) for c in cols):
        from .metrics.base import metric_from_spec
        try:
            metric = metric_from_spec(metric).id
        except KeyError as exc:  # an unknown metric name (or a plugin not loaded: HARNESS_PLUGINS)
            raise ValueError(exc.args[0] if exc.args else str(exc)) from exc
    for c in cols:
        if c == metric or c[2:] == metric:
            return c
    labelled = label_match(cols, given)
    if len(labelled) == 1:
        return labelled[0]
    matches = [c for c in cols if short_metric(c) == metric] or options_match(cols, given)
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(c[2:] for c in cols) or "(none scored)"
    if matches:
        raise ValueError(f"metric '{given}' is ambiguous; use the full id, one of: "
                         + ", ".join(c[2:] for c in matches))
    from .metrics import list_metrics
    known = {info.name for info in list_metrics()}
    name = metric.partition("[")[0]
    same = [c[2:] for c in cols if short_metric(c) == name]
    if same and metric != given:  # the options written match none of the run's instances
        raise ValueError(f"metric '{given}' is none of this run's {name} scores: {', '.join(same)}. With the "
                         f"options not written at their defaults it is {metric} (harness eval {_shell_run(run_dir)} "
                         f"-m {_shell_spec(metric)} scores it)")
    if name in known:  # a real metric this run never scored
        raise ValueError(f"metric '{metric}' was not scored in this run (harness eval {_shell_run(run_dir)} -m "
                         f"{_shell_spec(metric)} scores it); scored metrics in this run: {listing}")
    raise ValueError(f"unknown metric '{metric}'; scored metrics in this run: {listing}")


# Tables and plots written by `harness evolve` / `harness ablate`, shown in the sheet when present.
EXTRA_TABLES = (("search_generations", "Prompt search: best prompts per generation (fitness, 95% CI over seeds)"),
                ("search_lineage", "Prompt search: the winners' lineage"),
                ("ablation", "Ablation: each clause's contribution (full minus without, paired by seed)"))
EXTRA_PLOTS = ("search_trajectory.png",)
DRAWN_TITLE = ("Settings drawn by [randomize]: Spearman rho and least-squares slope of each metric on the drawn "
               "value, over draws (a draw's score is the mean of the images made with it; within seeds where seeds "
               "have two draws or more; 95% intervals, p of the same z as rho's)")
SEARCH_FILES = ("tables/search_generations", "tables/search_trajectory", "tables/search_lineage",
                "plots/search_trajectory.png")


def _drop_stale_extras(run_dir: Path, ledger: Ledger) -> list[str]:
    """Remove the search's and the ablation's tables when the run's plan no longer holds their images (an
    edit of the experiment planned its main images again): they describe an earlier version. Returns
    what was removed ("search", "ablation")."""
    parts = set(ledger.plan_parts())
    current = ledger.get_meta("search/current")
    stale = {"search": [run_dir / f for f in SEARCH_FILES] if f"search:{current}" not in parts else [],
             "ablation": [run_dir / "tables/ablation"] if "ablation" not in parts else []}
    dropped = []
    for what, files in stale.items():
        found = [f for base in files for f in ([base] if base.suffix else base.parent.glob(base.name + ".*"))
                 if f.is_file()]
        for f in found:
            f.unlink(missing_ok=True)
        if found:
            dropped.append(what)
    return dropped


def _planned_levels(ledger: Ledger) -> dict[str, int]:
    """Factor column (and checkpoint, strength) -> how many levels the current plan gives it: the jobs the
    ledger plans, and the whole main plan's levels the run recorded (a shard's ledger holds its own jobs only)."""
    import json

    from .plan import level_counts
    from .run import MAIN_LEVELS

    planned = ledger.planned_keys()
    levels = level_counts(job for job in ledger.all_jobs() if planned is None or job.key in planned)
    for column, count in json.loads(ledger.get_meta(MAIN_LEVELS) or "{}").items():
        levels[column] = max(count, levels.get(column, 0))
    return levels


def _stand_in_checkpoint(name: str, base_dir=None, config=None):
    """A checkpoint ref that names its weights without reading them: enough to count a plan's jobs (two
    names for one set of weights are refused when the run plans, so a name stands for its weights)."""
    from .checkpoints import CheckpointRef

    return CheckpointRef(name, "stand-in", name, f"stand-in:{name}", 0, "unknown")


def stage_jobs_to_come(run_dir: Path, ledger: Ledger) -> int | None:
    """Jobs of later stages the ledger does not plan yet: the children of source images not made yet (an
    interrupted run; a shard, whose other shards make the rest), counted as `harness plan` counts them from
    the run folder's experiment copy (no checkpoint or init image read) less what each stage's plan holds.
    0 without stages; None when it cannot be known: the copy missing, unreadable or not the version the
    ledger planned, in a folder whose ledger plans stages (in one that plans none, 0: no stage is known of)."""
    from .experiment import load_experiment
    from .run import edited_since

    progress = ledger.part_progress()  # part -> (planned, done)
    unknown = None if any(part.startswith("stage:") for part in progress) else 0  # no stage planned: none known
    if not (run_dir / "experiment.toml").is_file():
        return unknown
    try:
        exp = load_experiment(run_dir / "experiment.toml")
    except (ValueError, OSError):  # ExperimentError, a copy damaged or edited by hand, or one a check now refuses
        return unknown
    if not exp.stages:
        return 0
    if edited_since(ledger, exp):
        return unknown
    if all(f"stage:{s.name}" in progress for s in exp.stages) and all(d >= n for n, d in progress.values()):
        return 0  # every stage planned and made, the first stage too: nothing to come (and no plan to count)
    return _stage_shortfall(exp, progress)


def _stage_shortfall(exp, progress: dict[str, tuple[int, int]]) -> int | None:
    """The jobs each stage will have once its source is made (as `harness plan` counts them) less those its
    plan part holds, for the stages whose source is not all made (or that are not planned at all); None when
    the experiment no longer plans, or plans another number of first-stage images than the ledger."""
    from .plan import make_plan
    from .stages import stage_job_counts

    try:
        plan = make_plan(exp, resolve=_stand_in_checkpoint, init_hash=lambda path, w, h: f"<{path}>")
        counts = stage_job_counts(exp, list(plan.jobs), plan.checkpoints)
    except (ValueError, OSError, KeyError):  # ExperimentError, GrammarError: a wildcard file gone
        return None
    if len(plan.jobs) != progress.get("main", (0, 0))[0]:
        return None
    expected = {"main": len(plan.jobs), **{f"stage:{name}": n for name, n in counts.items()}}
    to_come = 0
    for stage in exp.stages:
        source = "main" if stage.source == "main" else f"stage:{stage.source}"
        part = f"stage:{stage.name}"
        if part in progress and progress.get(source, (0, 0))[1] >= expected[source]:
            continue  # planned from its whole source: the ledger's plan is the stage's (top_k may keep fewer)
        to_come += max(0, expected[part] - progress.get(part, (0, 0))[0])
    return to_come


def _no_pairs(c: Comparison) -> str:
    """Why a comparison has no pair at any level: its levels' notes, the first two and a count of the rest
    (a strength drawn by [randomize] has a level per image, each with the same reason)."""
    notes = list(dict.fromkeys(r.note for r in c.rows))
    more = f"; and {len(notes) - 2} more level(s) alike" if len(notes) > 2 else ""
    return "; ".join(notes[:2]) + more


def extra_sections(tables: Path) -> list[tuple[str, pd.DataFrame]]:
    return [(title, pd.read_parquet(tables / f"{name}.parquet")) for name, title in EXTRA_TABLES
            if (tables / f"{name}.parquet").is_file()]


@dataclass
class ReportResult:
    run_dir: Path
    images: int
    tables: list[Path] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    index: Path | None = None
    excluded: dict = field(default_factory=dict)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (factor, metric id, why) not compared
    truncated: int = 0  # images whose prompt some CLIP metric saw cut to its text limit
    text_limits: dict = field(default_factory=dict)  # metric id -> tokens it reads, where it cut a prompt
    missing: int = 0  # images the plan asks for that are not made yet (failed ones included)
    missing_at_least: bool = False  # `missing` is a lower bound: later stages' jobs to come could not be counted
    gone: int = 0     # finished images whose file is no longer in images/ (their scores still count)
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (key, why) of finished images whose file is
    #   damaged or not the one made (replaced, edited): their scores still count, and describe another picture
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, error) of the plan's failed jobs
    undrawn: str = ""  # characters of plot labels no installed font has (boxes in the plots)
    drawn: pd.DataFrame | None = None  # each metric against each [randomize]-drawn setting (stats.drawn)
    stale_page: Path | None = None  # an earlier report's index.html this one (--no-html) did not rewrite
    dropped: list[str] = field(default_factory=list)  # "search", "ablation": an earlier version's tables removed


def _experiment_copy(run_dir: Path) -> dict:
    """The run folder's copy of its experiment (`RUN/experiment.toml`) as a dict; {} when absent or unreadable."""
    import tomllib

    try:
        return tomllib.loads((run_dir / "experiment.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def report_metrics(run_dir: Path, metric: str | None) -> list[str | None]:
    """The metrics the report compares factors on: `metric` if given, else the run's experiment's
    `compare_metrics`, else [None] (the default metric)."""
    if metric:
        return [metric]
    wanted = _experiment_copy(run_dir).get("compare_metrics") or []
    return [str(m) for m in wanted] if isinstance(wanted, list) and wanted else [None]


def listed_strengths(table: pd.DataFrame, drawn: list[str]) -> pd.DataFrame | None:
    """Where `[randomize]` draws the main stage's strengths, the later stages' images when their listed
    strengths are two or more: the strengths a comparison can still pair (None otherwise)."""
    if "strength" not in drawn or "stage" not in table.columns or "strength" not in table.columns:
        return None
    rows = table[table["stage"].fillna("main") != "main"]
    return rows if rows["strength"].nunique(dropna=True) >= 2 else None


def randomized_params(run_dir: Path) -> list[str]:
    """The parameters the run's experiment draws at random per prompt (its [randomize] table)."""
    table = _experiment_copy(run_dir).get("randomize")
    return [k for k in ("strength", "steps", "guidance") if k in table] if isinstance(table, dict) else []


def failed_jobs(ledger: Ledger) -> list[tuple[str, str]]:
    """(key, error text) of the failed jobs of the current plan (every failed job when no plan is recorded)."""
    jobs = ledger.jobs_frame()
    if not len(jobs):
        return []
    planned = ledger.planned_keys()
    failed = jobs[(jobs["status"] == "failed") & (True if planned is None else jobs["key"].isin(planned))]
    errors = failed["error"] if "error" in failed.columns else pd.Series("", index=failed.index)
    return [(str(k), "" if is_missing(e) else str(e)) for k, e in zip(failed["key"], errors)]


def _check_options(table: pd.DataFrame, rows: str | None, cols: str | None, metric: str | None,
                   html: bool, run_dir: Path) -> None:
    """A misspelt --rows/--cols/--metric fails before anything is rewritten (with or without the page)."""
    if not len(table):
        return
    if html or rows or cols:
        from .sheet import choose_axes
        choose_axes(table, rows, cols)
    if metric:
        _find_metric(table, metric, run_dir)  # a misspelt --metric is an error, not an empty comparison


def _remove_stale(run_dir: Path, tables: Path, table: pd.DataFrame, plots: list[Path]) -> None:
    """An earlier report's files this one did not rewrite: its checkpoints.* when no image is left, and the
    plots it drew that this report did not (the search/ablation plots are kept)."""
    if not len(table):
        for suffix in ("csv", "parquet", "md"):
            (tables / f"checkpoints.{suffix}").unlink(missing_ok=True)
    folder = run_dir / "plots"
    if folder.is_dir():
        keep = {Path(p).name for p in plots} | set(EXTRA_PLOTS)
        for png in folder.glob("*.png"):
            if png.name not in keep:
                png.unlink(missing_ok=True)


def _compare_factors(result: ReportResult, table: pd.DataFrame, factors: list[str],
                     metrics: list[str | None]) -> None:
    """Compare each factor on each metric (None: the default one) into `result.comparisons`; what cannot be
    compared goes to `result.skipped` with its reason (a metric not scored, only health scored, no pairs)."""
    if not len(table):
        return
    default = default_compare_metric(table)
    no_default = (_no_default_metric(table, result.run_dir)  # why, read once for every factor
                  if default is None and factors and None in metrics else None)
    for m in metrics:
        named = m or (default.removeprefix("m.") if default else "any metric")
        for f in factors:
            if m is None and no_default is not None:
                result.skipped.append((f, named, no_default))
                continue
            try:
                c = compare(table, f, metric=m, run_dir=result.run_dir)
            except ValueError as exc:  # a factor with one level, a metric not scored, no metric to compare on
                result.skipped.append((f, named, str(exc)))
                continue
            if all(r.n_pairs == 0 for r in c.rows):  # e.g. a factor nested in another, mode vs strength
                result.skipped.append((f, named, _no_pairs(c)))
            else:
                result.comparisons.append(c)


def build_report(run_dir: Path | str, *, rows: str | None = None, cols: str | None = None,
                 compare_factors: Iterable[str] | None = None, metric: str | None = None,
                 html: bool = True) -> ReportResult:
    run_dir = Path(run_dir)
    if not (run_dir / "ledger.sqlite").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no ledger.sqlite); run an experiment first")
    with Ledger.open(run_dir, readonly=True) as ledger, ledger.snapshot():  # a run may be writing meanwhile
        table = image_table(ledger)
        _check_options(table, rows, cols, metric, html, run_dir)  # before anything is removed or rewritten
        unplanned = ledger.unplanned_done()
        to_come = stage_jobs_to_come(run_dir, ledger)
        missing = ledger.planned_not_done() + (to_come or 0)
        failed = failed_jobs(ledger)
        to_make = image_table(ledger, made=False) if html and missing else None
        planned_levels = _planned_levels(ledger) if missing and compare_factors is None else {}
        dropped = _drop_stale_extras(run_dir, ledger)
        unsound = ledger.image_problems(table["key"]) if len(table) else {}
    result = ReportResult(run_dir, len(table), truncated=int((table["truncated"] != "").sum()) if len(table) else 0,
                          text_limits=table.attrs.get(TEXT_LIMITS, {}), failed=failed, dropped=dropped,
                          missing_at_least=to_come is None)
    tables = run_dir / "tables"
    result.tables += write_table(table, tables, "images")
    drawn = randomized_params(run_dir)  # a drawn strength has a level per draw: its section is `drawn`, not pairs
    variants = variant_summary(table, drawn)
    result.tables += write_table(variants, tables, "variants")
    result.tables += write_table(factor_summary(table, drawn), tables, "factors")
    if len(table):
        result.tables += write_table(checkpoint_summary(table), tables, "checkpoints")
    result.excluded = {"unhealthy": int((~table["healthy"]).sum()) if len(table) else 0, "unplanned": unplanned}
    result.missing = missing
    result.gone = sum(why == "missing" for why in unsound.values())
    result.damaged = sorted((key, why) for key, why in unsound.items() if why != "missing")
    candidates = [f for f in factor_columns(table) + ["checkpoint", *({"strength"} - set(drawn))]
                  if f in table.columns]
    factors = list(compare_factors) if compare_factors is not None else [
        f for f in candidates if table[f].nunique(dropna=True) >= 2]
    for f in candidates:  # a partial run: a factor the plan varies may show one level so far
        if table[f].nunique(dropna=True) == 1 and planned_levels.get(f, 0) >= 2:
            result.skipped.append((f, "any metric", f"only 1 level ({level_label(table[f].dropna().iloc[0])!r}) among the "
                                   f"{len(table)} images made; the plan has {planned_levels[f]} "
                                   f"({'at least ' if to_come is None else ''}{missing} images not made yet)"))
    _compare_factors(result, table, factors, report_metrics(run_dir, metric))
    staged = listed_strengths(table, drawn)
    if staged is not None and compare_factors is None:  # the stages' own strengths still pair
        _compare_factors(result, staged, ["strength"], report_metrics(run_dir, metric))
    if result.comparisons:
        levels, rankings = comparison_tables(result.comparisons)
        result.tables += write_table(levels, tables, "comparisons")
        if len(rankings):
            result.tables += write_table(rankings, tables, "rankings")
        text = "\n".join(c.to_text() for c in result.comparisons)
        write_atomic(tables / "comparisons.txt", lambda p: p.write_text(text, encoding="utf-8"))
    scored = [c for c in resolve_metrics(table, None) if table[c].notna().any()] if len(table) else []
    if drawn and scored:  # nothing scored: no table and no section, rather than empty ones
        from .stats.drawn import drawn_effects
        result.drawn = drawn_effects(table, drawn, scored)
        result.tables += write_table(result.drawn, tables, "drawn")
    stale = [] if result.comparisons else ["comparisons"]  # an earlier report's would be read as this run's
    if result.drawn is None:
        stale.append("drawn")
    if not any(c.ranking for c in result.comparisons):
        stale.append("rankings")
    for name in stale:
        for suffix in ("csv", "parquet", "md", "txt"):
            (tables / f"{name}.{suffix}").unlink(missing_ok=True)
    if html and len(table):
        from .plots import plots_for, undrawn
        result.plots, result.undrawn = plots_for(table, run_dir, drawn), undrawn(table)
    if html or not len(table):
        _remove_stale(run_dir, tables, table, result.plots)
    if html:
        from .sheet import write_sheet
        extra_plots = [run_dir / "plots" / name for name in EXTRA_PLOTS if (run_dir / "plots" / name).is_file()]
        result.index = write_sheet(run_dir, table, rows=rows, cols=cols, variant_summary=variants,
                                   not_sections=drawn,
                                   comparisons=[*result.comparisons, *extra_sections(tables),
                                                *([(DRAWN_TITLE, result.drawn)] if result.drawn is not None else [])],
                                   plots=result.plots + extra_plots, missing=missing, failed=failed, to_make=to_make,
                                   missing_at_least=result.missing_at_least,
                                   title=f"{run_dir.resolve().name}: {len(table)} images")
    elif (run_dir / "index.html").is_file():
        result.stale_page = run_dir / "index.html"
    return result
