"""The per-image table's columns as people read them: level labels and order, factor and metric names.

The table (built by :mod:`harness.tables`) has one row per image, ``f.<factor>``
columns for the prompt's factors, parameter columns and ``m.<metric id>`` scores;
the contact sheet and the plots name and order them the same way through here.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

import pandas as pd

MISSING = "—"
# Runs of text: a number or other characters. A number with one decimal point reads as a decimal (`0.15`)
# unless it is part of a version or date: right after a letter (`v1.10`) or in a dotted chain (`1.10.2`,
# `2024.10.01`), whose parts read as integers (`v1.9` before `v1.10`).
_RUNS = re.compile(r"((?<![^\W\d_])(?<!\.)[0-9]+\.[0-9]+(?![0-9]|\.[0-9])|[0-9]+)|([^0-9]+)")
_WHOLE = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # text spelled as a number: -1, 0.25
# Parameters that may span grid rows or columns, in section order (factors come first). draw: a [randomize]
# draw index; parent_condition and parent_seed: how and from which seed a later stage's parent was made;
# root_seed: the seed of the first-stage image a chain of stages starts from.
GRID_PARAMS = ("checkpoint", "mode", "stage", "parent_condition", "strength", "steps", "guidance", "scheduler",
               "width", "height", "seed", "parent_seed", "root_seed", "draw", "init_image", "negative_prompt")
# Metrics whose meaning the badges already carry; not repeated under every thumbnail.
BADGE_METRICS = ("health", "watermark")


def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT


EMPTY = "(empty)"


def level_label(v: Any) -> str:
    """How a level reads on the page: '' is '(empty)', missing is '—', floats in at most 6 significant
    digits where those give the number back, else in as many as it takes. A text level spelled like one of
    those two marks is shown in quotes, so no two levels read alike."""
    if is_missing(v):
        return MISSING
    if isinstance(v, str):
        if v in (EMPTY, MISSING) or (v.startswith('"') and v.endswith('"') and v.strip('"') in (EMPTY, MISSING)):
            return f'"{v}"'
        return EMPTY if v == "" else v
    if isinstance(v, float) or getattr(getattr(v, "dtype", None), "kind", "") == "f":
        v = float(v)
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        short = format(v, ".6g")
        return short if float(short) == v else repr(v)  # 0.1234567 and 0.1234568 stay two levels
    return str(v)


def one_line(text: str) -> str:
    """`text` with its line breaks written as `\\n` (`\\r`), as a text table shows it."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, (int, float)) or getattr(getattr(v, "dtype", None), "kind", "") in ("i", "u", "f")


def sort_key(v: Any) -> tuple:
    """Numbers numerically, text spelled as a number too (`-1`, `0.25`, `1e-3`: prompt levels are text),
    then other text in natural order (`s2` before `s10`), missing last."""
    if is_missing(v):
        return (2, 0.0, (), "")
    if is_number(v):
        return (0, _exact(v), (), "")
    if _NUMBER.fullmatch(str(v)):
        return (0, _exact(str(v)), (), str(v))
    return (1, 0.0, natural_key(str(v)), str(v))


def _exact(v: Any) -> int | float:
    """A number as Python compares it exactly: whole numbers (seeds reach 2**63) as int, others as float."""
    if isinstance(v, str):
        return int(v) if _WHOLE.fullmatch(v) else float(v)
    return int(v) if getattr(getattr(v, "dtype", None), "kind", "") in ("i", "u") or isinstance(v, int) else float(v)


def natural_key(text: str) -> tuple:
    """`text` as runs of numbers and other characters (compared case-folded as the page's script folds
    them: upper then lower case, so `ı` and `i`, `ς` and `σ` read alike there and here). A number written with a
    decimal point compares as a decimal (`weight 0.15` before `weight 0.4`), whole numbers as integers
    (`s2` before `s10`), and the parts of a version or date as integers (`v1.9` before `v1.10`); the contact
    sheet's script (templates/sheet.js, naturalCompare) reads text alike."""
    return tuple((0, float(number) if "." in number else int(number), "") if number else (1, 0, other.upper().lower())
                 for number, other in _RUNS.findall(text))


def flag(v: Any) -> bool:
    """True only for a real true value (True, numpy True, 1); None/NaN/False are not set."""
    return not is_missing(v) and not isinstance(v, str) and bool(v == 1)


def sorted_levels(values: Iterable[Any]) -> list[Any]:
    """Distinct values, numbers numerically, then text, missing last."""
    seen: dict[str, Any] = {}
    for v in values:
        seen.setdefault(level_label(v), v)
    return sorted(seen.values(), key=sort_key)


def dim_name(column: str) -> str:
    """A factor or parameter column as people read it: a factor without its 'f.', unless a parameter has
    that name (`f.mode` for `{@mode: portrait|landscape}`, the name `--rows` and `--factor` take)."""
    name = column[2:] if column.startswith("f.") else column
    return column if name in GRID_PARAMS else name


def short_metric(column: str) -> str:
    """``m.clip_score[model=...]`` -> ``clip_score``."""
    return column[2:].split("[", 1)[0] if column.startswith("m.") else column


def fmt_score(v: Any) -> str:
    if is_missing(v):
        return MISSING
    v = float(v)
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def grid_dims(table: pd.DataFrame) -> list[str]:
    """Columns that may become grid rows, columns or sections: factors first, then parameters."""
    return [c for c in table.columns if str(c).startswith("f.")] + [c for c in GRID_PARAMS if c in table.columns]


def resolve_dim(table: pd.DataFrame, name: str, what: str) -> str:
    dims = grid_dims(table)
    for column in (name, f"f.{name}"):
        if column in dims:
            return column
    names = ", ".join(dim_name(c) for c in dims) or "(none)"
    raise ValueError(f"{what}={name!r} is not a factor or parameter of this run; choose one of: {names} "
                     "(a factor is named without its 'f.' prefix; write 'f.seed' for a factor called seed)")


def where(table: pd.DataFrame, conditions: Sequence[str]) -> pd.DataFrame:
    """The rows of `table` that hold every `NAME=LEVEL` of `conditions` (a factor, without `f.`, or a
    parameter; the level as tables show it: `(empty)` for the empty one, `0.4` for a strength, `\\n` for a
    line break). A name holding `=` (a factor named after its options) is found at the `=` that ends a name.
    Each condition is checked against every image, and conditions that no image meets together are an
    error that says so (two levels of one factor, or levels never made together)."""
    from .stats.table import matching_levels

    every = table
    for text in conditions:
        column, level = _where_parts(every, text)
        wanted = level.strip() or EMPTY
        values = list(every[column].unique())
        present = [v for v in values if not is_missing(v)]
        found = {level_label(v) for v in matching_levels(present, wanted)}
        if wanted == MISSING and len(present) < len(values):  # the images the factor does not apply to
            found.add(MISSING)
        if not found:
            shown = ", ".join(level_label(v) for v in sorted_levels(every[column].unique())) or "(none)"
            raise ValueError(f"--where {text!r}: {dim_name(column)} has no level {wanted!r} among the images; "
                             f"its levels: {shown}")
        table = table[table[column].map(level_label).isin(found)]
    if len(conditions) > 1 and table.empty and not every.empty:
        given = " ".join(f"--where {c.strip()!r}" for c in conditions)
        raise ValueError(f"{given}: each holds for some images, but no image meets them all (two levels of one "
                         "factor, or levels never made together); an image must meet every --where")
    return table


def _where_parts(table: pd.DataFrame, text: str) -> tuple[str, str]:
    """The column and the level text of one `--where NAME=LEVEL`."""
    ends = [i for i, ch in enumerate(text) if ch == "="]
    if not ends or not text[:ends[0]].strip():
        raise ValueError(f"--where {text!r}: expected NAME=LEVEL, for example shape=circle or strength=0.4")
    first = None
    for i in ends:
        try:
            return resolve_dim(table, text[:i].strip(), "--where"), text[i + 1:]
        except ValueError as exc:
            first = first or exc
    raise first


def varies(table: pd.DataFrame, column: str) -> bool:
    return table[column].nunique(dropna=False) > 1


def numeric_metrics(table: pd.DataFrame) -> list[str]:
    """``m.*`` columns holding numbers (the table may also carry text ``m.*`` job metadata)."""
    return [c for c in table.columns if str(c).startswith("m.") and pd.api.types.is_numeric_dtype(table[c])
            and not pd.api.types.is_bool_dtype(table[c])]


def resolve_metric(table: pd.DataFrame, name: str, what: str = "metric") -> str:
    """A metric column from its full id (with or without 'm.'), the label the contact sheet shows, or its short
    name when unambiguous."""
    available = numeric_metrics(table)
    found = ([c for c in available if c in (name, f"m.{name}")] or label_match(available, name)
             or options_match(available, name) or [c for c in available if short_metric(c) == name])
    if len(found) != 1:
        if found:
            raise ValueError(f"{what} {name!r} is ambiguous; use the full id, one of: "
                             + ", ".join(c[2:] for c in found))
        listing = ", ".join(c[2:] for c in available) or "(none scored)"
        raise ValueError(f"{what} {name!r} is not a scored metric of this run; metrics in the table: {listing}")
    return found[0]


def resolve_metrics(table: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    """The chosen metric columns; by default every numeric one but the health and watermark flags."""
    if metrics is None:
        return [c for c in numeric_metrics(table) if short_metric(c) not in BADGE_METRICS]
    return [resolve_metric(table, name, "metrics:") for name in metrics]


def metric_labels(columns: Sequence[str]) -> dict[str, str]:
    """Short names (before '['); where two share a short name, each with the options that tell it from the
    others (`clip_score` and `clip_score[text=a cat]` for `clip_score[model=tiny]` and
    `clip_score[model=tiny,text=a cat]`), so labels cut to a thumbnail's width still differ."""
    from .metrics.spec import parse_metric_spec, quote_value

    shorts = [short_metric(c) for c in columns]
    labels = {}
    for c, s in zip(columns, shorts):
        try:
            options = [parse_metric_spec(o[2:])[1] for o, t in zip(columns, shorts) if t == s]
            own = parse_metric_spec(c[2:])[1]
        except ValueError:  # not an id the spec reader knows: the whole id
            labels[c] = c[2:] if shorts.count(s) > 1 else s
            continue
        told = {k: v for k, v in own.items()
                if k in QUESTION_OPTIONS or not all(o.get(k) == v for o in options)}
        labels[c] = s + ("[" + ",".join(f"{k}={quote_value(v)}" for k, v in told.items()) + "]" if told else "")
    return labels


# Options that change what a metric asks, not how it computes it: a label always shows them, as
# `toy_style_match[want=greg rutkowski]` (0 where the artist is absent) is another question than
# `toy_style_match` (NaN where the prompt names none).
QUESTION_OPTIONS = ("want", "text")


def label_match(columns: Sequence[str], given: str) -> list[str]:
    """The metric columns whose label (`metric_labels`) is `given`."""
    return [c for c, label in metric_labels(list(columns)).items() if label == given]


def options_match(columns: Sequence[str], given: str) -> list[str]:
    """The metric columns of `given`'s metric that hold every option `given` writes, as written: a label
    with fewer options than the sheet shows (`clip_score[text=a cat]` for the run's one clip_score asking
    that), or a spec naming the run's model (`clip_score:model=tiny`) without the options at their defaults."""
    from .metrics.spec import parse_metric_spec

    try:
        name, wanted = parse_metric_spec(given)
    except ValueError:
        return []
    found = []
    for c in columns:
        try:
            own_name, own = parse_metric_spec(c[2:])
        except ValueError:
            continue
        if own_name == name and all(own.get(k) == v for k, v in wanted.items()):
            found.append(c)
    return found
