"""Contact sheet fixes: images of two init images that share a cell are told apart (by file name, never a
path of this machine), metric labels cut to a thumbnail's width keep the options that tell them apart, a
table of 150,000 rows sorts, and grids out of view are not laid out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from browser import Chromium, find_chromium
from harness.sheet import write_sheet
from test_sheet import COLORS, draw, key_of

needs_browser = pytest.mark.skipif(find_chromium() is None, reason="no chromium")
RED, BLUE = "toy_color_match[want=red]", "toy_color_match[want=blue]"


def init_run(run: Path, inits: list[Path]) -> pd.DataFrame:
    """img2img of each init image x 2 colors x 1 seed: the init images share each color's cell."""
    (run / "images").mkdir(parents=True)
    rows = []
    for color, rgb in COLORS.items():
        for init in inits:
            key = key_of(color, init)
            draw(run / "images" / f"{key}.png", rgb, "circle", 1)
            rows.append(dict(key=key, image=f"images/{key}.png", checkpoint="tiny", mode="img2img",
                             prompt=f"a {color} circle", negative_prompt="", seed=1, steps=4, guidance=7.5,
                             scheduler="ddim", width=256, height=192, strength=0.5, init_image=str(init),
                             stage="main", parent_key=None, status="done", healthy=True, watermark=False,
                             **{"f.color": color, f"m.{RED}": float(color == "red"),
                                f"m.{BLUE}": float(color == "blue")}))
    return pd.DataFrame(rows)


def records(page: str) -> dict:
    blob = re.search(r'<script type="application/json" id="sheet-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(blob)


def test_images_of_two_init_images_in_one_cell_each_say_which_by_file_name(tmp_path):
    inits = [tmp_path / "inputs" / "house.png", tmp_path / "inputs" / "star.png"]
    page = write_sheet(tmp_path / "run", init_run(tmp_path / "run", inits)).read_text()
    captions = re.findall(r'<span class="within" title="([^"]*)">', page)
    assert sorted(captions) == ["init_image=house.png"] * 2 + ["init_image=star.png"] * 2
    titles = sorted(r["title"] for r in records(page).values())
    assert titles == ["color=blue, init_image=house.png", "color=blue, init_image=star.png",
                      "color=red, init_image=house.png", "color=red, init_image=star.png"]
    params = [dict(r["params"]) for r in records(page).values()]
    assert sorted(p["init_image"] for p in params) == ["house.png", "house.png", "star.png", "star.png"]
    assert str(tmp_path) not in page  # no path of this machine on a page meant to move


def test_init_images_of_one_file_name_are_named_by_their_paths_from_a_shared_folder(tmp_path):
    inits = [tmp_path / "a" / "house.png", tmp_path / "b" / "house.png", tmp_path / "b" / "star.png"]
    page = write_sheet(tmp_path / "run", init_run(tmp_path / "run", inits), cols="init_image").read_text()
    headers = re.findall(r'<th scope="col" title="init_image=([^"]*)">', page)
    assert headers == ["a/house.png", "b/house.png", "star.png"] * 2  # a grid per color
    assert 'class="within"' not in page  # each init image has its own column: no cell holds two


def test_images_a_cell_holds_alone_have_no_caption(tmp_path):
    page = write_sheet(tmp_path / "run", init_run(tmp_path / "run", [tmp_path / "house.png"])).read_text()
    assert 'class="within"' not in page


@needs_browser
def test_labels_cut_to_a_thumbnail_keep_the_options_that_tell_two_metrics_apart(tmp_path):
    """At the default thumbnail size, `toy_color_match[want=red]` and `[want=blue]` were both cut to
    `toy_color_match[want=…`."""
    inits = [tmp_path / "house.png"]
    page = write_sheet(tmp_path / "run", init_run(tmp_path / "run", inits))
    with Chromium(width=1000, height=800) as browser:
        browser.navigate(page.as_uri())
        shown = browser.evaluate("""Array.from(document.querySelectorAll('figure.item')[0]
            .querySelectorAll('.score .m'), m => {
                const name = m.querySelector('.mn'), opts = m.querySelector('.mo');
                return [name.scrollWidth > name.clientWidth, opts.textContent, opts.scrollWidth <= opts.clientWidth];
            })""")
        assert browser.errors == []
    assert [s[1] for s in shown] == ["[want=red]", "[want=blue]"] or [s[1] for s in shown] == ["[want=blue]",
                                                                                              "[want=red]"]
    assert all(cut and whole for cut, _, whole in shown), shown  # the name gave way, the options did not


@needs_browser
def test_a_table_of_150000_rows_sorts_and_grids_out_of_view_are_not_laid_out(tmp_path):
    run = tmp_path / "run"
    page = write_sheet(run, init_run(run, [tmp_path / "house.png"]),
                       variant_summary=pd.DataFrame({"n": [1, 2, 3]}))
    cells = "Array.from(document.querySelectorAll('#variants tbody tr'), tr => tr.cells[0].textContent)"
    with Chromium(width=1280, height=900) as browser:
        browser.navigate(page.as_uri())
        assert browser.evaluate("getComputedStyle(document.querySelector('.grid-section')).contentVisibility") \
            == "auto"
        browser.evaluate("""(() => {
            const body = document.querySelector('#variants tbody'), row = body.rows[0];
            for (let i = 0; i < 150000; i++) {
                const copy = row.cloneNode(true);
                copy.cells[0].textContent = String((i * 7919) % 150000 + 10);
                copy.cells[0].setAttribute('data-sort', copy.cells[0].textContent);
                body.appendChild(copy);
            }
            return 1;
        })()""")
        browser.click("#variants thead th:nth-child(1) button")
        first = browser.evaluate(f"{cells}.slice(0, 4)")
        direction = browser.evaluate("document.querySelector('#variants thead th').getAttribute('aria-sort')")
        assert browser.errors == []
    assert first == ["1", "2", "3", "10"] and direction == "ascending"


def test_a_markdown_row_of_another_width_is_read_as_github_reads_it():
    from harness.sheet_tables import markdown_blocks

    (block,) = markdown_blocks("| a | b |\n|---|---|\n| 1 | x|y |\n| 2 |\n| 3 | z\\|w |")
    assert block["table"]["head"] == ["a", "b"]
    assert [[c["text"] for c in row] for row in block["table"]["body"]] == [["1", "x"], ["2", ""], ["3", "z|w"]]


def test_numbers_that_agree_to_six_digits_stay_two_levels_on_the_page(tmp_path):
    from harness.columns import level_label

    assert [level_label(v) for v in (7.5, 0.1234567, 0.1234568, 1e-7, 2.0)] == [
        "7.5", "0.1234567", "0.1234568", "1e-07", "2"]
    run = tmp_path / "run"
    table = init_run(run, [tmp_path / "house.png"])
    table = pd.concat([table.assign(guidance=0.1234567),
                       table.assign(guidance=0.1234568, key=table["key"] + "-g2", image=table["image"])])
    for key in table["key"]:
        if not (run / "images" / f"{key}.png").exists():
            (run / "images" / f"{key}.png").write_bytes((run / "images" / f"{key[:-3]}.png").read_bytes())
    table["image"] = "images/" + table["key"] + ".png"
    page = write_sheet(run, table, cols="guidance").read_text()
    headers = re.findall(r'<th scope="col" title="guidance=([^"]*)">', page)
    assert sorted(set(headers)) == ["0.1234567", "0.1234568"]
    assert "<span class=\"within\"" not in page  # no cell holds images of both levels
