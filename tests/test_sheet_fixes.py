"""Contact sheet and report fixes: stage images told apart by their parent, sections in stage order, a
shard's images to come, decimals in natural order, and a default metric scored NaN throughout."""

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from browser import Chromium, find_chromium
from harness.core import Job, Score
from harness.ledger import Ledger
from harness.report import build_report, compare
from harness.run import run_experiment
from harness.sheet import write_sheet
from harness.stats import paired_compare
from harness.tables import image_table
from test_report import finish
from test_sheet import CLIP, make_run

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

# txt2img and img2img at two strengths, each refined by a stage: three parents per seed and prompt
PARENT_CONDITIONS = """
name = "conditions"
prompt = "a {@color: red|blue} house"
mode = ["txt2img", "img2img"]
strengths = [0.15, 0.4]
init_images = ["house.png"]
seeds = [1, 2]
checkpoints = ["tiny"]
steps = 7
width = 64
height = 64
metrics = ["health"]

[[stages]]
name = "refine"
prompt = "__parent__, {@detail: sharp|soft}"
strengths = [0.5]
"""

# a stage with seeds of its own: seeds 7 and 8 of every main seed's parent
OWN_SEEDS = """
name = "own-seeds"
prompt = "a {@color: red|blue} house"
seeds = [1, 2, 3]
checkpoints = ["tiny"]
steps = 4
width = 64
height = 64
metrics = ["health"]

[[stages]]
name = "refine"
prompt = "__parent__, sharp"
strengths = [0.5, 0.75]
seeds = [7, 8]
"""

SHARDED = OWN_SEEDS.replace('name = "own-seeds"', 'name = "sharded"').replace(
    "{@color: red|blue} house", "{@color: red|blue} {@shape: circle|square}").replace("[1, 2, 3]", "[1, 2]")


def _run(tmp_path_factory, text: str, **options):
    folder = tmp_path_factory.mktemp("fixes")
    shutil.copyfile(Path(__file__).parents[1] / "experiments" / "inputs" / "house.png", folder / "house.png")
    (folder / "exp.toml").write_text(text)
    run_experiment(folder / "exp.toml", out=folder / "run", progress=False, log=lambda m: None, **options)
    return folder / "run"


@pytest.fixture(scope="module")
def conditions_run(tmp_path_factory, one_cpu_thread):
    return _run(tmp_path_factory, PARENT_CONDITIONS)


@pytest.fixture(scope="module")
def own_seeds_run(tmp_path_factory, one_cpu_thread):
    return _run(tmp_path_factory, OWN_SEEDS)


def _page(run, **options) -> str:
    build_report(run, **options)
    return (run / "index.html").read_text()


def _records(page: str) -> dict:
    return json.loads(re.search(r'id="sheet-data">(.*?)</script>', page, re.S).group(1))


def _largest_cell(page: str) -> int:
    return max(cell.count('<figure class="item') for cell in re.findall(r"<td>(.*?)</td>", page, re.S))


SECTIONS = re.compile(r"one grid per <b>([^<]*)</b>")


def _headings(page: str) -> list[str]:
    found = re.findall(r'<section class="grid-section has-heading" id="s\d+">\s*<h2>(.*?)</h2>', page, re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", h)).split()) for h in found]


# ------------------------------------------------------------------ 1. parent condition and parent seed


def test_stage_images_of_parents_made_differently_get_cells_and_titles_of_their_own(conditions_run):
    page = _page(conditions_run)
    assert _largest_cell(page) == 1  # not the txt2img, img2img 0.15 and 0.4 parents' children in one cell
    titles = [r["title"] for r in _records(page).values()]
    assert len(set(titles)) == len(titles) == 36
    assert any("parent_condition=img2img 0.15 from house.png" in t for t in titles)
    assert not any("parent_seed=" in t for t in titles)  # a stage on its parents' seeds: the seed says it once


def test_rows_and_cols_take_parent_condition_and_parent_seed(conditions_run, own_seeds_run):
    page = _page(conditions_run, rows="parent_condition")
    assert "rows <b>parent_condition</b>" in page and _largest_cell(page) == 1
    rows = re.findall(r'<th scope="row" title="parent_condition=([^"]*)">', page)
    assert list(dict.fromkeys(rows)) == ["—", "img2img 0.15 from house.png", "img2img 0.4 from house.png",
                                         "txt2img"]  # the main images' grids first, their rows —
    page = _page(own_seeds_run, rows="parent_seed", cols="seed")
    assert "rows <b>parent_seed</b> · columns <b>seed</b>" in page and _largest_cell(page) == 1


def test_a_stage_with_seeds_of_its_own_splits_its_grids_by_parent_seed(own_seeds_run):
    page = _page(own_seeds_run)
    assert _largest_cell(page) == 1  # seeds 7 and 8 of each of the three parents' seeds
    titles = [r["title"] for r in _records(page).values()]
    assert len(set(titles)) == len(titles) == 30
    assert any(t.endswith("seed=7, parent_seed=3") for t in titles)


def test_parent_conditions_that_name_a_drawn_strength_split_no_grid_but_still_title_their_images(tmp_path):
    """Under a [randomize]d strength each parent's condition names its own strength: a grid per parent would
    hold one image, so parent_condition follows strength out of the sections, as write_sheet's
    not_sections asks (harness report passes the drawn parameters)."""
    from test_sheet import key_of

    run = tmp_path / "run"
    table = make_run(run)
    twin = {**table.iloc[-1].to_dict(), "key": key_of("twin")}
    table = pd.concat([table, pd.DataFrame([twin])], ignore_index=True)
    table["parent_condition"] = [None] * (len(table) - 2) + ["img2img 0.43", "img2img 0.61"]
    assert "parent_condition" in SECTIONS.search(write_sheet(run, table).read_text()).group(1)
    page = write_sheet(run, table, not_sections=("strength",)).read_text()
    assert "parent_condition" not in SECTIONS.search(page).group(1) and _largest_cell(page) == 2
    titles = [_records(page)[k]["title"] for k in table["key"].iloc[-2:]]
    assert ["parent_condition=img2img 0.43" in titles[0], "parent_condition=img2img 0.61" in titles[1]] == [True, True]


# ------------------------------------------------------------------ 2. sections in stage order


def test_main_grids_come_first_when_another_column_tells_the_stages_apart(own_seeds_run):
    """The stage's own seeds tell its images from the main ones, so stage splits no grid; the main images'
    grid (strength —) still comes before the stage's (strength 0.5 and 0.75)."""
    headings = _headings(_page(own_seeds_run))
    assert not any(h.startswith("stage") for h in headings)
    assert headings[0].startswith("strength —") and headings[1].startswith("strength 0.5")


# ------------------------------------------------------------------ 3. a shard's stage images to come


def test_a_shards_report_counts_the_stage_images_of_the_other_shards_parents(tmp_path_factory):
    run = _run(tmp_path_factory, SHARDED, shard=(0, 2))
    r = build_report(run)
    with Ledger.open(run, readonly=True) as led:
        main = led.plan_keys("main")
        own = {j.key for j in led.all_jobs(status="done") if j.meta["stage"] == "main"}
    total = len(main) * (1 + 4)  # each main image has 2 seeds x 2 strengths of stage images
    assert 0 < len(own) < len(main) and r.images == 5 * len(own)
    assert (r.missing, r.missing_at_least) == (total - r.images, False)
    assert f">{total - r.images} planned not made yet<" in (run / "index.html").read_text()
    (run / "experiment.toml").write_text("not = [toml")  # the stages cannot be counted: a lower bound
    r = build_report(run)
    assert (r.missing, r.missing_at_least) == (len(main) - len(own), True)
    page = (run / "index.html").read_text()
    assert f">at least {len(main) - len(own)} planned not made yet<" in page
    assert f"at least {len(main) - len(own)} are not made yet" in page


# ------------------------------------------------------------------ 4. decimals in natural order

# versions and dates read their parts as integers: v1.9 before v1.10, September before October
DECIMAL_LEVELS = ["weight 0.4", "weight 10", "weight 0.15", "s10", None, "weight 2", "S3", "s2", "v1.10.2", "v1.10",
                  "v1.9", "2024.10.01", "2024.9.30", "v²1.10", "v²1.9", "Ⅻ1.5", "Ⅻ1.25"]
DECIMAL_ORDER = ["2024.9.30", "2024.10.01", "s2", "S3", "s10", "v1.9", "v1.10", "v1.10.2", "v²1.9", "v²1.10",
                 "weight 0.15",
                 "weight 0.4", "weight 2", "weight 10", "Ⅻ1.5", "Ⅻ1.25", "—"]


def test_levels_with_decimals_sort_by_value_and_whole_numbers_as_integers():
    from harness.columns import level_label, sorted_levels

    assert [level_label(v) for v in sorted_levels(DECIMAL_LEVELS)] == DECIMAL_ORDER
    assert sorted_levels(["img2img 0.4 from a.png", "img2img 0.15 from a.png", "txt2img"]) == [
        "img2img 0.15 from a.png", "img2img 0.4 from a.png", "txt2img"]


def test_a_factor_of_decimal_levels_has_its_smallest_as_baseline_and_first_column(tmp_path):
    run = tmp_path / "run"
    table = make_run(run)
    table = table[table["stage"] == "main"].assign(
        **{"f.color": lambda t: t["f.color"].map({"red": "weight 0.4", "blue": "weight 0.15"})})
    comparison = paired_compare(table, factor="color", metric=CLIP, rng=np.random.default_rng(0), n_boot=100)
    assert comparison.baseline == "weight 0.15" and [r.level for r in comparison.rows] == ["weight 0.4"]
    page = write_sheet(run, table).read_text()
    assert re.findall(r'<th scope="col" title="color=([^"]*)">', page)[:2] == ["weight 0.15", "weight 0.4"]


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None, reason="chromium (or chromium-browser) is not on PATH; "
                                                    "install it with: apt-get install -y chromium")
def test_the_pages_table_sorts_text_as_the_python_side_does(tmp_path):
    run = tmp_path / "run"
    levels = pd.DataFrame({"level": DECIMAL_LEVELS, "n": range(len(DECIMAL_LEVELS))})
    page = write_sheet(run, make_run(run), variant_summary=levels, title="decimals")
    cells = "Array.from(document.querySelectorAll('#variants tbody tr'), tr => tr.cells[0].textContent)"
    with Chromium(width=1280, height=900) as browser:
        browser.navigate(page.as_uri())
        browser.click("#variants thead th:nth-child(1) button")
        ascending = browser.evaluate(cells)
        browser.click("#variants thead th:nth-child(1) button")
        descending = browser.evaluate(cells)
        assert browser.errors == []
    assert ascending == DECIMAL_ORDER
    assert descending == [*reversed(DECIMAL_ORDER[:-1]), "—"]


# ------------------------------------------------------------------ 5. a default metric scored NaN throughout

WANT_RED = "toy_color_match[want=red]"


def test_a_default_metric_with_no_finite_score_is_named_with_its_nan_count_and_reason(tmp_path):
    run = tmp_path / "run"
    jobs = [Job("tiny", "fp", "txt2img", f"a {color} cat", "", seed, 4, 7.5, "ddim", 64, 64,
                factors={"color": color}, meta={"stage": "main"}) for color in ("red", "blue") for seed in (1, 2)]
    with Ledger.open(run) as led:
        finish(led, jobs)
        led.put_scores([Score(j.key, WANT_RED, float("nan"), {"reason": "no color measurable"}) for j in jobs[:3]]
                       + [Score(jobs[3].key, WANT_RED, float("nan"), {"reason": "unreadable image"})]
                       + [Score(j.key, "health", 1.0) for j in jobs])
    r = build_report(run, html=False)
    ((factor, metric, why),) = r.skipped
    assert (factor, metric) == ("f.color", "any metric")
    assert f"{WANT_RED} was scored but has no finite value (NaN for all 4 images; most common reason: " \
           "'no color measurable', 3 images)" in why
    assert "scored only health" not in why and "health is compared only when named" in why
    with Ledger.open(run, readonly=True) as led:
        table = image_table(led)
    with pytest.raises(ValueError, match=re.escape(f"{WANT_RED} was scored but has no finite value")):
        compare(table, "color", run_dir=run)
