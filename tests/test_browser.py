"""The contact sheet in a real browser: headless Chromium opens index.html from disk (file://).

Run with ``pytest -m browser tests/test_browser.py``; needs Debian's ``chromium`` on PATH
(``apt-get install -y chromium``). A screenshot lands in ``test-artifacts/sheet.png``.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from browser import Chromium, find_chromium
from harness.plots import plots_for
from harness.sheet import write_sheet
from harness.stats import paired_compare
from test_sheet import CLIP, EVIL_NEGATIVE, EVIL_PROMPT, make_run

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TITLE = "browser check: 13 images"
LONG_LEVEL = ("a square drawn in the manner of a long list of artists, trending on artstation, highly detailed, "
              "sharp focus, octane render")
HUGE_LEVEL = " ".join(f"word{i}" for i in range(120))

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None, reason="chromium (or chromium-browser) is not on PATH; "
                                                       "install it with: apt-get install -y chromium"),
]

LOAD_ALL_IMAGES = """(async () => {
  window.scrollTo(0, document.documentElement.scrollHeight);
  const imgs = Array.from(document.querySelectorAll("img[src]"));
  imgs.forEach(img => { img.loading = "eager"; });
  await Promise.all(imgs.map(img => img.decode().catch(() => null)));
  window.scrollTo(0, 0);
  return imgs.filter(img => !(img.naturalWidth > 0)).map(img => img.getAttribute("src"));
})()"""


@pytest.fixture(scope="module")
def sheet(tmp_path_factory):
    run = tmp_path_factory.mktemp("browser") / "run"
    table = make_run(run)
    main = table[table["stage"] == "main"]
    comparison = paired_compare(main, factor="color", metric=CLIP, rng=np.random.default_rng(0), n_boot=100)
    variants = main.groupby(["f.color", "f.shape"], as_index=False)[f"m.{CLIP}"].mean()
    page = write_sheet(run, table, variant_summary=variants, comparisons=[comparison],
                       plots=plots_for(table, run), title=TITLE)
    with Chromium(width=1280, height=900) as browser:
        browser.navigate(page.as_uri())
        yield browser, table


def js(browser, expression):
    return browser.evaluate(expression)


def test_every_image_loads_and_nothing_is_logged(sheet):
    browser, table = sheet
    assert js(browser, "document.querySelectorAll('img.thumb').length") == len(table) == 13
    assert js(browser, LOAD_ALL_IMAGES) == []
    assert js(browser, "document.querySelectorAll('#plots img').length") >= 2
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "sheet.png", full_page=True)
    assert browser.errors == [] and browser.dialogs == []


def test_clicking_a_thumbnail_shows_its_details_as_text(sheet):
    browser, table = sheet
    first = table.iloc[0]["key"]
    browser.click(f'figure.item[data-key="{first}"] button.open')
    assert js(browser, "document.getElementById('detail').open") is True
    assert js(browser, "document.getElementById('d-prompt').textContent") == EVIL_PROMPT
    assert js(browser, "document.getElementById('d-neg').textContent") == EVIL_NEGATIVE
    assert js(browser, "document.getElementById('d-img').getAttribute('src')") == f"images/{first}.png"
    # Shown as text: no element was made from the prompt, no handler ran, no dialog opened.
    assert js(browser, "document.querySelectorAll('img[src=\"x\"], #detail script').length") == 0
    assert js(browser, "typeof window.__pwned") == "undefined"
    assert js(browser, "document.title") == TITLE
    assert browser.dialogs == [] and browser.errors == []
    browser.evaluate("document.getElementById('d-img').decode().then(() => true)")
    browser.screenshot(ARTIFACTS / "sheet-detail.png")
    js(browser, "document.getElementById('detail').close()")


def test_child_detail_shows_the_parent_and_links_back(sheet):
    browser, table = sheet
    child = table.iloc[-1]
    browser.click(f'figure.item[data-key="{child["key"]}"] button.open')
    assert js(browser, "document.getElementById('d-parent').hidden") is False
    assert js(browser, "document.getElementById('d-parent-img').getAttribute('src')") == child["init_image"]
    browser.click("#d-parent-open")
    assert js(browser, "document.getElementById('d-prompt').textContent") == "a red circle"
    children = js(browser, "Array.from(document.querySelectorAll('#d-children [data-open]'), b => b.dataset.open)")
    assert children == [child["key"]]
    js(browser, "document.getElementById('detail').close()")
    assert browser.errors == []


def test_headers_sort_numbers_numerically(sheet):
    browser, _ = sheet
    column = js(browser, f"""Array.from(document.querySelectorAll('#variants thead th'))
                             .findIndex(th => th.textContent.trim() === {json.dumps('m.' + CLIP)})""")
    assert column >= 0
    values = f"""Array.from(document.querySelectorAll('#variants tbody tr'),
                            tr => Number(tr.cells[{column}].dataset.sort))"""
    browser.click(f"#variants thead th:nth-child({column + 1}) button")
    ascending = js(browser, values)
    assert ascending == sorted(ascending) and len(ascending) == 4
    browser.click(f"#variants thead th:nth-child({column + 1}) button")
    assert js(browser, values) == sorted(ascending, reverse=True)
    assert browser.errors == []


def test_text_headers_sort_numbers_by_value_then_text_naturally_and_missing_cells_last(tmp_path):
    """A level column is text (levels come from the prompt): those spelled as numbers still sort by value."""
    import pandas as pd

    run = tmp_path / "run"
    table = make_run(run)
    levels = pd.DataFrame({"level": ["0.5", "s10", None, "0.25", "-1", "0.1", "s2", "0.05"], "n": range(8)})
    page = write_sheet(run, table, variant_summary=levels, title="levels")
    cells = "Array.from(document.querySelectorAll('#variants tbody tr'), tr => tr.cells[0].textContent)"
    with Chromium(width=1280, height=900) as browser:
        browser.navigate(page.as_uri())
        browser.click("#variants thead th:nth-child(1) button")
        ascending = js(browser, cells)
        browser.click("#variants thead th:nth-child(1) button")
        descending = js(browser, cells)
        assert browser.errors == []
    assert ascending == ["-1", "0.05", "0.1", "0.25", "0.5", "s2", "s10", "—"]
    assert descending == ["s10", "s2", "0.5", "0.25", "0.1", "0.05", "-1", "—"]


def test_top_nav_targets_land_below_the_sticky_bar(sheet):
    browser, _ = sheet
    margins = js(browser, """['grids', 'variants', 'comparisons', 'plots'].map(
        id => parseFloat(getComputedStyle(document.getElementById(id)).scrollMarginTop))""")
    bar = js(browser, "document.querySelector('.bar').getBoundingClientRect().height")
    assert all(m >= bar for m in margins), (margins, bar)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """24 seeds as columns, a child whose parent image is gone and an image whose file is missing."""
    import pandas as pd
    from test_sheet import key_of

    run = tmp_path_factory.mktemp("wide") / "run"
    table = make_run(run)
    red = table[(table["stage"] == "main") & (table["f.color"] == "red")]
    copies = [red.assign(key=[key_of(k, i) for k in red["key"]], seed=red["seed"] + 3 * i) for i in range(8)]
    gone = key_of("gone")
    child = table.iloc[[-1]].assign(parent_key=gone, init_image=f"images/{gone}.png")
    lost = red.iloc[[0]].assign(key=key_of("lost"), image="images/lost.png", seed=99)
    wide_table = pd.concat([*copies, child, lost], ignore_index=True)
    page = write_sheet(run, wide_table, rows="shape", cols="seed", title="wide")
    with Chromium(width=1280, height=900) as browser:
        browser.navigate(page.as_uri())
        yield browser, wide_table


def test_a_wide_grid_scrolls_in_its_own_box_and_the_page_does_not(wide):
    browser, _ = wide
    assert js(browser, "document.querySelectorAll('section.grid-section:first-of-type thead th').length") > 20
    assert js(browser, "document.documentElement.scrollWidth <= document.documentElement.clientWidth") is True
    box = "document.querySelector('.grid-wrap')"
    assert js(browser, f"{box}.scrollWidth > {box}.clientWidth") is True
    js(browser, f"{box}.scrollLeft = 5000; window.scrollBy(0, 300)")
    assert js(browser, "document.querySelector('.bar').getBoundingClientRect().left") == 0
    # the column header sits at the top of its box, so no thumbnail shows above it
    gap = js(browser, f"""(() => {{ const b = {box}; b.scrollTop = 200;
        return b.querySelector('thead th').getBoundingClientRect().top - b.getBoundingClientRect().top; }})()""")
    assert 0 <= gap <= 2
    js(browser, "window.scrollTo(0, 0)")


def test_a_long_row_label_wraps_in_a_narrow_header_and_a_very_long_one_is_cut_to_a_few_lines(tmp_path):
    """Two columns leave room, so without a limit the label would take a single line hundreds of pixels
    wide beside the thumbnails; and a level of 120 words would make its row thousands of pixels tall."""
    run = tmp_path / "run"
    table = make_run(run)
    table["f.shape"] = table["f.shape"].replace({"square": LONG_LEVEL, "circle": HUGE_LEVEL})
    page = write_sheet(run, table[table["stage"] == "main"], rows="shape", cols="color", title="long")
    with Chromium(width=1280, height=900) as browser:
        browser.navigate(page.as_uri())
        long, huge = (js(browser, f"""(() => {{
            const th = Array.from(document.querySelectorAll('tbody th')).find(
                th => th.textContent === {json.dumps(level)});
            const label = th.querySelector('.row-label'), row = th.getBoundingClientRect();
            return {{title: th.title, width: row.width, row: row.height, height: label.getBoundingClientRect().height,
                     cut: label.scrollHeight > label.clientHeight}};
            }})()""") for level in (LONG_LEVEL, HUGE_LEVEL))
        thumb = js(browser, """(({width, height}) => ({width, height}))(
            document.querySelector('.item').getBoundingClientRect())""")
        assert browser.errors == []
    assert long["width"] < thumb["width"]  # the thumbnails keep the width
    assert long["height"] > 3 * 16 and not long["cut"]  # wrapped over several lines, nothing cut
    assert huge["cut"] and huge["height"] <= thumb["height"]  # a few lines: the row stays as tall as the others
    assert huge["row"] <= long["row"]
    assert long["title"] == f"shape={LONG_LEVEL}" and huge["title"] == f"shape={HUGE_LEVEL}"  # whole in the tooltip


def test_a_missing_parent_or_image_gets_a_placeholder_and_no_request_or_link(wide):
    browser, table = wide
    child = table[table["stage"] == "refine"].iloc[0]
    browser.click(f'figure.item[data-key="{child["key"]}"] button.open')
    assert js(browser, "document.getElementById('d-parent').hidden") is False
    assert js(browser, "document.getElementById('d-parent-img').hidden") is True
    assert js(browser, "document.getElementById('d-parent-img').hasAttribute('src')") is False
    assert js(browser, "document.getElementById('d-parent-missing').textContent") == "No image: image file missing"
    assert js(browser, "document.getElementById('d-link').hidden") is False
    js(browser, "document.getElementById('detail').close()")
    lost = table[table["seed"] == 99].iloc[0]["key"]
    browser.click(f'figure.item[data-key="{lost}"] button.open')
    assert js(browser, "document.getElementById('d-link').hidden") is True
    assert js(browser, "document.getElementById('d-missing').hidden") is False
    js(browser, "document.getElementById('detail').close()")
    assert js(browser, LOAD_ALL_IMAGES) == []
    assert browser.errors == []


def test_in_a_narrow_window_the_top_bar_wraps_and_what_is_below_follows_its_height(tmp_path):
    """At 700 px the title, counts, links and size slider need two lines: nothing may scroll sideways or
    vanish, and the sticky grid headings and the nav targets sit below the taller bar."""
    run = tmp_path / "run"
    table = make_run(run)
    page = write_sheet(run, table, title="a study with a long enough title: 13 images", missing=7,
                       failed=[("k1", "CUDA out of memory"), ("k2", "CUDA out of memory")])
    with Chromium(width=700, height=800) as browser:
        browser.navigate(page.as_uri())
        got = js(browser, """(() => {
            const bar = document.querySelector('.bar').getBoundingClientRect();
            const size = document.querySelector('.bar .size').getBoundingClientRect();
            return {wide: document.documentElement.scrollWidth, window: document.documentElement.clientWidth,
                    title: document.querySelector('.bar h1').getBoundingClientRect().width, bar: bar.height,
                    size_right: size.right, size_bottom: size.bottom,
                    heading: parseFloat(getComputedStyle(document.querySelector('.grid-section h2')).top),
                    target: parseFloat(getComputedStyle(document.getElementById('grids')).scrollMarginTop)};
            })()""")
        assert browser.errors == []
    assert got["wide"] <= got["window"], got  # no sideways scroll
    assert got["title"] > 100 and got["bar"] > 60, got  # the title shows; the bar took a second line
    assert got["size_right"] <= got["window"] and got["size_bottom"] <= got["bar"], got  # the slider stays in it
    assert 0 <= got["heading"] - got["bar"] < 1 and got["target"] >= got["bar"], got
