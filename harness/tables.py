"""The per-image table a run's ledger gives, its summaries, and how tables are written.

`image_table` has one row per finished image of the current plan: its
parameters, every factor as `f.<name>` and every score as `m.<metric id>`.
Summaries pool it by variant, factor level or checkpoint. `write_table` writes
any table as CSV, Parquet and Markdown, each atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_atomic
from .columns import dim_name, is_missing, is_number, level_label, sorted_levels
from .ledger import Ledger
from .stats import summarize
from .stats.results import md_text
from .stats.compare import stage_only_factors
from .stats.table import STAGE_ONLY, healthy_mask

IMAGE_COLUMNS = ["key", "image", "stage", "checkpoint", "fingerprint", "mode", "prompt", "negative_prompt", "emphasis", "seed",
                 "draw", "steps", "guidance", "scheduler", "width", "height", "strength", "init_image", "parent_key",
                 "parent_seed", "root_seed", "parent_condition", "watermark_embedded", "healthy", "watermark", "health_flags", "truncated",
                 "batch_size", "slot", "seconds", "device", "dtype_used", "status"]
LEVEL_COLUMNS = ("level", "baseline")  # summary and comparison tables: a factor's levels
NO_LEVEL = "(none)"  # factors.*: the images a factor does not apply to (txt2img ones for strength)
TEXT_LIMITS = "text_limits"  # image_table's attrs: metric id -> BPE tokens its CLIP model reads
NESTING = "nesting"  # image_table's attrs: [outer, inner] factor columns, `inner` inside an option of `outer`
# A variant: the images of one condition, which differ only in their seed (and [randomize] draw, a replicate
# like the seed). An input init image is a condition of its own; a stage image's init image is its parent's,
# one per seed, so it splits nothing (see variant_summary).
VARIANT_KEYS = ["stage", "checkpoint", "mode", "strength", "prompt", "negative_prompt", "init_image",
                "parent_condition"]


def _root_keys(parent_of: dict) -> dict:
    """Stage image key -> the key of the first-stage image its chain of parents starts from."""
    roots: dict = {}
    for key in parent_of:
        chain = []
        while isinstance(parent_of.get(key), str) and key not in roots and len(chain) < 1000:
            chain.append(key)
            key = parent_of[key]
        root = roots.get(key, key)
        roots.update((k, root) for k in chain)
    return roots


def image_table(ledger: Ledger, *, made: bool = True) -> pd.DataFrame:
    """One row per image of the current plan: every factor (`f.*`), parameter and score (`m.<metric id>`).
    With `made=False`, one per image the plan asks for that is not made yet (pending or failed: `status`),
    with the same columns and no scores: where the contact sheet leaves its place."""
    jobs = ledger.jobs_frame()
    planned = ledger.planned_keys()  # None: no plan recorded, every done job counts
    seed_of = dict(zip(jobs["key"], jobs["seed"])) if len(jobs) else {}  # every job: a parent may be unplanned
    root_of = _root_keys(dict(zip(jobs["key"], jobs["parent_key"]))) if len(jobs) else {}
    condition_of = _parent_conditions(jobs)
    if len(jobs):
        jobs = jobs[((jobs["status"] == "done") == made) & (True if planned is None else jobs["key"].isin(planned))].copy()
    if not len(jobs):
        return pd.DataFrame(columns=IMAGE_COLUMNS)
    jobs = _planned_factors_only(jobs)
    jobs["image"] = "images/" + jobs["key"] + ".png"
    if jobs["parent_key"].notna().any():  # later stages: the seed of the image each one starts from
        jobs["parent_seed"] = jobs["parent_key"].map(seed_of).astype("Int64")
        jobs["root_seed"] = jobs["key"].map(root_of).map(seed_of).astype("Int64")  # chains of stages
        jobs["parent_condition"] = jobs["parent_key"].map(condition_of)
    if "meta.draw" in jobs.columns:  # [randomize] draws > 1: which draw of its prompt and seed
        jobs["draw"] = jobs["meta.draw"].astype("Int64")
    jobs["watermark_embedded"] = jobs["watermark"]
    jobs["health_flags"] = jobs.get("h.flags", pd.Series([[]] * len(jobs), index=jobs.index)).map(
        lambda f: ",".join(f) if isinstance(f, list) else "")
    scores = ledger.scores_frame()
    if len(scores):
        wide = scores.pivot_table(index="key", columns="metric", values="value", aggfunc="first", dropna=False)
        wide.columns = [f"m.{c}" for c in wide.columns]
        jobs = jobs.merge(wide, left_on="key", right_index=True, how="left")
    truncated = _truncated_by(scores)
    jobs["truncated"] = [truncated.get(key, "") for key in jobs["key"]]
    healthy = jobs.get("h.ok", pd.Series(True, index=jobs.index)).fillna(True).astype(bool)
    for col in _metric_cols(jobs, "health"):
        healthy &= ~(jobs[col] == 0)
    jobs["healthy"] = healthy
    wm = _metric_cols(jobs, "watermark")
    if wm:
        vals = jobs[wm[0]]
        jobs["watermark"] = [None if (isinstance(v, float) and math.isnan(v)) else bool(v == 1) for v in vals]
    else:
        jobs["watermark"] = None
    order = json.loads(ledger.get_meta("factors") or "[]")  # the template's order
    rank = {f"f.{name}": i for i, name in enumerate(order)}
    factor_cols = sorted((c for c in jobs.columns if c.startswith("f.")), key=lambda c: (rank.get(c, len(rank)), c))
    metric_cols = sorted(c for c in jobs.columns if c.startswith("m."))
    front = [c for c in IMAGE_COLUMNS if c in jobs.columns]
    table = jobs[front + factor_cols + metric_cols].reset_index(drop=True)
    table.attrs[TEXT_LIMITS] = text_limits(scores)
    table.attrs[STAGE_ONLY] = stage_only_factors(table)  # kept by the table's parts (`--where stage=...`)
    table.attrs[NESTING] = [[f"f.{outer}", f"f.{inner}"]
                            for outer, inner in json.loads(ledger.get_meta("factor_nesting") or "[]")]
    return table


def _parent_conditions(jobs: pd.DataFrame):
    """A function: parent key -> how that parent was made, less its factors and seed (`img2img 0.5 from
    house.png`, `txt2img`, a stage's `refine img2img 0.5 of (txt2img)`): the design a stage image inherits,
    which its own init image (the parent's file, one per parent) cannot tell across factor levels."""
    rows = {r["key"]: r for r in jobs.to_dict("records")} if len(jobs) else {}
    memo: dict[str, str | None] = {}

    def condition(key) -> str | None:
        if not isinstance(key, str) or key not in rows:
            return None
        if key not in memo:
            r = rows[key]
            text = r["mode"] + (f" {r['strength']:g}" if r["mode"] == "img2img" else "")
            if isinstance(r.get("meta.draw"), (int, float)) and r["meta.draw"] == r["meta.draw"]:
                text += f" draw {int(r['meta.draw'])}"
            parent = r.get("parent_key")
            if isinstance(parent, str):
                text = f"{r['stage']} {text} of ({condition(parent)})"
            elif isinstance(r.get("init_image"), str):
                text += f" from {Path(r['init_image']).name}"
            memo[key] = text
        return memo[key]
    return condition


def _planned_factors_only(jobs: pd.DataFrame) -> pd.DataFrame:
    """`jobs` without the factor columns none of them has a value in: the factors of jobs outside the
    current plan (an earlier version of the experiment, whose factor was since dropped) are not this run's."""
    unused = [c for c in jobs.columns if c.startswith("f.") and jobs[c].isna().all()]
    return jobs.drop(columns=unused)


def _truncated_by(scores: pd.DataFrame) -> dict[str, str]:
    """key -> JSON list of the metric ids whose text encoder saw a truncated prompt for that image
    (ids hold commas, so a JSON list rather than a comma list)."""
    out: dict[str, list[str]] = {}
    for key, metric, detail in zip(scores["key"], scores["metric"], scores["detail"]):
        if "truncated" in detail and json.loads(detail).get("truncated") is True:
            out.setdefault(key, []).append(metric)
    return {key: json.dumps(sorted(ids)) for key, ids in out.items()}


def text_limits(scores: pd.DataFrame) -> dict[str, int]:
    """metric id -> the BPE tokens its CLIP model reads, for the metrics that truncated some prompt."""
    out: dict[str, int] = {}
    for metric, detail in zip(scores["metric"], scores["detail"]):
        if metric not in out and '"limit"' in detail:
            limit = json.loads(detail).get("limit")
            if isinstance(limit, int):
                out[metric] = limit
    return out


def truncation_note(df: pd.DataFrame, metric_col: str) -> str | None:
    """A warning when some images' prompts were cut to the CLIP text limit for `metric_col`."""
    if "truncated" not in df.columns:
        return None
    metric_id = metric_col[2:]
    n = int(df["truncated"].map(lambda ids: bool(ids) and metric_id in json.loads(ids)).sum())
    if n == 0:
        return None
    limit = df.attrs.get(TEXT_LIMITS, {}).get(metric_id)
    seen = f"it read only their first {limit} tokens" if limit else "it read them only up to its CLIP text limit"
    return (f"{n} image(s) have prompts longer than {metric_id} reads: {seen}, so words after that cannot "
            "change it (column 'truncated')")


def _metric_cols(df: pd.DataFrame, name: str) -> list[str]:
    return [c for c in df.columns if c == f"m.{name}" or c.startswith(f"m.{name}[")]


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("m.")]


def factor_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("f.")]


def short_metric(col: str) -> str:
    return col[2:].split("[")[0] if col.startswith("m.") else col


def _long_summary(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    parts = []
    for m in metric_columns(df):
        if short_metric(m) in ("health", "watermark") or df[m].isna().all():
            continue
        s = summarize(df, by, m)
        s.insert(len(by), "metric", m[2:])
        parts.append(s)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*by, "metric", "n", "mean"])


def _without_drawn(df: pd.DataFrame, drawn: Sequence[str]) -> pd.DataFrame:
    """`df` with the values `[randomize]` drew (the first stage's; later stages list theirs) blanked: a
    drawn setting has no levels, each draw is its own value (`drawn.*` reports its effect)."""
    drawn = [c for c in drawn if c in df.columns]
    if not drawn:
        return df
    first = df["stage"].fillna("main") == "main" if "stage" in df.columns else pd.Series(True, index=df.index)
    return df.assign(**{c: df[c].where(~first) for c in drawn})


def variant_summary(df: pd.DataFrame, drawn: Sequence[str] = ()) -> pd.DataFrame:
    """Each variant (:data:`VARIANT_KEYS`) pooled over its seeds and draws (the settings in `drawn`, which
    `[randomize]` drew). The init image of a stage image is its parent's file (one per seed), so only
    input init images tell variants apart."""
    if "init_image" in df.columns and "parent_key" in df.columns:
        df = df.assign(init_image=df["init_image"].where(df["parent_key"].isna(), None))
    df = _without_drawn(df, drawn)
    by = [c for c in VARIANT_KEYS if c in df.columns and df[c].notna().any()]
    return _long_summary(df, by)


def factor_summary(df: pd.DataFrame, drawn: Sequence[str] = ()) -> pd.DataFrame:
    """Each factor level pooled over everything else (a long table: factor, level, metric, stats). In a
    run with later stages, each stage apart (a `stage` column): a stage's images start from other images,
    so pooling them with the first stage's would mix two populations under one level. A setting in
    `drawn` has levels only where a later stage lists them."""
    df = _without_drawn(df, drawn)
    staged = "stage" in df.columns and df["stage"].nunique(dropna=True) > 1
    varying = [f for f in factor_columns(df) + [c for c in ("checkpoint", "mode", "strength") if c in df.columns]
               if df[f].nunique(dropna=True) >= 2]
    parts = []
    for f in varying:
        rows = df[df[f].notna()] if f in drawn else df  # not a `—` level for the drawn images
        s = _long_summary(rows, ["stage", f] if staged else [f]).rename(columns={f: "level"})
        s.insert(0, "factor", dim_name(f))  # `f.mode` for a prompt factor named like a parameter
        s["level"] = s["level"].map(lambda v: NO_LEVEL if is_missing(v) else (f'"{v}"' if v == NO_LEVEL else str(v)))
        parts.append(s)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["factor", "level", "metric"])


CHECKPOINT_SETTINGS = (("steps", "steps"), ("guidance", "guidance"), ("scheduler", "scheduler"))


def checkpoint_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint: images, the sizes, steps, guidance and schedulers it ran at (a `[checkpoint.X]`
    override shows, and the note names what differs between checkpoints), health, mean of each metric."""
    rows = []
    for ck, g in df.groupby("checkpoint", sort=False):
        row = {"checkpoint": ck, "fingerprint": g["fingerprint"].iloc[0], "images": len(g),
               "sizes": ", ".join(sorted({f"{w}x{h}" for w, h in zip(g["width"], g["height"])}))}
        for column, name in CHECKPOINT_SETTINGS:
            if column in g.columns:
                row[name] = ", ".join(map(str, sorted_levels(g[column].dropna())))
        row["unhealthy"] = int((~g["healthy"]).sum())
        for m in metric_columns(df):
            v = g.loc[healthy_mask(g, m), m].dropna()
            row[f"mean {m[2:]}"] = float(v.mean()) if len(v) else float("nan")
        rows.append(row)
    out = pd.DataFrame(rows)
    differ = [name for name in ("sizes", *(n for _, n in CHECKPOINT_SETTINGS))
              if len(out) > 1 and name in out.columns and out[name].nunique() > 1]
    if differ:
        out["note"] = f"checkpoints ran at different {', '.join(differ)}"
    return out


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A Markdown table, text shown literally. In level columns (`f.*`, `level`, `baseline`) an empty
    level reads `(empty)` and a factor that does not apply to the image `—`, as on the contact sheet."""
    def cell(v, is_level: bool) -> str:
        if is_level:  # as the sheet and `compare` show it: quoted where it reads like a mark, numbers that
            return md_text(level_label(v))  # six digits would merge in full
        if isinstance(v, (float, np.floating)):
            return "" if math.isnan(v) else format(float(v), floatfmt)
        if isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v))
        return "" if is_missing(v) else md_text(v)

    cols = [str(c) for c in df.columns]
    levels = [c.startswith("f.") or c in LEVEL_COLUMNS for c in cols]
    lines = ["| " + " | ".join(md_text(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v, lv) for v, lv in zip(row, levels)) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _one_type(column: pd.Series) -> pd.Series:
    """An object column as one type: flags with gaps (`watermark` where some images have no score) as
    nullable booleans, numbers with gaps as numbers, anything else as text (lists and dicts as JSON)."""
    values = [v for v in column if not is_missing(v)]
    if values and all(isinstance(v, (bool, np.bool_)) for v in values):
        return column.astype("boolean")
    if values and all(is_number(v) for v in values):
        return pd.to_numeric(column)
    return column.map(lambda v: None if is_missing(v) else (json.dumps(v) if isinstance(v, (list, dict)) else str(v)))


def write_table(df: pd.DataFrame, folder: Path, name: str) -> list[Path]:
    """csv + parquet + md, each written to a temp name and renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    flat = df.copy()
    for c in flat.columns:  # parquet needs one type per column
        if flat[c].dtype == object:
            flat[c] = _one_type(flat[c])
    for suffix, write in (("csv", lambda p: flat.to_csv(p, index=False)),
                          ("parquet", lambda p: flat.to_parquet(p, index=False)),
                          ("md", lambda p: p.write_text(markdown_table(flat), encoding="utf-8"))):
        out.append(write_atomic(folder / f"{name}.{suffix}", write))
    return out
