"""CLI commands for evaluating and reporting runs: eval, metrics, report, compare (registered on the main app)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .cli import HISTORY_NOTE, _print_metric_summaries, app, fail, interrupted


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="Run folder (reports/<name>)."),
    metric: List[str] = typer.Option([], "--metric", "-m",
                                     help="Metric spec, e.g. clip_score:model=ViT-L-14,pretrained=openai "
                                          "(repeatable; default: the experiment's metrics)."),
    scale: Optional[float] = typer.Option(None, "--scale", help="CLIP score scale: 100 (default) or 2.5 "
                                                                "(original CLIPScore); applies to the -m CLIP "
                                                                "specs, else to the experiment's."),
    rescore: bool = typer.Option(False, "--rescore", help="Score every image again with these metrics (one "
                                                          "whose code or weights changed); resumable."),
) -> None:
    """Score every image of a run not yet scored with each metric (resumable)."""
    from .evaluate import evaluate_run
    from .ledger import LedgerError
    from .metrics import MetricUnavailable

    if not (run_dir / "ledger.sqlite").is_file():
        fail(f"{run_dir}: not a run folder (no ledger.sqlite); run an experiment first")
    specs = list(metric)
    if scale is not None:
        from .evaluate import default_clip, experiment_metrics, scaled_clip_specs
        from .ledger import Ledger

        try:
            with Ledger.open(run_dir, readonly=True) as ledger:
                specs = scaled_clip_specs(specs, scale, experiment_metrics(ledger), default_clip(ledger))
        except (ValueError, LedgerError) as e:
            fail(f"error: {e}")
        except KeyError as e:  # an unknown metric name: the message lists the valid ones
            fail(f"error: {e.args[0]}")

    try:
        unscored = _print_metric_summaries(evaluate_run(run_dir, specs or None, rescore=rescore))
    except KeyboardInterrupt:
        interrupted()
    except (ValueError, MetricUnavailable, LedgerError) as e:
        fail(f"error: {e}")
    except KeyError as e:  # an unknown metric name: the message lists the valid ones
        fail(f"error: {e.args[0]}")
    except OSError as e:  # a read-only folder, a full disk: one line naming the path
        fail(str(e))
    if unscored:
        raise typer.Exit(1)


@app.command("metrics")
def metrics_() -> None:
    """List the available metrics and their options."""
    from .metrics import list_metrics, metric_options
    from .metrics.base import format_option

    for info in list_metrics():
        lo, hi = info.range
        typer.echo(f"{info.name}: {info.description} [{lo:g}, {hi:g}], "
                   f"{'higher' if info.higher_is_better else 'lower'} is better; needs {', '.join(sorted(info.needs))}")
        for name, opt in metric_options(info.name).items():
            choices = getattr(opt, "choices", None)
            one_of = f" (one of: {', '.join(map(str, choices))})" if choices else ""
            default = format_option(opt.default) or "''"  # an empty text default, shown as such
            typer.echo(f"    {name} = {default}  {getattr(opt, 'help', '')}{one_of}")


class CompareFmt(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"


def _given_metric(value: Optional[str]) -> Optional[str]:
    """--metric as written; an empty one is refused (it would quietly mean the default metric)."""
    if value is not None and not value.strip():
        raise typer.BadParameter("empty; expected a metric name or spec such as clip_score:model=ViT-L-14 (or "
                                 "leave --metric out for the default one)")
    return value


_CUT_OFF = ("the report stopped part way: each file it wrote is whole, and the files it did not get to are the "
            "earlier report's (or missing)")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="Run folder."),
    rows: Optional[str] = typer.Option(None, "--rows", help="Contact-sheet rows: a factor, seed, checkpoint..."),
    cols: Optional[str] = typer.Option(None, "--cols", help="Contact-sheet columns."),
    metric: Optional[str] = typer.Option(None, "--metric", callback=_given_metric, help="Metric for the comparisons."),
    no_html: bool = typer.Option(False, "--no-html", help="Tables only."),
) -> None:
    """Tables (csv/parquet/md), paired comparisons, plots and index.html, rebuilt from the ledger."""
    from .ledger import LedgerError
    from .report import build_report

    layout = [name for name, value in (("--rows", rows), ("--cols", cols)) if value is not None]
    if no_html and layout:
        fail(f"{' and '.join(layout)} lay out the contact sheet, which --no-html does not build; drop "
             f"{'them' if len(layout) > 1 else 'it'}, or drop --no-html")
    try:
        r = build_report(run_dir, rows=rows, cols=cols, metric=metric, html=not no_html)
    except KeyboardInterrupt:
        interrupted(f"{_CUT_OFF}; run the same command again to rebuild them all")
    except (FileNotFoundError, ValueError, LedgerError) as e:
        fail(f"error: {e}")
    except OSError as e:  # a full disk, a read-only folder: one line naming the path
        fail(str(e), out_of_space=f"{_CUT_OFF}. Free space and run the same command again to rebuild them all")
    typer.echo(f"{r.images} images; tables in {run_dir / 'tables'}")
    if r.gone:
        typer.echo(f"image files gone: {r.gone} finished images have no file in images/ (deleted since they were "
                   f"made); their scores still count in these tables until `harness eval {run_dir}` drops them",
                   err=True)
    if r.damaged:
        key, why = r.damaged[0]
        typer.echo(f"image files damaged or changed: {len(r.damaged)} finished images are not the files they were "
                   f"made as (e.g. images/{key}.png: {why}); their scores still count in these tables until "
                   f"`harness eval {run_dir}` drops them, and `harness run` remakes them", err=True)
    for what, command in (("search", "evolve"), ("ablation", "ablate")):
        if what in r.dropped:
            typer.echo(f"note: removed the {what} tables of an earlier version of the experiment (the edit planned "
                       f"its images again); `harness {command}` makes them for this version")
    if r.stale_page:
        typer.echo(f"note: {r.stale_page} and plots/ are an earlier report's (--no-html leaves them as they were); "
                   f"`harness report {run_dir}` (without --no-html) rebuilds them", err=True)
    if r.failed:
        typer.echo(f"failed: {len(r.failed)} images of the experiment's plan (their errors are listed on the contact "
                   "sheet and in the ledger; `harness run` tries them again)")
    if r.missing > len(r.failed):
        at_least = "at least " if r.missing_at_least else ""
        typer.echo(f"not made yet: {at_least}{r.missing - len(r.failed)} images of the experiment's plan (an "
                   "interrupted run or a shard not merged); the statistics cover only the images made")
    if r.excluded.get("unhealthy"):
        typer.echo(f"unhealthy images excluded from statistics: {r.excluded['unhealthy']}")
    if r.excluded.get("unplanned"):
        typer.echo(f"left out: {r.excluded['unplanned']} images made for an earlier version of the experiment "
                   f"(kept in the run folder), {HISTORY_NOTE}")
    if r.truncated:
        limits = "; ".join(f"{m} reads {k} tokens" for m, k in r.text_limits.items()) or "its CLIP text limit"
        typer.echo(f"{r.truncated} images have prompts longer than a CLIP metric reads ({limits}); those scores "
                   "ignore the words after it (column 'truncated' of the images table)")
    if r.undrawn:
        from .fonts import FONT_HINT
        typer.echo(f"plots: no installed font has {r.undrawn!r}; those characters show as boxes in the plots "
                   f"(the tables and the contact sheet show them); {FONT_HINT}")
    for c in r.comparisons:
        typer.echo("")
        typer.echo(c.to_text().rstrip())
    for factor, metric, why in r.skipped:
        typer.echo(f"\nnot compared: {factor} on {metric}: {why}")
    if r.drawn is not None and len(r.drawn):
        from .stats.drawn import describe
        typer.echo("\nsettings drawn by [randomize] (tables/drawn.csv):")
        for _, row in r.drawn.iterrows():
            typer.echo(f"  {describe(row)}")
    if r.index:
        typer.echo(f"\ncontact sheet: {r.index}")


def split_columns(text: str, columns) -> list[str]:
    """A comma list of table columns, read as `comparisons.csv` writes it: a column whose name holds a comma
    (the factor of `{, by greg rutkowski|}` is `f., by greg rutkowski|`) is taken whole where it is one of
    `columns` (or a factor's name without `f.`); anything else ends at the next comma. Spaces after a comma
    are dropped."""
    names = [str(c) for c in columns]
    known = sorted({*names, *(c[2:] for c in names if c.startswith("f."))}, key=len, reverse=True)
    out, pos = [], 0
    while pos < len(text):
        while pos < len(text) and text[pos] in ", ":
            pos += 1
        if pos == len(text):
            break
        whole = next((c for c in known if text.startswith(c, pos) and text[pos + len(c):pos + len(c) + 1] in ("", ",")),
                     None)
        end = pos + len(whole) if whole else (text.find(",", pos) if "," in text[pos:] else len(text))
        out.append(text[pos:end].strip())
        pos = end
    return out


@app.command()
def compare(
    run_dir: Path = typer.Argument(..., help="Run folder."),
    factor: str = typer.Option(..., "--factor", help="Factor to compare (a grammar factor name, or checkpoint)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Baseline level (default: the empty "
                                                                      "level, else the first)."),
    metric: Optional[str] = typer.Option(None, "--metric", callback=_given_metric,
                                         help="Metric name or id (default: the experiment's "
                                         "first compare_metrics, else an oracle, else CLIP score)."),
    fmt: CompareFmt = typer.Option(CompareFmt.text, "--format", help="text | json | markdown"),
    n_boot: int = typer.Option(2000, "--n-boot", min=100, max=1_000_000,
                                help="Bootstrap resamples (100 to 1,000,000)."),
    tie_margin: float = typer.Option(0.0, "--tie-margin", min=0.0, help="|difference| counted as a tie."),
    seed: int = typer.Option(0, "--seed", min=0, help="Bootstrap seed (0 or more)."),
    pair_on: Optional[str] = typer.Option(None, "--pair-on", help="Comma list of the image-table columns a "
                                          "pair shares, a factor with or without its 'f.' (default: other "
                                          "factors, checkpoint, seed, stage and "
                                          "the parameters that vary on their own)."),
    where: List[str] = typer.Option([], "--where", help="NAME=LEVEL: only images at that level of a factor "
                                    "or parameter (repeatable), e.g. --where shape=circle."),
) -> None:
    """Paired A/B statistics across shared seeds: mean difference, cluster-bootstrap CI, Wilcoxon, Holm."""
    from . import columns
    from .ledger import Ledger, LedgerError
    from .report import compare as compare_levels, listed_strengths, randomized_params, report_metrics
    from .stats.table import DRAWN
    from .tables import image_table

    if not (run_dir / "ledger.sqlite").is_file():
        fail(f"{run_dir}: not a run folder (no ledger.sqlite)")
    try:
        with Ledger.open(run_dir, readonly=True) as led:
            table = image_table(led)
    except LedgerError as e:
        fail(f"error: {e}")
    try:
        subset = columns.where(table, where)
    except ValueError as e:
        fail(f"error: {e}")
    if where:  # said apart from the result, which --format json or markdown keeps parseable
        typer.echo(f"only images where {', '.join(w.strip() for w in where)}: {len(subset)} of {len(table)}", err=True)
    table = subset
    drawn = randomized_params(run_dir)
    staged = listed_strengths(table, drawn) if factor == "strength" else None
    if staged is not None:  # the main stage's strengths are drawn; the later stages list theirs
        table, drawn = staged, [d for d in drawn if d != "strength"]
    table.attrs[DRAWN] = drawn  # a drawn setting is no factor: a clear error, not a level per draw
    metric = metric or report_metrics(run_dir, None)[0]  # the experiment's first compare_metrics
    try:
        c = compare_levels(table, factor, metric=metric, baseline=baseline, n_boot=n_boot, seed=seed,
                           tie_margin=tie_margin, run_dir=run_dir,
                           pair_on=None if pair_on is None else split_columns(pair_on, table.columns))
    except (ValueError, KeyError) as e:
        fail(f"error: {e}")
    if fmt is CompareFmt.json:
        typer.echo(json.dumps(c.to_dict(), indent=2))
    elif fmt is CompareFmt.markdown:
        typer.echo(c.to_markdown())
    else:
        typer.echo(c.to_text())
