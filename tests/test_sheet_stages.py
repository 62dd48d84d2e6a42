"""The contact sheet of later stages (every image of a stage with seeds of its own names its parent's seed;
the first stage's grids come first) and natural order alike in Python and in the page's table sorting
(whole numbers beyond float precision, the empty level, case folding)."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from browser import Chromium, find_chromium
from harness.columns import level_label, sorted_levels
from harness.sheet import write_sheet
from test_sheet import COLORS, draw, key_of

needs_browser = pytest.mark.skipif(find_chromium() is None, reason="no chromium")


def _image(run: Path, *parts, **row) -> dict:
    key = key_of(*parts)
    draw(run / "images" / f"{key}.png", COLORS[row["f.color"]], "circle", 1)
    base = dict(key=key, image=f"images/{key}.png", checkpoint="tiny", prompt=f"a {row['f.color']} fox",
                negative_prompt="", steps=4, guidance=7.5, scheduler="ddim", width=64, height=64,
                init_image=None, status="done", healthy=True, watermark=False)
    return {**base, **row}


def staged_table(run: Path, main_seeds, children) -> pd.DataFrame:
    """Main txt2img images of red and blue at `main_seeds`; `children`: (color, parent seed, own seed) of
    the stage `refine`'s img2img images, each refining the main image of that color and seed."""
    (run / "images").mkdir(parents=True)
    rows, keys = [], {}
    for color in COLORS:
        for seed in main_seeds:
            rows.append(_image(run, color, seed, **{"f.color": color}, seed=seed, mode="txt2img",
                               strength=float("nan"), stage="main", parent_key=None))
            keys[color, seed] = rows[-1]["key"]
    for color, parent_seed, seed in children:
        rows.append(_image(run, color, parent_seed, "refine", seed, **{"f.color": color}, seed=seed,
                           mode="img2img", strength=0.5, stage="refine", parent_key=keys[color, parent_seed],
                           parent_seed=parent_seed, root_seed=parent_seed, parent_condition="txt2img"))
    table = pd.DataFrame(rows)
    for c in ("parent_seed", "root_seed"):
        table[c] = table[c].astype("Int64")
    return table


def records(page: str) -> dict:
    return json.loads(re.search(r'id="sheet-data">(.*?)</script>', page, re.S).group(1))


# later stages


def test_every_image_of_a_stage_with_seeds_of_its_own_says_which_parent_seed_it_refines(tmp_path):
    """Stage seeds [1, 7] refining main seeds [1, 2]: the seed-1 image refined from the seed-1 parent says
    "from seed 1", as its neighbour refined from the seed-2 parent says "from seed 2"."""
    run = tmp_path / "run"
    table = staged_table(run, [1, 2], [(c, p, s) for c in COLORS for p in (1, 2) for s in (1, 7)])
    page = write_sheet(run, table).read_text()
    captions = {k: re.search(r"<span>(from[^<]*)</span>", fig).group(1) for k, fig in re.findall(
        r'<figure class="item[^"]*" data-key="([0-9a-f]+)">(.*?)</figure>', page, re.S) if "<span>from" in fig}
    staged = table[table["stage"] == "refine"]
    assert {captions[k] for k in staged["key"]} == {"from seed 1", "from seed 2"}, captions


def test_a_top_k_stages_images_come_after_the_first_stages(tmp_path):
    """top_k = 1 kept red's seed-5 and blue's seed-6 image; the stage (seeds = [1]) made one image of each.
    No column splits the grids then, and the stage's row 1 would sort above the main images' rows."""
    run = tmp_path / "run"
    table = staged_table(run, [5, 6], [("red", 5, 1), ("blue", 6, 1)])
    page = write_sheet(run, table).read_text()
    order = re.findall(r'<figure class="item[^"]*" data-key="([0-9a-f]+)"', page)
    stage = dict(zip(table["key"], table["stage"]))
    stages = [stage[k] for k in order]
    assert stages == sorted(stages, key=lambda s: s != "main"), stages


# natural order


def test_whole_numbers_beyond_float_precision_sort_by_value():
    """Seeds may be up to 2**63; as floats 2**53 + 1 and 2**53 would tie and keep the order they came in."""
    big = 2 ** 53
    assert sorted_levels([big + 1, big]) == [big, big + 1]
    assert sorted_levels([str(big + 1), str(big), "7"]) == ["7", str(big), str(big + 1)]


def _table_sort(tmp_path, levels: list) -> tuple[list[str], list[str]]:
    """(Python's order, the page's order after a click on the column's header) of the level labels."""
    run = tmp_path / "run"
    table = staged_table(run, [1], [("red", 1, 7)])
    summary = pd.DataFrame({"f.style": levels, "n": range(len(levels))})
    page = write_sheet(run, table, variant_summary=summary)
    cells = "Array.from(document.querySelectorAll('#variants tbody tr'), tr => tr.cells[0].textContent)"
    with Chromium(width=1280, height=900) as browser:
        browser.navigate(page.as_uri())
        browser.click("#variants thead th:nth-child(1) button")
        shown = browser.evaluate(cells)
        assert browser.errors == []
    return [level_label(v) for v in sorted_levels(levels)], shown


@needs_browser
def test_the_empty_level_sorts_in_the_pages_table_where_the_grids_put_it(tmp_path):
    python, page = _table_sort(tmp_path, ["oil", "35mm photo", ""])
    assert python == ["(empty)", "35mm photo", "oil"]
    assert page == python


@needs_browser
@pytest.mark.parametrize("levels", [["kedi", "ılık"],        # Turkish dotless i
                                    ["ας~", "ασa"],          # Greek final sigma
                                    ["一", "ꭰ"]])            # Cherokee small letter
def test_the_pages_table_folds_case_as_python_does(tmp_path, levels):
    python, page = _table_sort(tmp_path, levels)
    assert page == python
