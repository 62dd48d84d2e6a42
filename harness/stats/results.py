"""Result records of a paired comparison: one :class:`LevelResult` per non-baseline level, one
:class:`RankResult` per level when there are three or more, and the :class:`Comparison` that holds
them with its settings and renders itself as a DataFrame, a JSON-ready dict, markdown or plain text
(with the small cell formatters those renderings share).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..columns import level_label, one_line


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
            rhead = ["rank", "level", "mean", f"{conf} CI", f"rank {conf} CI", "blocks", "clusters"]
            rbody = [[_num(r.rank, "g"), _label(r.level), _num(r.mean), _ci(r.ci_low, r.ci_high),
                      f"{r.rank_ci_low:g}-{r.rank_ci_high:g}", str(r.n_blocks), str(r.n_clusters)]
                     for r in self.ranking]
            tables.append((rhead, rbody))
        return tables

    def _footer(self) -> list[str]:
        ex = self.n_excluded
        no_level = f", {ex['no_level']} without a level of the factor" if ex.get("no_level") else ""
        no_apply = (f", {ex['not_applicable']} the metric does not apply to (no init or parent image)"
                    if ex.get("not_applicable") else "")
        lines = [f"Excluded rows: {ex.get('unhealthy', 0)} unhealthy, {ex.get('unscored', 0)} unscored, "
                 f"{ex.get('unpaired', 0)} unpaired{no_level}{no_apply}.", f"Method: {self.method}"]
        return lines + [f"Note: {n}" for n in self.notes]

    def _title(self) -> str:
        return (f"{self.metric} by {self.factor}, baseline {_label(self.baseline)} "
                f"({'higher' if self.higher_is_better else 'lower'} is better; pairs share {', '.join(self.pair_on)})")

    def to_markdown(self) -> str:
        out = [f"**{md_text(self._title(), cell=False)}**", ""]
        for head, body in self._tables():
            out.append("| " + " | ".join(md_text(h) for h in head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in body]
            out.append("")
        return "\n".join(out + [md_text(line, cell=False) for line in self._footer()]) + "\n"

    def to_text(self) -> str:
        out = [one_line(self._title()), ""]
        for head, body in self._tables():
            head, body = _one_line(head), [_one_line(row) for row in body]  # a level holding a line break
            widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
            fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
            out += [fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in body), ""]
        return "\n".join(out + self._footer()) + "\n"


def _label(level: Any) -> str:
    return level_label(level)


def _one_line(cells: list[str]) -> list[str]:
    """Text-table cells with their line breaks written as `\\n` (`\\r`), so a row stays one line."""
    return [one_line(c) for c in cells]


def md_text(text: str, cell: bool = True) -> str:
    """`text` as one markdown table cell (or, with `cell=False`, a line of prose), read literally:
    backslashes, `*`, backticks and `_` that could start or end emphasis (not the one inside
    `clip_score`) escaped, line breaks as spaces. A cell also escapes bars and every HTML special
    character; a line escapes only what could start a tag or an entity, so `|diff| <= 0` stays readable."""
    s = re.sub(r"([\\`*])", r"\\\1", str(text))
    s = re.sub(r"(?<!\w)_|_(?!\w)", r"\\_", s)
    if cell:
        s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    else:
        s = re.sub(r"&(?=#|\w+;)", "&amp;", s)
        s = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", s)
    return s.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


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
