"""Comparison tables show levels as `harness compare` and the sheet do: numbers that six digits would
merge in full in comparisons.md / rankings.md, and a level holding a line break on one row of the text
table."""

import numpy as np
import pandas as pd

from harness.columns import level_label
from harness.report import comparison_tables
from harness.stats import paired_compare
from harness.tables import write_table


def _strength_table():
    rng = np.random.default_rng(3)
    rows = []
    for c in range(4):
        for s in range(3):
            for i, st in enumerate((0.12345, 0.12346, 0.5)):
                rows.append({"key": f"{c}-{s}-{i}", "f.subject": f"s{c}", "checkpoint": "tiny", "seed": s,
                             "mode": "img2img", "strength": st, "m.score": rng.normal() + i, "healthy": True})
    return pd.DataFrame(rows)


def test_markdown_comparison_tables_keep_numeric_levels_apart(tmp_path):
    c = paired_compare(_strength_table(), factor="strength", metric="score", rng=np.random.default_rng(0), n_boot=50)
    assert c.baseline == 0.12345 and [r.level for r in c.rows] == [0.12346, 0.5]
    levels, ranks = comparison_tables([c])
    write_table(levels, tmp_path, "comparisons")
    write_table(ranks, tmp_path, "rankings")
    for name in ("comparisons", "rankings"):
        md = (tmp_path / f"{name}.md").read_text()
        head, _, *rows = md.splitlines()
        cols = [h.strip() for h in head.strip("|").split("|")]
        shown = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
        level_cells = [r[cols.index("level")] for r in shown]
        if "baseline" in cols:  # the row comparing 0.12346 with 0.12345 must not read "0.1235 vs 0.1235"
            level_cells += [shown[0][cols.index("baseline")]]
        # each level as `harness compare` prints it, and distinct
        assert len(set(level_cells)) == len(level_cells), (name, level_cells)
        assert set(level_cells) <= {level_label(v) for v in (0.12345, 0.12346, 0.5)}, (name, level_cells)


def test_text_table_keeps_a_multiline_level_on_one_row():
    rng = np.random.default_rng(1)
    rows = [{"key": f"{c}-{s}-{i}", "f.subject": f"s{c}", "f.x": lv, "checkpoint": "t", "seed": s,
             "m.score": rng.normal() + i, "healthy": True}
            for c in range(3) for s in range(2) for i, lv in enumerate(("", "blue\nsky"))]
    c = paired_compare(pd.DataFrame(rows), factor="x", metric="score", rng=np.random.default_rng(0), n_boot=50)
    lines = c.to_text().splitlines()
    dash = next(i for i, line in enumerate(lines) if line.startswith("-----"))
    row = lines[dash + 1]
    assert row.split()[1:2] == [str(c.rows[0].n_pairs)], lines[dash - 1:dash + 3]  # pairs column on the level's row
    assert "blue\\nsky" in c.to_text() and "blue sky" in c.to_markdown()
