"""The HTML contact sheet on a synthetic run folder (real PNGs, no model, no browser)."""

import hashlib
import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from harness.sheet import THUMB_PX, write_sheet
from harness.stats import paired_compare

CLIP = "clip_score[model=tiny,pretrained=tiny]"
EVIL_PROMPT = "<img src=x onerror=alert(1)>"
EVIL_NEGATIVE = '</script><script>window.__pwned = 1</script>"&'
COLORS = {"red": (200, 40, 40), "blue": (40, 70, 200)}
SHAPES = ("circle", "square")
SEEDS = (1, 2, 3)


def key_of(*parts) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def draw(path: Path, rgb, shape: str, seed: int, size=(256, 192)) -> None:
    img = Image.new("RGB", size, (235, 232, 225))
    d = ImageDraw.Draw(img)
    x, y = 40 + 50 * (seed - 1), 50
    box = (x, y, x + 90, y + 90)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=rgb)
    img.save(path)


def make_run(run: Path) -> pd.DataFrame:
    """2 colors x 2 shapes x 3 seeds txt2img, plus one img2img child of the first image."""
    (run / "images").mkdir(parents=True)
    rows = []
    for color, rgb in COLORS.items():
        for shape in SHAPES:
            for seed in SEEDS:
                key = key_of(color, shape, seed)
                draw(run / "images" / f"{key}.png", rgb, shape, seed)
                first = (color, shape, seed) == ("red", "circle", 1)
                rows.append(dict(
                    key=key, image=f"images/{key}.png", checkpoint="tiny", mode="txt2img",
                    prompt=EVIL_PROMPT if first else f"a {color} {shape}",
                    negative_prompt=EVIL_NEGATIVE if first else "", seed=seed, steps=4, guidance=7.5,
                    scheduler="ddim", width=256, height=192, strength=float("nan"), init_image=None,
                    stage="main", parent_key=None, status="done, ok",
                    **{"f.color": color, "f.shape": shape},
                    **{f"m.{CLIP}": 20.0 + seed + (3.0 if color == "red" else 0.0),
                       "m.health": 0.0 if (color, shape, seed) == ("blue", "square", 3) else 1.0,
                       "m.stage": "main"},
                    healthy=(color, shape, seed) != ("blue", "square", 3),
                    watermark=(color, shape, seed) == ("blue", "circle", 2)))
    parent = rows[1]
    child = key_of("child")
    draw(run / "images" / f"{child}.png", (90, 160, 60), "circle", 2)
    rows.append({**parent, "key": child, "image": f"images/{child}.png", "mode": "img2img", "strength": 0.5,
                 "init_image": parent["image"], "stage": "refine", "parent_key": parent["key"],
                 "prompt": "a red circle, refined", f"m.{CLIP}": 30.0})
    table = pd.DataFrame(rows)
    table["status"] = "done"
    return table


@pytest.fixture()
def run(tmp_path):
    folder = tmp_path / "run"
    return folder, make_run(folder)


def thumbs_in(page: str) -> list[str]:
    return re.findall(r'<img class="thumb"[^>]*src="([^"]+)"', page)


def test_one_thumbnail_per_image_and_files_exist(run):
    folder, table = run
    page = write_sheet(folder, table).read_text()
    srcs = thumbs_in(page)
    assert len(srcs) == len(table) == 13
    assert page.count('<figure class="item') == 13
    for key in table["key"]:
        thumb = folder / "thumbs" / f"{key}.jpg"
        assert f"thumbs/{key}.jpg" in srcs and thumb.is_file()
        with Image.open(thumb) as im:
            assert max(im.size) == THUMB_PX and im.format == "JPEG"
    assert 'loading="lazy"' in page


def test_adversarial_text_is_escaped(run):
    folder, table = run
    page = write_sheet(folder, table, title="<b>title</b>").read_text()
    assert "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert "&lt;b&gt;title&lt;/b&gt;" in page
    # The JSON blob cannot close its script element; parsed back it holds the exact prompt.
    blob = re.search(r'<script type="application/json" id="sheet-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in blob and ">" not in blob and "&" not in blob
    records = json.loads(blob)
    first = table.iloc[0]["key"]
    assert records[first]["prompt"] == EVIL_PROMPT and records[first]["negative_prompt"] == EVIL_NEGATIVE
    assert page.count("<script") == 2  # the data blob and the page's own script, nothing injected


def test_alt_and_headings_escape_factor_values_and_names(run):
    folder, table = run
    table = table.rename(columns={"f.shape": 'f.<s onclick="x">'})
    table['f.<s onclick="x">'] = table['f.<s onclick="x">'].map({"circle": "<i>o</i>", "square": "sq"})
    page = write_sheet(folder, table).read_text()
    assert "<i>o</i>" not in page and "&lt;i&gt;o&lt;/i&gt;" in page
    assert '<s onclick="x">' not in page and "&lt;s onclick=&#34;x&#34;&gt;" in page


def test_no_network_urls_in_src_or_href(run):
    folder, table = run
    page = write_sheet(folder, table).read_text()
    urls = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert urls and not [u for u in urls if re.match(r"[a-z][a-z0-9+.-]*:|//", u, re.I)]
    assert "http://" not in page and "https://" not in page


def test_default_layout_is_seed_by_first_factor_with_sections_for_the_rest(run):
    folder, table = run
    page = write_sheet(folder, table).read_text()
    assert "rows <b>seed</b> · columns <b>color</b>" in page
    headings = re.findall(r'<section class="grid-section has-heading" id="s\d+">\s*<h2>(.*?)</h2>', page, re.S)
    text = [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", h)).split()) for h in headings]
    # Stage first, later stages last; mode and strength follow from the stage, so they split nothing.
    assert text == ["stage main shape circle 6 images", "stage main shape square 6 images",
                    "stage refine shape circle 1 image"]
    assert "one grid per <b>stage, shape</b>" in page


def test_chosen_rows_and_cols_and_unknown_names(run):
    folder, table = run
    page = write_sheet(folder, table, rows="shape", cols="color").read_text()
    assert "rows <b>shape</b> · columns <b>color</b>" in page and "one grid per <b>" in page
    assert "rows <b>color</b> · columns <b>shape</b>" in write_sheet(folder, table, rows="color").read_text()
    with pytest.raises(ValueError, match=r"rows='colour'.*color, shape"):
        write_sheet(folder, table, rows="colour")
    with pytest.raises(ValueError, match="must be different"):
        write_sheet(folder, table, rows="color", cols="f.color")


def test_scores_use_short_names_and_badges_mark_cells(run):
    folder, table = run
    page = write_sheet(folder, table).read_text()
    assert f'title="{CLIP}"><span class="m"><span class="mn">clip_score</span></span><span class="v">21</span>' in page
    assert page.count('<span class="badge wm"') == 1
    assert page.count('<span class="badge bad"') == 1
    assert "m.stage" not in page and ">stage</span><span" not in page  # text m.* columns are not scores
    with pytest.raises(ValueError, match="clip_scor.*clip_score"):
        write_sheet(folder, table, metrics=["clip_scor"])


def test_scores_of_metrics_sharing_a_short_name_are_labelled_by_what_tells_them_apart(run):
    """Two CLIP scores of one model, one against a probe text: the labels under the thumbnails differ in
    their first characters (a cell cuts them to its width), the full ids stay in the tooltips."""
    folder, table = run
    probe = 'clip_score[model=tiny,pretrained=tiny,text="a red, round thing"]'
    page = write_sheet(folder, table.assign(**{f"m.{probe}": 1.5})).read_text()
    assert f'title="{CLIP}"><span class="m"><span class="mn">clip_score</span></span>' in page
    quoted = probe.replace('"', "&#34;")
    assert f'title="{quoted}"><span class="m"><span class="mn">clip_score</span><span class="mo">[text=&#34;a red, round thing&#34;]</span></span>' in page


def test_child_cell_shows_its_parent(run):
    folder, table = run
    page = write_sheet(folder, table).read_text()
    child, parent = table.iloc[-1]["key"], table.iloc[-1]["parent_key"]
    assert page.count('class="from"') == 1
    assert f'data-open="{parent}"' in page and f'src="thumbs/{parent}.jpg" alt="source image"' in page
    records = json.loads(re.search(r'id="sheet-data">(.*?)</script>', page, re.S).group(1))
    assert records[child]["parent"] == parent and records[parent]["children"] == [child]


def test_missing_image_gets_a_placeholder(run):
    folder, table = run
    (folder / table.iloc[2]["image"]).unlink()
    page = write_sheet(folder, table).read_text()
    assert len(thumbs_in(page)) == 12 and page.count('class="open placeholder"') == 1


def test_rerun_keeps_fresh_thumbnails_and_remakes_stale_ones(run):
    folder, table = run
    write_sheet(folder, table)
    thumbs = sorted((folder / "thumbs").glob("*.jpg"))
    before = {p: p.stat().st_mtime_ns for p in thumbs}
    stale_image = folder / table.iloc[0]["image"]
    ns = before[folder / "thumbs" / f"{table.iloc[0]['key']}.jpg"] + 10**9
    import os
    os.utime(stale_image, ns=(ns, ns))
    write_sheet(folder, table)
    changed = [p.stem for p in thumbs if p.stat().st_mtime_ns != before[p]]
    assert changed == [table.iloc[0]["key"]]
    assert not [p for p in (folder / "thumbs").iterdir() if p.name.startswith(".")]
    # an image put back from a copy with an older time (cp -p, rsync -a, a backup) gets a new thumbnail
    other = folder / table.iloc[1]["image"]
    Image.new("RGB", (8, 8), (255, 0, 0)).save(other)
    os.utime(other, ns=(10**18, 10**18))
    write_sheet(folder, table)
    with Image.open(folder / "thumbs" / f"{table.iloc[1]['key']}.jpg") as im:
        assert im.convert("RGB").getpixel((0, 0))[0] > 240 and im.convert("RGB").getpixel((0, 0))[1] < 15
    # an edited plan shows fewer images: their thumbnails go, and a temp file a killed report left too
    (folder / "thumbs" / ".x.jpg.tmp-1-abcd").write_bytes(b"half")
    kept = table[table["f.color"] == "red"]
    write_sheet(folder, kept)
    parent_of_child = set(kept["parent_key"].dropna())
    assert {p.stem for p in (folder / "thumbs").iterdir()} == set(kept["key"]) | parent_of_child


def test_variant_table_comparisons_and_plots_are_rendered(run):
    folder, table = run
    main = table[table["stage"] == "main"]
    variants = main.groupby(["f.color", "f.shape"], as_index=False)[f"m.{CLIP}"].mean()
    comparison = paired_compare(main, factor="color", metric=CLIP, rng=np.random.default_rng(0), n_boot=50)
    (folder / "plots").mkdir()
    Image.new("RGB", (10, 10)).save(folder / "plots" / "clip_score__by__color.png")
    markdown = "**md**\n\n| a | b |\n|---|---|\n| 1 | x \\| y |"
    page = write_sheet(folder, table, variant_summary=variants, comparisons=[comparison, markdown],
                       plots=[folder / "plots" / "clip_score__by__color.png"]).read_text()
    variants_html = page.split('id="variants"')[1].split("</section>")[0]
    assert variants_html.count("<tr>") == 1 + 4 and 'data-type="num"' in variants_html
    assert "clip_score by color, baseline blue" in page and '<td class="num" data-sort="' in page
    assert "<h3>md</h3>" in page and "<td>x | y</td>" in page
    assert 'src="plots/clip_score__by__color.png"' in page
    with pytest.raises(ValueError, match="outside the run folder"):
        write_sheet(folder, table, plots=[folder.parent / "elsewhere.png"])


# ---------------------------------------------------------------- plots


def test_plots_for_draws_each_factor_and_the_strength_curve(run):
    from harness.plots import plots_for

    folder, table = run
    paths = plots_for(table, folder)
    assert [p.relative_to(folder).as_posix() for p in paths] == [
        "plots/clip_score__by__color.png", "plots/clip_score__by__shape.png", "plots/strength.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 200


def test_every_link_of_the_page_resolves_when_the_run_folder_is_given_relatively(run, monkeypatch):
    """`harness report reports/demo`: plots_for returns paths under the relative run folder; the page
    must link them relative to itself, as it does thumbnails and images."""
    from harness.plots import plots_for

    folder, table = run
    monkeypatch.chdir(folder.parent)
    page = write_sheet(Path("run"), table, plots=plots_for(table, Path("run"))).read_text()
    links = re.findall(r'(?:src|href)="([^"#][^"]*)"', page)
    assert any(link.startswith("plots/") for link in links)
    assert [link for link in links if not (folder / link).is_file()] == []


def test_level_stats_leave_out_unhealthy_and_unscored_images(run):
    from harness.plots import level_stats
    from harness.stats import t_interval

    _, table = run
    table.loc[0, f"m.{CLIP}"] = float("nan")  # red circle seed 1: unscored
    stats = level_stats(table, "color", "clip_score").set_index("level")
    assert stats.loc["blue", "n"] == 5 and stats.loc["red", "n"] == 6  # blue: one unhealthy; red: one NaN
    red = table[(table["f.color"] == "red") & table[f"m.{CLIP}"].notna()][f"m.{CLIP}"]
    assert stats.loc["red", "mean"] == pytest.approx(red.mean())
    assert (stats.loc["red", "ci_low"], stats.loc["red", "ci_high"]) == pytest.approx(t_interval(red))


def test_strength_curves_need_img2img_rows_and_known_metrics(run, tmp_path):
    from harness.plots import metric_by_level, strength_curves

    _, table = run
    assert strength_curves(table[table["mode"] == "txt2img"], ["clip_score"], tmp_path / "s.png") is None
    with pytest.raises(ValueError, match="clip_scor.*metrics in the table: clip_score"):
        metric_by_level(table, "color", "clip_scor", tmp_path / "m.png")
    with pytest.raises(ValueError, match="factor='colour'.*color"):
        metric_by_level(table, "colour", "clip_score", tmp_path / "m.png")


SECTIONS = re.compile(r"one grid per <b>([^<]*)</b>")


def test_parameters_drawn_at_random_do_not_split_the_grids(run):
    """[randomize] draws guidance per image: as sections it would make a grid per image."""
    folder, table = run
    table = table.assign(guidance=[5.0 + 0.1 * i for i in range(len(table))])
    assert SECTIONS.search(write_sheet(folder, table).read_text()).group(1) == "stage, shape"
    page = write_sheet(folder, table, not_sections=["guidance"]).read_text()
    assert SECTIONS.search(page).group(1) == "stage, shape"
    data = json.loads(re.search(r'<script type="application/json" id="sheet-data">(.*?)</script>', page).group(1))
    assert any(["guidance", "5.1"] in d["params"] for d in data.values())  # still shown with each image


def test_unreadable_image_placeholder_is_short_and_its_detail_names_no_path(run, monkeypatch):
    folder, table = run
    monkeypatch.chdir(folder.parent)
    key = table.iloc[2]["key"]
    (folder / table.iloc[2]["image"]).write_bytes(b"not a png")
    page = write_sheet(Path(folder.name), table).read_text()
    (button,) = re.findall(r'<button type="button" class="open placeholder"[^>]*>[^<]*</button>', page)
    title = html.unescape(re.search(r'title="([^"]*)"', button).group(1))
    assert button.endswith(">unreadable image</button>")
    assert title.startswith("unreadable image: ") and f"{key}.png" in title and "images/" not in title
    records = json.loads(re.search(r'id="sheet-data">(.*?)</script>', page, re.S).group(1))
    assert records[key]["problem"] == title


def test_truncated_headers_and_heading_chips_carry_their_full_text(run):
    folder, table = run
    table = table.assign(**{"f.shape": table["f.shape"] + " with a very long description"})
    page = write_sheet(folder, table, rows="seed", cols="shape").read_text()
    assert '<th scope="col" title="shape=circle with a very long description">' in page
    assert '<th scope="row" title="seed=1">' in page
    assert '<span class="kv" title="color=red"><span class="k">color</span> red</span>' in page


def test_comparisons_on_metrics_sharing_a_short_name_are_titled_with_their_full_ids(run):
    folder, table = run
    main = table[table["stage"] == "main"].assign(**{"m.toy_color_match": 1.0, "m.toy_color_match[want=red]": 0.5})
    both = [paired_compare(main, factor="color", metric=m, rng=np.random.default_rng(0), n_boot=50)
            for m in ("toy_color_match", "toy_color_match[want=red]")]
    page = write_sheet(folder, table, comparisons=both).read_text()
    titles = [html.unescape(t) for t in re.findall(r"<h3>([^<]*) by color", page)]
    assert titles == ["toy_color_match", "toy_color_match[want=red]"]
    page = write_sheet(folder, table, comparisons=both[1:]).read_text()  # no clash: the short name
    assert re.findall(r"<h3>([^<]*) by color", page) == ["toy_color_match"]
    # the run also holds the plain metric, which means something else: the title tells them apart
    scored = table.assign(**{"m.toy_color_match": 1.0, "m.toy_color_match[want=red]": 0.5})
    page = write_sheet(folder, scored, comparisons=both[1:]).read_text()
    assert [html.unescape(t) for t in re.findall(r"<h3>([^<]*) by color", page)] == ["toy_color_match[want=red]"]


def test_what_follows_the_rows_or_columns_does_not_split_the_grids(run):
    """Two checkpoints at their own sizes, one per colour: with rows = checkpoint, colour and width follow
    the rows, so the checkpoints share each grid instead of each getting grids of its own."""
    folder, table = run
    toy = table["f.color"] == "blue"
    table = table.assign(checkpoint=np.where(toy, "toy", "tiny"), width=np.where(toy, 96, 256))
    page = write_sheet(folder, table, rows="checkpoint", cols="seed").read_text()
    assert SECTIONS.search(page).group(1) == "stage, shape"


def test_levels_sort_naturally_and_no_two_levels_read_alike():
    from harness.columns import level_label, sorted_levels

    assert sorted_levels(["s10", "s2", "", "10", "5", None, 0.5, "S1"]) == [0.5, "5", "10", "", "S1", "s2", "s10", None]
    # levels spelled as numbers (prompt levels are text) by value, signs, decimals and exponents included
    assert sorted_levels(["0.5", "0.25", "-1", "1e-3", "img10", "1.5", "img2", "-0.5", 1]) == [
        "-1", "-0.5", "1e-3", "0.25", "0.5", 1, "1.5", "img2", "img10"]
    labels = [level_label(v) for v in ["", "(empty)", "—", None]]
    assert labels == ["(empty)", '"(empty)"', '"—"', "—"]
    assert len(sorted_levels(["", "(empty)", "—", None])) == 4


def test_comparison_tables_on_the_page_label_the_empty_level_once():
    """The comparison and ranking rows show the artist-less level as (empty), as every other table does;
    quotes are for a level whose own text is "(empty)"."""
    from harness.sheet_tables import comparison_model

    rng = np.random.default_rng(0)
    rows = [{"key": f"{s}-{i}-{a}", "f.subject": f"s{s}", "f.artist": a, "seed": i,
             "m.score": rng.normal(), "healthy": True}
            for s in range(4) for i in range(2) for a in ("", "greg rutkowski", "(empty)")]
    cmp = paired_compare(pd.DataFrame(rows), factor="artist", metric="score", rng=rng, n_boot=100)
    model = comparison_model(cmp)
    comparison, ranking = (table["body"] for table in model["tables"])
    level = lambda body: sorted(row[0]["text"] for row in body)  # noqa: E731
    assert level(comparison) == ['"(empty)"', "greg rutkowski"]
    assert level(ranking) == ['"(empty)"', "(empty)", "greg rutkowski"]
    assert "baseline (empty)" in model["title"]


def test_images_not_made_yet_keep_their_place_so_every_grid_has_the_planned_columns(run):
    """A partial run: blue squares are not made yet (one failed). Laid out from the images made, the blue grid
    would have no square column; laid out for the plan, it keeps it, its cells marked."""
    folder, table = run
    main = table[table["stage"] == "main"]
    later = (main["f.color"] == "blue") & (main["f.shape"] == "square")
    made, to_make = main[~later], main[later].assign(status="pending")
    failed_key = to_make["key"].iloc[0]
    to_make.loc[to_make["key"] == failed_key, "status"] = "failed"
    page = write_sheet(folder, made, rows="seed", cols="shape", to_make=to_make, missing=3,
                       failed=[(failed_key, "CUDA out of memory <boom>")]).read_text()
    headings = re.findall(r'<h2>.*?</h2>', page, re.S)
    assert len(headings) == 2 and "3 images, 3 not made</span>" in headings[0] and "6 images</span>" in headings[1]
    for grid in re.findall(r'<table class="grid">.*?</table>', page, re.S):  # both grids: circle, square
        assert re.findall(r'<th scope="col" title="shape=([^"]*)">', grid) == ["circle", "square"]
    assert page.count('<div class="todo" title="planned, not made yet (harness run makes it)">not made yet</div>') == 2
    assert '<div class="todo is-failed" title="failed: CUDA out of memory &lt;boom&gt;">failed</div>' in page
    assert len(thumbs_in(page)) == len(made)  # a cell to come has no image and opens nothing
    assert f'data-key="{failed_key}"' not in page
