"""The HTML contact sheet of a run: ``RUN/index.html``, a static page that opens from disk.

Input is the per-image table built by :mod:`harness.tables` (one row per image,
``f.<factor>`` and ``m.<metric id>`` columns). The page holds:

- grids of thumbnails, rows x columns chosen among the factors and parameters;
  every other dimension that varies splits the grids into sections;
- a detail view per image (full image, prompt, parameters, scores, the image it
  was made from), built in the browser from a JSON blob with ``textContent``;
- the per-variant table (sortable), the paired comparisons and the plots.

Safety: jinja2 autoescapes every value; the JSON blob escapes ``<``, ``>`` and
``&`` so it cannot close its ``<script>`` element; a Content-Security-Policy
allows only the page's own inline script (by hash) and local images, so even a
missed escape could not run code or reach the network. Links are relative, so
the run folder can be moved or zipped.

Thumbnails go to ``RUN/thumbs/<key>.jpg`` (written atomically with their image's
time, skipped while the times match), which keeps pages of 10k images quick to rebuild.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import pandas as pd

from .atomic import write_atomic
from .columns import (dim_name, flag, fmt_score, grid_dims, is_missing, is_number, level_label, metric_labels,
                      numeric_metrics, resolve_dim, resolve_metrics, sort_key, sorted_levels, varies)
from .sheet_tables import comparison_models, table_model
from .stats.table import SEED_LINKS
from .thumbs import THUMB_PX, THUMBS_DIR, ensure_thumbnails, image_file

# Varying parameters split the grids into sections, except these: long text or one value per parent
# image would make a section per image. Images they tell apart share a cell unless chosen as rows/cols.
NOT_SECTIONS = ("init_image", "negative_prompt")
# Columns shown in the detail view's own places, or not worth showing as parameters.
_NOT_PARAMS = {"key", "image", "prompt", "negative_prompt"}
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TEMPLATES = Path(__file__).parent / "templates"


# ------------------------------------------------------------------ page helpers


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not _SAFE_KEY.fullmatch(key):
        raise ValueError(f"table key {key!r} cannot name a thumbnail file; keys are letters, digits, '-' or '_' "
                         "(a job key is 64 hex digits)")
    return key


def _url(rel: str | os.PathLike) -> str:
    return quote(Path(rel).as_posix())


# ------------------------------------------------------------------ page model


def _json_for_script(data: Any) -> str:
    """JSON that is safe inside <script type="application/json">: no '<', '>' or '&' characters."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _plain(v: Any) -> Any:
    """A JSON-friendly version of a table value."""
    if is_missing(v):
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return v if isinstance(v, (str, int, bool)) else str(v)


def _score_bars(table: pd.DataFrame, metrics: list[str]) -> dict[str, tuple[float, float]]:
    out = {}
    for m in metrics:
        values = pd.to_numeric(table[m], errors="coerce")
        lo, hi = values.min(), values.max()
        if pd.notna(lo) and hi > lo:
            out[m] = (float(lo), float(hi))
    return out


def _parent(row: dict) -> str | None:
    p = row.get("parent_key")
    return p if isinstance(p, str) and p else None


def _thumb_box(row: dict, size: int = THUMB_PX) -> tuple[int, int]:
    """Displayed thumbnail size from the image's width/height (square when unknown)."""
    w, h = row.get("width"), row.get("height")
    if not (is_number(w) and is_number(h)) or is_missing(w) or is_missing(h) or w <= 0 or h <= 0:
        return size, size
    scale = size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _records(run_dir: Path, table: pd.DataFrame, metrics: list[str], labels: dict[str, str],
             dims: list[str], within: Sequence[str] = ()) -> tuple[list[dict], dict[str, dict]]:
    """Per image: what the grid cell shows, and the JSON record of the detail view. `dims` name the image
    in its title; `within`, the dims whose levels may tell apart images that share a grid cell."""
    rows = table.to_dict("records")
    keys = {_check_key(r["key"]) for r in rows}
    if len(keys) != len(rows):
        dup = table["key"][table["key"].duplicated()].iloc[0]
        raise ValueError(f"table has {len(rows) - len(keys)} duplicate key(s), e.g. {dup!r}; "
                         "the contact sheet expects one row per image")
    files = {r["key"]: image_file(run_dir, r.get("image"), r["key"]) for r in rows}
    parents = {_parent(r) for r in rows} - {None}
    for p in parents - keys:
        files[_check_key(p)] = run_dir / "images" / f"{p}.png"
    problems = ensure_thumbnails(run_dir, files)

    def rel(path: Path) -> str:
        return _url(os.path.relpath(path, run_dir))

    def thumb(key: str) -> str | None:
        return None if problems.get(key) else _url(f"{THUMBS_DIR}/{key}.jpg")

    children = defaultdict(list)
    for r in rows:
        if _parent(r):
            children[_parent(r)].append(r["key"])
    bars = _score_bars(table, metrics)
    all_metrics = numeric_metrics(table)
    param_cols = [c for c in table.columns
                  if c not in _NOT_PARAMS and not str(c).startswith(("f.", "m."))]
    own_seeds = {r.get("stage") for r in rows if _refines_another_seed(r)}  # stages with seeds of their own
    cells, data = [], {}
    for r in rows:
        key = r["key"]
        parent = _parent(r)
        heading = ", ".join(f"{dim_name(d)}={level_label(r[d])}" for d in dims if not is_missing(r[d]))
        scores = []
        for m in metrics:
            v = r[m]
            frac = None
            if m in bars and not is_missing(v):
                lo, hi = bars[m]
                frac = round((float(v) - lo) / (hi - lo), 3)
            name, bracket, options = labels[m].partition("[")
            scores.append({"name": name, "options": bracket + options, "id": m[2:], "value": fmt_score(v),
                           "frac": frac})
        cell = {"key": key, "thumb": thumb(key), "box": _thumb_box(r), "problem": problems.get(key),
                "problem_short": _short_problem(problems.get(key)), "alt": heading,
                "watermark": flag(r.get("watermark")),
                "unhealthy": "healthy" in r and not flag(r["healthy"]),
                "status": r.get("status"), "scores": scores,
                "parent": parent, "parent_thumb": thumb(parent) if parent else None,
                "from_seed": (int(r["parent_seed"]) if r.get("stage") in own_seeds
                              and not is_missing(r.get("parent_seed")) else None),
                "todo": None, "within": None,
                "levels": {d: level_label(r[d]) for d in within if d in r and not is_missing(r[d])}}
        cells.append(cell)
        data[key] = {
            "key": key, "title": heading, "image": rel(files[key]), "thumb": cell["thumb"],
            "problem": cell["problem"], "prompt": _plain(r.get("prompt")),
            "negative_prompt": _plain(r.get("negative_prompt")),
            "factors": [[dim_name(c), level_label(r[c])] for c in table.columns if str(c).startswith("f.")],
            "params": [[c, level_label(_plain(r[c]))] for c in param_cols if not is_missing(_plain(r[c]))],
            "scores": [[c[2:], fmt_score(r[c]), _plain(r[c])] for c in all_metrics],
            "badges": [b for b, on in (("watermark", cell["watermark"]), ("unhealthy", cell["unhealthy"])) if on],
            "parent": parent, "children": children.get(key, []),
            "parent_image": rel(files[parent]) if parent else None,
            "parent_thumb": cell["parent_thumb"], "parent_problem": problems.get(parent) if parent else None,
        }
    return cells, data


def _short_problem(problem: str | None) -> str | None:
    """The placeholder's text: the reason without its detail (the detail is the placeholder's tooltip)."""
    return problem.split(":", 1)[0] if problem else problem


def _failed_model(failed: Sequence[tuple[str, str]]) -> dict | None:
    """The failed jobs (key, error text) as a table of the page, None when none failed."""
    if not failed:
        return None
    return table_model(pd.DataFrame([(str(k)[:12], str(e)) for k, e in failed], columns=["key", "error"]))


def _splitting(table: pd.DataFrame, dims: list[str], axes: Sequence[str]) -> list[str]:
    """Keep a dim only if it tells images apart that the grid's `axes` (rows, columns) and the dims kept
    before it do not: mode and strength often follow from stage, width from checkpoint."""
    def combinations(columns: list[str]) -> int:
        return len(set(zip(*(table[c].map(level_label) for c in columns))))

    kept: list[str] = []
    base = [a for a in axes if a in table.columns]
    n = combinations(base) if base else 1
    for d in dims:
        m = combinations([*base, *kept, d])
        if m > n:
            kept, n = kept + [d], m
    return kept


def _todo(to_make: pd.DataFrame | None, table: pd.DataFrame, failed: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The rows of `to_make` the page places (not in `table`), each with its cell's text (`todo`: "not made
    yet" or "failed") and tooltip (`todo_title`: the error of a failed one)."""
    if to_make is None or not len(to_make):
        return pd.DataFrame(columns=["key", "todo", "todo_title"])
    todo = to_make[~to_make["key"].isin(set(table["key"]))].copy() if len(table) else to_make.copy()
    errors = dict(failed)
    status = todo["status"] if "status" in todo.columns else pd.Series("pending", index=todo.index)
    todo["todo"] = ["failed" if st == "failed" or k in errors else "not made yet" for k, st in zip(todo["key"], status)]
    todo["todo_title"] = [f"failed: {errors[k]}" if k in errors else ("failed" if t == "failed" else
                          "planned, not made yet (harness run makes it)") for k, t in zip(todo["key"], todo["todo"])]
    return todo


def _grid_sections(table: pd.DataFrame, cells: list[dict], row_dim: str, col_dim: str,
                   section_dims: list[str]) -> list[dict]:
    """Group cells into sections (one per observed combination of section dims), each a row x col grid.
    Cells of images not made yet (`todo`) hold their place and count apart."""
    values = {d: table[d].tolist() for d in (row_dim, col_dim, *section_dims)}
    groups: dict[tuple, list[int]] = defaultdict(list)
    raw: dict[tuple, tuple] = {}
    for i in range(len(cells)):
        label = tuple(level_label(values[d][i]) for d in section_dims)
        groups[label].append(i)
        raw.setdefault(label, tuple(values[d][i] for d in section_dims))
    sections = []
    for label in sorted(groups, key=_section_order(table, section_dims, groups, raw)):
        idx = groups[label]
        rlevels = sorted_levels(values[row_dim][i] for i in idx)
        clevels = sorted_levels(values[col_dim][i] for i in idx)
        cpos = {level_label(v): j for j, v in enumerate(clevels)}
        rpos = {level_label(v): j for j, v in enumerate(rlevels)}
        grid = [[[] for _ in clevels] for _ in rlevels]
        for i in idx:
            grid[rpos[level_label(values[row_dim][i])]][cpos[level_label(values[col_dim][i])]].append(cells[i])
        for items in (items for row in grid for items in row if len(items) > 1):
            _label_within(items)
        to_come = sum(1 for i in idx if cells[i].get("todo"))
        sections.append({
            "heading": [(dim_name(d), lv) for d, lv in zip(section_dims, label)],
            "anchor": f"s{len(sections) + 1}", "count": len(idx) - to_come, "to_come": to_come,
            "cols": [level_label(v) for v in clevels],
            "rows": [(level_label(v), grid[j]) for j, v in enumerate(rlevels)],
        })
    return sections


def _label_within(items: list[dict]) -> None:
    """Images sharing a grid cell (of two init images, two negative prompts: dims that never split the
    grids) each get a caption, `within`, naming their levels of the dims that differ among them."""
    made = [it for it in items if not it.get("todo")]
    dims = dict.fromkeys(d for it in made for d in it["levels"])
    differ = [d for d in dims if len({it["levels"].get(d) for it in made}) > 1]
    for it in made:
        it["within"] = ", ".join(f"{dim_name(d)}={it['levels'].get(d, '—')}" for d in differ)


def _init_paths(frame: pd.DataFrame) -> pd.Series:
    """A frame's input init images: a later stage's image's init image is its parent's file, which its parent
    link shows, so it is left out (None)."""
    paths = frame["init_image"]
    return paths.where(frame["parent_key"].isna(), None) if "parent_key" in frame.columns else paths


def _init_labels(*frames: pd.DataFrame | None) -> list[pd.DataFrame | None]:
    """Each frame with its init images named by file name, or where two share one, by their paths from the
    folder they share (`house.png`, not a path of this machine); one naming across all the frames."""
    given = sorted({p for f in frames if f is not None and "init_image" in f.columns
                    for p in _init_paths(f) if isinstance(p, str) and p})
    names = [Path(p).name for p in given]
    common = os.path.commonpath(given) if len(given) > 1 else ""
    label = {p: n if names.count(n) == 1 else Path(os.path.relpath(p, common)).as_posix()
             for p, n in zip(given, names)}
    return [f if f is None or "init_image" not in f.columns else
            f.assign(init_image=[label.get(p) if isinstance(p, str) else None for p in _init_paths(f)])
            for f in frames]


def _section_order(table: pd.DataFrame, section_dims: list[str], groups: dict[tuple, list[int]],
                   raw: dict[tuple, tuple]):
    """Sort key of a section's label: its images' stage in run order first ("main", then later stages as they
    first appear), whether or not stage is a section dim (a stage's own seeds or strengths may tell the stages
    apart instead), then each dim's level in natural order (stage by run order)."""
    stages = table["stage"].map(level_label).tolist() if "stage" in table.columns else []
    stage_rank = {"main": -1}
    for v in stages:
        stage_rank.setdefault(v, len(stage_rank))

    def order(label: tuple) -> tuple:
        first = min((stage_rank[stages[i]] for i in groups[label]), default=0) if stages else 0
        return (first, *((stage_rank.get(lv, 0), 0.0, (), "") if d == "stage" else sort_key(v)
                         for d, lv, v in zip(section_dims, label, raw[label])))
    return order


def _grids_mix_stages(layout: pd.DataFrame, section_dims: list[str]) -> bool:
    """Whether one grid of these section dims would hold images of two stages (rows and columns that tell
    them apart otherwise leave `stage` out of the sections, and a later stage's row could come first)."""
    if "stage" not in layout.columns or not varies(layout, "stage"):
        return False
    if not section_dims:
        return True
    return bool(layout.groupby([layout[d].map(level_label) for d in section_dims])["stage"].nunique().gt(1).any())


def _refines_another_seed(row: dict) -> bool:
    """Whether a stage image's seed is not its parent's: its stage has seeds of its own, so the image's seed
    does not say which parent it refines, and every image of that stage names its parent's seed ("from seed
    N"), those whose seed happens to equal it too."""
    parent_seed, seed = row.get("parent_seed"), row.get("seed")
    return not (is_missing(parent_seed) or is_missing(seed)) and int(parent_seed) != int(seed)


def _repeats_seed(table: pd.DataFrame, column: str) -> bool:
    """Whether `column` is parent_seed and every stage image has its parent's seed (a stage without seeds
    of its own), or root_seed and every one its parent's: an image's title then names the seed once."""
    other = SEED_LINKS.get(column)
    if other is None or other not in table.columns:
        return False
    staged = table[column].notna()
    return bool((table.loc[staged, column] == table.loc[staged, other]).all())


def _plot_models(run_dir: Path, plots: Sequence[Path]) -> list[dict]:
    out = []
    root = run_dir.resolve()
    for p in plots:
        p = Path(p)
        # a relative path is taken from the working directory (as plots_for returns them); one that is not
        # a file there, from the run folder ("plots/x.png")
        full = p.resolve() if p.is_absolute() or p.is_file() else (run_dir / p).resolve()
        if root not in full.parents:
            raise ValueError(f"plots: {p} is outside the run folder {run_dir}; the page links relatively, "
                             "so write plots under RUN/plots/ (harness.plots.plots_for does)")
        out.append({"src": _url(full.relative_to(root)), "name": _caption(full)})
    return out


def _caption(plot: Path) -> str:
    """What a plot shows, as its PNG says (harness.plots writes the factor and metric names there), else
    its file name."""
    from PIL import Image

    from .plots import CAPTION

    try:
        with Image.open(plot) as image:
            caption = image.info.get(CAPTION)
    except OSError:
        caption = None
    return caption if isinstance(caption, str) and caption else plot.stem.replace("__", " ")


# ------------------------------------------------------------------ the page


def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(_TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def choose_axes(table: pd.DataFrame, rows: str | None = None, cols: str | None = None) -> tuple[str, str]:
    """Grid rows and columns: the ones asked for, else rows = seed and cols = the first varying factor
    (falling back to a varying checkpoint/mode/stage/strength, then to any factor or parameter)."""
    row = resolve_dim(table, rows, "rows") if rows else None
    col = resolve_dim(table, cols, "cols") if cols else None
    if row is not None and row == col:
        raise ValueError(f"rows and cols must be different dimensions, both are {dim_name(row)!r}; "
                         f"choose among: {', '.join(dim_name(c) for c in grid_dims(table))}")
    dims = grid_dims(table)
    factors = [c for c in dims if c.startswith("f.")]
    varying = [c for c in dims if varies(table, c)]
    if col is None:
        order = [*[f for f in factors if f in varying], *varying, *factors, *dims]
        col = next((c for c in order if c not in (row, "seed")), None) or next((c for c in dims if c != row), None)
    if row is None:
        row = next((c for c in ["seed", *varying, *dims] if c in dims and c != col), None)
    if row is None or col is None:
        raise ValueError("the table needs two factor or parameter columns to lay out a grid (e.g. 'seed' and "
                         f"'checkpoint' or 'f.<factor>'); columns: {list(table.columns)}")
    return row, col


def write_sheet(run_dir: Path, table: pd.DataFrame, *, rows: str | None = None, cols: str | None = None,
                metrics: list[str] | None = None, variant_summary: pd.DataFrame | None = None,
                comparisons: list | None = None, plots: list[Path] | None = None, title: str = "",
                not_sections: Sequence[str] = (), missing: int = 0, missing_at_least: bool = False,
                failed: Sequence[tuple[str, str]] = (), to_make: pd.DataFrame | None = None) -> Path:
    """Write ``run_dir/index.html`` (and missing thumbnails) for the per-image `table`; returns its path.

    rows, cols: a factor (``color`` for ``f.color``) or a parameter (seed, checkpoint, mode, stage,
    strength, steps, guidance, scheduler, width, height, draw, init_image, negative_prompt, and for later
    stages' images parent_condition, parent_seed and root_seed: how and from which seed their parent was made,
    and the seed their chain started from); by default
    rows = seed and cols = the first varying factor. Every other varying factor or parameter makes
    one grid per combination. metrics: the scores under each thumbnail (full ids, with or without
    ``m.``, or short names); by default every numeric metric but the health/watermark flags, which
    show as badges. variant_summary: any DataFrame, shown as a sortable table. comparisons:
    :class:`harness.stats.Comparison` objects, DataFrames, (title, DataFrame) pairs or markdown
    text. plots: image files inside `run_dir` (see :func:`harness.plots.plots_for`). not_sections:
    parameters that never split the grids, like init_image and negative_prompt (a parameter drawn at
    random per prompt would make a grid per image; with `strength` there, parent_condition too, as it names
    the parent's strength); their values show in each image's detail view.
    missing: images the plan asks for that are not made yet (failed ones included), at least that many
    with `missing_at_least` (later stages' images to come could not be counted); failed: (key, error
    text) of the failed ones. to_make: rows like `table`'s of the images the plan asks for that are not
    made yet (``harness.tables.image_table(ledger, made=False)``): the grids are laid out for the whole plan,
    so every grid has its planned rows and columns in their places, and such an image's cell says it is not
    made yet or failed. An empty `table` gives a page that says no image is made yet.
    """
    from markupsafe import Markup

    run_dir = Path(run_dir)
    if "key" not in table.columns:
        raise ValueError(f"table needs a 'key' column (one row per image); columns: {list(table.columns)}")
    table, to_make, variant_summary = _init_labels(table.reset_index(drop=True), to_make, variant_summary)
    if "strength" in not_sections:  # a drawn strength: each parent's condition names its own strength
        not_sections = (*not_sections, "parent_condition")
    todo = _todo(to_make, table, failed)
    layout = pd.concat([table, todo], ignore_index=True) if len(todo) and len(table) else table
    if len(table):
        row_dim, col_dim = choose_axes(layout, rows, cols)
        section_dims = [d for d in grid_dims(layout)
                        if d not in (row_dim, col_dim, *NOT_SECTIONS, *not_sections) and varies(layout, d)]
        section_dims.sort(key=lambda d: d != "stage")  # one pass of an iterated run after the other
        section_dims = _splitting(layout, section_dims, (row_dim, col_dim))
        if "stage" not in (row_dim, col_dim, *section_dims) and _grids_mix_stages(layout, section_dims):
            section_dims = ["stage", *section_dims]  # the first stage's grids first, then the later stages
        shown = resolve_metrics(table, metrics)
    else:  # nothing made yet: the page says so (and lists what failed)
        row_dim, col_dim, section_dims, shown = rows or "seed", cols or "", [], []
    labels = metric_labels(shown)
    # an image's title names what varies (an init image by its file name; a negative prompt is long text)
    named = [d for d in grid_dims(table) if d != "negative_prompt" and varies(table, d) and not _repeats_seed(table, d)]
    within = [d for d in grid_dims(table) if d not in (row_dim, col_dim, *section_dims) and varies(table, d)]
    cells, data = _records(run_dir, table, shown, labels, named, within)
    if len(todo) and len(table):
        cells = cells + [{"key": r["key"], "todo": r["todo"], "todo_title": r["todo_title"]}
                         for r in todo[["key", "todo", "todo_title"]].to_dict("records")]
    sections = _grid_sections(layout, cells, row_dim, col_dim, section_dims) if len(table) else []

    script = (_TEMPLATES / "sheet.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    made = [c for c in cells if not c.get("todo")]
    counts = {"images": len(table), "missing": sum(1 for c in made if c["problem"]),
              "unhealthy": sum(1 for c in made if c["unhealthy"]),
              "watermarked": sum(1 for c in made if c["watermark"]),
              "not_made": max(0, int(missing) - len(failed)), "failed": len(failed),
              "at_least": "at least " if missing_at_least else ""}
    page = _environment().get_template("sheet.html.j2").render(
        title=title or f"{run_dir.resolve().name}: contact sheet", counts=counts,
        row_name=dim_name(row_dim), col_name=dim_name(col_dim),
        section_names=[dim_name(d) for d in section_dims], sections=sections,
        metrics=[(labels[m], m[2:]) for m in shown],
        variants=table_model(variant_summary) if variant_summary is not None and len(variant_summary) else None,
        comparisons=comparison_models(comparisons or [], [c for c in table.columns if str(c).startswith("m.")]),
        failed=_failed_model(failed),
        plots=_plot_models(run_dir, plots or []),
        css=Markup((_TEMPLATES / "sheet.css").read_text(encoding="utf-8")),
        script=Markup(script), script_hash=f"sha256-{digest}",
        data=Markup(_json_for_script(data)), thumb_px=THUMB_PX,
    )
    return write_atomic(run_dir / "index.html", lambda p: p.write_text(page, encoding="utf-8"))
