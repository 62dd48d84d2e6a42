"""Plot file names, titles and Markdown tables on hand-made image tables (no model, no ledger)."""

import io
import itertools
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from harness import fonts
from harness.plots import level_figure, metric_label, plot_names, plots_for, strength_figure, undrawn
from harness.tables import markdown_table

LONG = "clip_score[model=" + "x" * 250 + "]"
SHORT = "clip_score[model=tiny]"


def image_table(factors: dict[str, list], metrics: list[str]) -> pd.DataFrame:
    """Every combination of factor levels x two seeds x two img2img strengths, with made-up scores."""
    rng = np.random.default_rng(0)
    rows = []
    for levels in itertools.product(*factors.values(), [1, 2], [0.3, 0.6]):
        *values, seed, strength = levels
        row = {f"f.{name}": v for name, v in zip(factors, values)}
        row.update(seed=seed, checkpoint="tiny", mode="img2img", strength=strength, healthy=True,
                   image=f"images/{len(rows)}.png")
        row.update({f"m.{m}": float(rng.normal(20, 1)) for m in metrics})
        rows.append(row)
    return pd.DataFrame(rows)


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def ylabels(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes]


def flat(text: str) -> str:
    """A wrapped label back on one line (wrapping drops the space at each break)."""
    return " ".join(text.split())


@pytest.fixture(autouse=True)
def no_glyph_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        yield


def test_non_ascii_factors_get_distinct_plot_files(tmp_path):
    table = image_table({"色": ["red", "blue"], "形": ["circle", "square"]}, ["clip_score"])
    paths = plots_for(table, tmp_path)
    names = [p.name for p in paths]
    assert len(names) == len(set(names)) == 3 and all(p.is_file() for p in paths)
    assert all(n.isascii() for n in names)
    assert names == [p.name for p in plots_for(table, tmp_path)]  # stable from run to run
    # the contact sheet captions them with the factor's own name, which the PNG carries
    from harness.sheet import write_sheet

    page = write_sheet(tmp_path, table.assign(key=[f"k{i}" for i in range(len(table))]), plots=paths).read_text()
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    assert {"clip_score by 色", "clip_score by 形", "metrics by img2img strength"} <= set(captions), captions


def test_a_later_stage_gets_its_own_strength_line():
    table = image_table({"color": ["red", "blue"]}, ["clip_score"])
    table = pd.concat([table.assign(stage="main"), table.assign(stage="refine", strength=table["strength"] + 0.1)])
    fig = strength_figure(table, ["clip_score"])
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["main", "refine"]
    assert ax.get_legend().get_title().get_text() == "stage"


def test_a_staged_runs_level_plot_has_a_series_per_stage_not_the_stages_pooled():
    table = image_table({"color": ["red", "blue"]}, ["clip_score"])
    refined = table.assign(stage="refine", **{"m.clip_score": table["m.clip_score"] + 5})
    table = pd.concat([table.assign(stage="main"), refined], ignore_index=True)
    fig = level_figure(table, "color", "clip_score")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["main", "refine"]
    assert "per stage" in flat(titles(fig)[0])
    points = {c.get_label(): c.lines[0].get_ydata() for c in ax.containers}  # one errorbar per stage
    for stage, ys in points.items():
        part = table[table["stage"] == stage]
        assert np.allclose(ys, [part.loc[part["f.color"] == c, "m.clip_score"].mean() for c in ("blue", "red")])
    assert points["refine"][0] - points["main"][0] == pytest.approx(5)
    single = level_figure(table[table["stage"] == "main"], "color", "clip_score")
    assert single.axes[0].get_legend() is None and len(single.axes[0].containers) == 1


def test_characters_no_plot_font_has_are_named_once():
    assert fonts.undrawable(["red 水彩", "é\t水"], ["DejaVu Sans"]) == "彩水"  # DejaVu Sans has é, no CJK
    assert fonts.undrawable(["red", "circle"]) == ""


def test_the_report_names_the_characters_its_plots_cannot_draw(monkeypatch):
    table = image_table({"画材": ["水彩", "oil"]}, ["clip_score"])
    monkeypatch.setattr(fonts, "plot_families", lambda: ("DejaVu Sans",))
    assert undrawn(table) == "彩材水画"
    assert undrawn(image_table({"medium": ["watercolour", "oil"]}, ["clip_score"])) == ""


@pytest.mark.skipif(fonts.undrawable(["水彩"]) != "", reason="no CJK font installed (CI installs fonts-wqy-microhei)")
def test_cjk_levels_are_drawn_with_an_installed_cjk_font(tmp_path):
    table = image_table({"画材": ["水彩", "油彩"]}, ["clip_score"])
    assert undrawn(table) == ""
    paths = plots_for(table, tmp_path)
    assert paths and all(p.is_file() for p in paths)
    fig = level_figure(table, "画材", "clip_score")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Glyph .* missing from")  # a box warns while drawing
        fig.savefig(io.BytesIO(), format="png")
    families = fig.axes[0].get_xticklabels()[0].get_fontfamily()
    assert families[0] == "DejaVu Sans" and len(families) > 1  # DejaVu first, then the CJK fallback


def test_long_metric_ids_give_bounded_distinct_file_names(tmp_path):
    table = image_table({"color": ["red", "blue"]}, [LONG, SHORT])
    paths = plots_for(table, tmp_path)
    names = [p.name for p in paths]
    assert len(names) == len(set(names)) == 3 and all(p.is_file() for p in paths)
    assert all(len(n.encode()) <= 150 and n.isascii() for n in names)
    assert any(n.startswith("clip_score_model_tiny") for n in names)


def test_plot_names_stay_plain_when_nothing_is_lost():
    names = plot_names(["m.clip_score"], ["f.color", "checkpoint"])
    assert names == {("m.clip_score", "f.color"): "clip_score__by__color.png",
                     ("m.clip_score", "checkpoint"): "clip_score__by__checkpoint.png"}


def test_plot_names_differ_by_more_than_case_or_separators():
    factors = ["f.Color", "f.color", "f.a b", "f.a_b", "f.checkpoint", "checkpoint", "f." + "é" * 300]
    names = plot_names(["m.toy_color_match", "m.toy_color_match[want=red]"], factors)
    folded = [n.casefold() for n in names.values()]
    assert len(set(folded)) == len(folded) == 14
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+\.png", n) and len(n) <= 150 for n in names.values())


def test_titles_show_the_full_metric_id():
    table = image_table({"color": ["red", "blue"]}, ["toy_color_match", "toy_color_match[want=red]"])
    fig = level_figure(table, "color", "toy_color_match[want=red]")
    assert flat(titles(fig)[0]) == "toy_color_match[want=red] by color (mean, 95% CI)"
    assert flat(ylabels(fig)[0]) == "toy_color_match[want=red]"
    fig = strength_figure(table, ["toy_color_match", "toy_color_match[want=red]"])
    assert [flat(t) for t in titles(fig)] == ["toy_color_match by img2img strength",
                                              "toy_color_match[want=red] by img2img strength"]


def test_long_metric_ids_are_shortened_but_stay_distinct_in_titles():
    other = LONG.replace("x]", "y]")
    table = image_table({"color": ["red", "blue"]}, [LONG, other])
    first, second = titles(strength_figure(table, [LONG, other]))
    assert first != second and first.startswith("clip_score[model=x")
    assert all(max(map(len, t.split("\n"))) <= 42 and len(t) < 160 for t in (first, second))
    assert metric_label(f"m.{LONG}") != metric_label(f"m.{other}") and len(metric_label(f"m.{LONG}")) <= 120
    assert metric_label(f"m.{SHORT}") == SHORT


def test_markdown_table_shows_html_literally():
    df = pd.DataFrame({"prompt": ['a red <b>cat</b> & "dog"', "x | y\nz"], "<n>": [1.5, float("nan")]})
    text = markdown_table(df)
    assert "<b>" not in text and "<n>" not in text
    assert 'a red &lt;b&gt;cat&lt;/b&gt; &amp; "dog"' in text and "| &lt;n&gt; |" in text
    assert "x \\| y z" in text and text.count("\n") == 4


def test_dollar_signs_in_levels_are_drawn_literally_not_as_mathtext(tmp_path):
    """'$' in a prompt-derived level once started mathtext: garbled labels, or a parse error that stopped
    the report. Every text of a plot is literal."""
    table = image_table({"price": ["price $5 and $10", "$_$", "plain"]}, [SHORT])
    fig = level_figure(table, "price", SHORT)
    fig.savefig(io.BytesIO(), format="png")  # drawing parses the labels: no ParseException
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert {flat(t.rsplit("\n", 1)[0]) for t in ticks} == {"price $5 and $10", "$_$", "plain"}
    assert all(not t._parse_math for t in fig.axes[0].get_xticklabels())
    assert plots_for(table.rename(columns={"f.price": "f.$x$"}), tmp_path)


def test_long_levels_are_wrapped_to_tick_labels_that_stay_inside_the_figure_and_apart():
    """Long levels (whole prompt clauses) once ran into each other and past the figure's edge."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    levels = ["in the style of a very long artist name number " + str(i) for i in range(4)] + ["x" * 80]
    fig = level_figure(image_table({"style": levels}, [SHORT]), "style", SHORT)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    labels = fig.axes[0].get_xticklabels()
    boxes = [t.get_window_extent(renderer) for t in labels]
    width, height = fig.bbox.width, fig.bbox.height
    assert all(b.x0 >= 0 and b.x1 <= width and b.y0 >= 0 and b.y1 <= height for b in boxes)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))  # side by side, no overlap
    texts = [t.get_text() for t in labels]
    assert all(len(line) <= 11 for t in texts for line in t.split("\n"))
    assert texts[-1].split("\n")[-2].endswith("…") and texts[-1].endswith("n=4")


def test_a_drawn_strength_gets_a_point_per_draw_and_no_main_strength_curve(tmp_path):
    """[randomize] strength: each seed's draw is its own strength, so the main stage's strength curve would
    join single draws; its drawn plot has a point per draw (the mean of its prompts) and the fitted line."""
    table = image_table({"color": ["red", "blue"]}, ["clip_score"])
    table = pd.concat([table, table.assign(seed=table["seed"] + 2)], ignore_index=True)  # seeds 1-4
    table["draw"] = (table["strength"] > 0.5).astype(int)  # two draws a seed
    table["strength"] = 0.2 + 0.1 * table["seed"] + 0.01 * table["draw"]  # 8 drawn strengths
    table["m.clip_score"] = 100 * table["strength"]
    table = table.assign(stage="main")
    names = [p.name for p in plots_for(table, tmp_path, drawn=["strength"])]
    assert "drawn__strength.png" in names and "strength.png" not in names
    from harness.plots import drawn_figure

    (ax,) = drawn_figure(table, "strength", ["clip_score"]).axes
    points = ax.collections[0].get_offsets()
    assert sorted(map(tuple, np.round(points, 6))) == [(s / 100, float(s)) for s in (30, 31, 40, 41, 50, 51, 60, 61)]
    assert "8 draws, rho within seeds +0.96" in flat(ax.get_title())  # each seed's two draws, ranked as ties
    from harness.stats.drawn import drawn_effect

    assert drawn_effect(table, "strength", "clip_score")["slope"] == pytest.approx(100)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels.count("fitted slope (within seeds)") == 1 and len(labels) == 5  # and a line per seed
    assert "strength.png" in [p.name for p in plots_for(table, tmp_path)]  # strengths the experiment lists
