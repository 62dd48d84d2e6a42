"""The contact sheet's tables as page models: a DataFrame (sortable cells), a paired comparison
(harness.stats) with its ranking and notes, and markdown text with pipe tables."""

from __future__ import annotations

import re
from typing import Any, Iterable

import pandas as pd

from .columns import dim_name, is_missing, level_label, short_metric


def is_level_column(column: Any) -> bool:
    """Whether a table column holds factor levels, which read as the tables show them ('' is '(empty)'): a
    comparison's level and baseline, a prompt factor (`f.*`), a design or parameter column (checkpoint, mode,
    negative prompt...). Other text (a note, an error, a reason) is shown as it is: empty stays empty."""
    from .stats.table import DESIGN_COLUMNS, PARAM_COLUMNS

    name = str(column)
    return name in ("level", "baseline") or name.startswith("f.") or name in (*DESIGN_COLUMNS, *PARAM_COLUMNS)


def _text_cell(v: Any, level: bool) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return v if isinstance(v, str) and not level else level_label(v)


def table_model(df: pd.DataFrame) -> dict:
    """Header and cells of a DataFrame; numeric cells carry their raw value for sorting. Cells of level
    columns (:func:`is_level_column`) read as level labels, other text as it is."""
    if not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()
    head, body = [str(c) for c in df.columns], []
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    levels = [is_level_column(c) for c in df.columns]
    for row in df.itertuples(index=False):
        cells = []
        for v, num, level in zip(row, numeric, levels):
            if num and not is_missing(v):
                cells.append({"text": f"{float(v):.4g}" if isinstance(v, float) else str(v), "sort": float(v)})
            else:
                cells.append({"text": _text_cell(v, level), "sort": None})
        body.append(cells)
    return {"head": head, "numeric": numeric, "body": body}


def _is_comparison(item: Any) -> bool:
    return hasattr(item, "to_frame") and hasattr(item, "factor")


def _metric_title(metric: str, full: bool) -> str:
    """The metric as a comparison title names it: its short name, or its whole id when `full`."""
    metric = str(metric)
    if full or not metric.startswith("m."):
        return metric.removeprefix("m.")
    return short_metric(metric)


def comparison_models(items: list, metrics: Iterable[str] = ()) -> list[dict]:
    """:func:`comparison_model` of each item; a comparison on a metric that shares its short name with
    another compared one or one of the run's `metrics` (e.g. ``toy_color_match`` and
    ``toy_color_match[want=red]``) is titled with the full metric id."""
    shorts: dict[str, set[str]] = {}
    compared = [str(item.metric) for item in items if _is_comparison(item)]
    for metric in (*compared, *metrics):
        shorts.setdefault(_metric_title(metric, False), set()).add(str(metric))
    return [comparison_model(item, full_metric=_is_comparison(item)
                             and len(shorts[_metric_title(item.metric, False)]) > 1) for item in items]


def comparison_model(item: Any, *, full_metric: bool = False) -> dict:
    """A Comparison (harness.stats), a DataFrame, a (title, DataFrame) pair or markdown text;
    `full_metric`: title a comparison with its metric's whole id rather than its short name."""
    def model(title="", tables=(), notes=(), markdown=(), method=""):
        return {"title": title, "tables": list(tables), "notes": list(notes), "markdown": list(markdown),
                "method": method}

    if isinstance(item, str):
        return model(markdown=markdown_blocks(item))
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], pd.DataFrame):
        return model(str(item[0]), [table_model(item[1])])
    if isinstance(item, pd.DataFrame):
        return model(tables=[table_model(item)])
    if _is_comparison(item):
        tables = [table_model(item.to_frame())]  # table_model labels the levels (once: a label is text too)
        if getattr(item, "ranking", None):
            rank = pd.DataFrame([vars(r) if not hasattr(r, "__dataclass_fields__") else
                                 {f: getattr(r, f) for f in r.__dataclass_fields__} for r in item.ranking])
            tables.append(table_model(rank))
        better = "higher" if getattr(item, "higher_is_better", True) else "lower"
        title = (f"{_metric_title(item.metric, full_metric)} by "
                 f"{dim_name(str(item.factor))}, baseline {level_label(item.baseline)} ({better} is better)")
        ex = getattr(item, "n_excluded", {}) or {}
        notes = [f"pairs share: {', '.join(map(dim_name, getattr(item, 'pair_on', [])))}",
                 f"metric: {str(item.metric).removeprefix('m.')}",
                 "excluded: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in ex.items()),
                 *getattr(item, "notes", [])]
        return model(title, tables, notes, method=getattr(item, "method", ""))
    raise TypeError(f"comparisons: cannot show a {type(item).__name__}; pass harness.stats.Comparison objects, "
                    "DataFrames, (title, DataFrame) pairs or markdown text")


def _md_cells(line: str) -> list[str]:
    """The cells of one markdown table row; ``\\|`` is a literal bar."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def markdown_blocks(text: str) -> list[dict]:
    """Pipe tables become tables, **bold** lines headings, other lines paragraphs."""
    blocks: list[dict] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].strip()) <= set("|-: "):
            head, body = _md_cells(line), []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):  # as GitHub reads a row of another
                cells = _md_cells(lines[i])                                 # width: cut, or padded with ""
                body.append((cells + [""] * len(head))[:len(head)])
                i += 1
            frame = pd.DataFrame(body, columns=head) if body else pd.DataFrame(columns=head)
            blocks.append({"table": table_model(frame), "heading": None, "text": None})
            continue
        if line.startswith("**") and line.endswith("**") and len(line) > 4:
            blocks.append({"table": None, "heading": line[2:-2], "text": None})
        elif line:
            blocks.append({"table": None, "heading": None, "text": line})
        i += 1
    return blocks
