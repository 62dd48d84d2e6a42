"""What a researcher meets running a study from the README: names the tables write can be typed back,
estimates and intervals that stay in range, errors that say what to do."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from pytest import approx as pytest_approx

from harness.core import Job, Score
from harness.ledger import Ledger
from test_report import METRIC, finish

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=ROOT)


def test_a_pair_on_list_copied_from_comparisons_csv_names_factors_with_commas(tmp_path):
    """`{, by greg rutkowski|}` is the factor `, by greg rutkowski|`: its column name holds a comma, and the
    pair_on that comparisons.csv writes can be pasted back into --pair-on."""
    optional = "f., by greg rutkowski|"
    jobs = [Job("tiny", "fp", "txt2img", f"a {color} cat{artist}", "", seed, 4, 7.5, "ddim", 64, 64,
                factors={"red|blue": color, optional[2:]: artist}, meta={"stage": "main"})
            for color in ("red", "blue") for artist in (", by greg rutkowski", "") for seed in (1, 2, 3)]
    run = tmp_path / "run"
    with Ledger.open(run) as led:
        finish(led, jobs)
        led.put_scores([Score(j.key, METRIC, 20.0 + j.seed + (j.factors["red|blue"] == "red")) for j in jobs])
    assert cli("report", str(run), "--no-html").returncode == 0
    rows = pd.read_csv(run / "tables" / "comparisons.csv", keep_default_na=False)
    pair_on = rows.loc[rows["factor"] == "f.red|blue", "pair_on"].iloc[0]
    assert optional in pair_on
    out = cli("compare", str(run), "--factor", "red|blue", "--pair-on", pair_on, "--format", "json", "--n-boot", "100")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert optional in result["pair_on"] and ",".join(result["pair_on"]) == pair_on
    assert [r["n_pairs"] for r in result["rows"]] == [6]
    # a factor named without 'f.', as --factor and --where take it
    bare = cli("compare", str(run), "--factor", optional, "--pair-on", "seed, red|blue", "--format", "json",
               "--n-boot", "100")
    assert bare.returncode == 0, bare.stderr
    assert json.loads(bare.stdout)["pair_on"] == ["seed", "f.red|blue"]
    wrong = cli("compare", str(run), "--factor", "red|blue", "--pair-on", "seed,colour")
    assert wrong.returncode != 0 and "'colour' not a column of the table nor a factor" in wrong.stderr, wrong.stderr


def test_a_local_copy_of_a_built_in_is_priced_as_the_built_in(tiny_ref, tmp_path):
    """A fine-tune saved as a folder has the UNet of the model it came from: `plan` prices its steps as that
    model's (the toy's copy was priced as SD1.5, 10x the time it took)."""
    import shutil

    from harness.checkpoints import resolve
    from harness.experiment import load_experiment
    from harness.plan import make_plan

    shutil.copytree(tiny_ref.source, tmp_path / "my-tiny")
    assert resolve(str(tmp_path / "my-tiny")).family == "tiny"
    seconds = []
    for ck in ("tiny", "my-tiny"):
        (tmp_path / f"{ck}.toml").write_text(f'prompt = "a {{red|blue}} fox"\nseeds = [1, 2]\ncheckpoints = ["{ck}"]\n')
        plan = make_plan(load_experiment(tmp_path / f"{ck}.toml"))
        seconds.append(plan.estimate_seconds("cpu"))
    assert seconds[0] == seconds[1] > 0


def test_a_misspelt_checkpoint_is_offered_the_local_folder_it_resembles(tmp_path):
    import pytest

    from harness.checkpoints import CheckpointError, locate

    (tmp_path / "toy-ft").mkdir()
    (tmp_path / "toy-ft" / "model_index.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint 'toyft' \(did you mean 'toy-ft'\?\)"):
        locate("toyft", base_dir=tmp_path)


def test_intervals_of_rates_and_bounded_scores_stay_in_the_metrics_range():
    """A 0/1 metric gets Wilson's interval, a CLIP score near its scale a t interval cut at it: 9 of 10
    matches gave [0.67, 1.14] before."""
    from harness.plots import level_stats
    from harness.stats import summarize

    clip = "m.clip_score[model=tiny,pretrained=tiny,scale=100,clamp=image]"
    table = pd.DataFrame({"f.style": ["a"] * 10 + ["b"] * 10, "healthy": True,
                          "m.toy_color_match": [1.0] * 9 + [0.0] + [1.0] * 10,
                          clip: [100.0] * 9 + [60.0] + [50.0, 60.0] * 5})
    rates = summarize(table, ["f.style"], "m.toy_color_match").set_index("f.style")
    assert rates.loc["a", ["ci_low", "ci_high"]].tolist() == pytest_approx([0.5958, 0.9821], abs=1e-4)  # Wilson
    assert rates.loc["b", "ci_high"] == 1.0 and 0.7 < rates.loc["b", "ci_low"] < 0.73
    scores = summarize(table, ["f.style"], clip).set_index("f.style")
    assert scores.loc["a", "ci_high"] == 100.0 and scores.loc["a", "ci_low"] < 90  # t: 87 to 105
    plotted = level_stats(table, "style", "toy_color_match").set_index("level")
    assert plotted.loc["a", "ci_high"] == rates.loc["a", "ci_high"]


def test_a_metric_is_found_by_the_label_the_sheet_shows_and_want_is_always_shown():
    from harness.columns import metric_labels, resolve_metric
    from harness.report import _find_metric

    prompt = "m.clip_score[model=toy,pretrained=toy,scale=100,clamp=image]"
    probe = "m.clip_score[model=toy,pretrained=toy,scale=100,clamp=image,text=a red star]"
    oracle = "m.toy_style_match[want=greg rutkowski]"
    table = pd.DataFrame({"key": ["k"], prompt: [30.0], probe: [20.0], oracle: [1.0], "healthy": [True]})
    labels = metric_labels([prompt, probe, oracle])
    assert labels == {prompt: "clip_score", probe: "clip_score[text=a red star]",
                      oracle: "toy_style_match[want=greg rutkowski]"}  # want= asks another question: shown
    assert _find_metric(table, "clip_score") == resolve_metric(table, "clip_score") == prompt
    assert _find_metric(table, "clip_score[text=a red star]") == probe


def test_a_metric_is_found_by_fewer_options_than_its_label_and_a_miss_names_the_runs_instances():
    """The options written pick the one instance that holds them all; options no instance holds are told
    apart from a metric the run never scored, and the defaults that filled the rest are said to be defaults."""
    from harness.columns import resolve_metric
    from harness.report import _find_metric

    base = "m.clip_score[model=toy,pretrained=toy,scale=100,clamp=image"
    plain, red, blue = base + "]", base + ',text="a red circle, by ian mcque"]', base + ",text=a blue square]"
    table = pd.DataFrame({"key": ["k"], plain: [30.0], red: [20.0], blue: [10.0], "healthy": [True]})
    for find in (_find_metric, resolve_metric):
        assert find(table, 'clip_score[text="a red circle, by ian mcque"]') == red
        assert find(table, "clip_score:text=a blue square") == blue
        with pytest.raises(ValueError, match=r"metric 'clip_score\[scale=100\]' is ambiguous; use the full id"):
            find(table, "clip_score[scale=100]")
    with pytest.raises(ValueError) as miss:
        _find_metric(table, "clip_score[clamp=batch_mean]")
    assert str(miss.value).startswith(f"metric 'clip_score[clamp=batch_mean]' is none of this run's clip_score "
                                      f"scores: {plain[2:]}, {red[2:]}, {blue[2:]}. With the options not written "
                                      "at their defaults it is clip_score[model=ViT-L-14,")


def test_a_level_whose_images_all_scored_nan_says_why_and_what_to_compare_on():
    """`toy_style_match` is NaN where the prompt names no artist: an artist-vs-none study pairs nothing, and
    the note says so rather than only "no healthy image has a score"."""
    import numpy as np

    from harness.stats import paired_compare

    df = pd.DataFrame({"f.artist": ["", ", by x"] * 3, "seed": [1, 1, 2, 2, 3, 3], "healthy": True,
                       "key": list("abcdef"), "m.toy_style_match": [np.nan, 1.0] * 3, "stage": "main"})
    (row,) = paired_compare(df, factor="f.artist", metric="m.toy_style_match", rng=np.random.default_rng(0)).rows
    assert row.n_pairs == 0 and row.note.startswith("no complete pairs: no healthy image at (empty) has a score "
                                                    "(all NaN: 3 at (empty); ")
    assert "`want=` or `text=`" in row.note


def test_a_comma_left_outside_an_optional_clause_is_pointed_out(tmp_path):
    """`a red circle, {by x|}` gives `a red circle, `: the arm without the artist carries a stray comma."""
    out = cli("expand", "{photo|35mm photograph} of a red circle, {by greg rutkowski|}")
    assert out.returncode == 0 and out.stdout.splitlines()[1] == "photo of a red circle, "
    assert ("note: 2 of 4 prompts hold a comma with nothing on one side, 2 at the end (e.g. 'photo of a red "
            "circle, '): write it inside the option after it, `a cat{, by greg rutkowski|}`") in out.stderr
    clean = cli("expand", "{photo|35mm photograph} of a red circle{, by greg rutkowski|}")
    assert clean.returncode == 0 and "note" not in clean.stderr
    (tmp_path / "e.toml").write_text('prompt = "a fox, {by greg rutkowski|}"\nseeds = [1]\n')
    plan = cli("plan", str(tmp_path / "e.toml"))
    assert "note: 1 of 2 prompts hold a comma with nothing on one side, 1 at the end (e.g. 'a fox, ')" in plan.stdout


def test_a_stray_comma_is_told_by_where_it_is_and_the_advice_fits_the_place():
    """An optional clause that starts the prompt needs its comma after it, not inside before it; an empty
    option between two commas leaves two in a row; each place gets its own count and fix."""
    out = cli("expand", "{, by greg rutkowski|}")
    assert ("1 of 2 prompts hold a comma with nothing on one side, 1 at the start (e.g. ', by greg rutkowski'): "
            "nothing comes before it; an optional clause written first takes its comma after it, "
            "`{by greg rutkowski, |}a cat`.") in out.stderr
    out = cli("expand", "a cat, {red|}, oil{, by x|}, ")
    assert ("4 of 4 prompts hold a comma with nothing on one side, 4 at the end (e.g. 'a cat, red, oil, by x, '): "
            "write it inside the option after it") in out.stderr  # a prompt is counted once, at its first place
    out = cli("expand", "a cat, {red|}, oil")
    assert ("1 of 2 prompts hold a comma with nothing on one side, 1 with two commas in a row (e.g. 'a cat, , "
            "oil'): an option between them was empty") in out.stderr
    assert cli("expand", "{by greg rutkowski, |}a cat").stderr == ""


def test_a_chain_of_stages_with_seeds_of_their_own_pairs_by_the_seed_it_started_from(tmp_path):
    """main (seeds 1, 2) -> a (seed 7) -> b (seed 8): b's images share seed and parent seed across the main
    seeds, so the comparison failed as ambiguous; the chain's first seed (`root_seed`) tells them apart."""
    from harness.report import build_report

    exp = tmp_path / "c.toml"
    exp.write_text('prompt = "a {@color: red|blue} fox"\nseeds = [1, 2]\ncheckpoints = ["tiny"]\nsteps = 2\n'
                   'width = 64\nheight = 64\nmetrics = ["toy_color_match:want=red"]\n\n'
                   '[[stages]]\nname = "a"\nprompt = "__parent__, sharp"\nstrengths = [0.5]\nseeds = [7]\n\n'
                   '[[stages]]\nname = "b"\nfrom = "a"\nprompt = "__parent__, bright"\nstrengths = [0.5]\n'
                   'seeds = [8]\n')
    from harness.run import run_experiment

    run_experiment(exp, out=tmp_path / "run", progress=False, log=lambda m: None)
    r = build_report(tmp_path / "run")
    images = pd.read_csv(tmp_path / "run" / "tables" / "images.csv")
    page = (tmp_path / "run" / "index.html").read_text()  # each stage cell says which parent seed it refines
    assert page.count("<span>from seed 7</span>") == 4 and page.count("<span>from seed 1</span>") == 2
    b = images[images["stage"] == "b"]
    assert sorted(b["root_seed"]) == [1, 1, 2, 2] and set(b["parent_seed"]) == {7} and set(b["seed"]) == {8}
    assert set(images.loc[images["stage"] == "main", "root_seed"].isna()) == {True}
    (c,) = [c for c in r.comparisons if c.factor == "f.color"]
    assert "root_seed" in c.pair_on and [row.n_pairs for row in c.rows] == [6]  # 2 per stage


def test_strengths_alike_at_some_drawn_step_counts_are_allowed(tmp_path):
    """With `[randomize] steps` only the low draws run 0.3 and 0.35 alike; the run makes those images once."""
    from harness.experiment import load_experiment

    init = ROOT / "experiments" / "inputs" / "toy-star.png"
    (tmp_path / "e.toml").write_text(f'prompt = "a cube"\nmode = ["img2img"]\ninit_images = "{init}"\n'
                                     'strengths = [0.3, 0.35]\n[randomize]\nsteps = [4, 40]\n')
    assert load_experiment(tmp_path / "e.toml").strengths == (0.3, 0.35)


def test_a_run_without_stages_whose_copy_no_longer_loads_counts_what_is_missing_exactly(tmp_path):
    from harness.report import build_report
    from harness.run import run_experiment

    exp = tmp_path / "e.toml"
    exp.write_text('prompt = "a {red|blue} fox"\nseeds = [1]\nsteps = 2\nwidth = 64\nheight = 64\n')
    run_experiment(exp, out=tmp_path / "run", progress=False, log=lambda m: None)
    with Ledger.open(tmp_path / "run") as led:
        led.reset([sorted(led.done_keys())[0]])
    (tmp_path / "run" / "experiment.toml").write_text("prompt = [")  # a copy a check now refuses
    r = build_report(tmp_path / "run", html=False)
    assert r.missing == 1 and not r.missing_at_least


def _negative_study() -> pd.DataFrame:
    rows = [{"key": f"{color}{neg}{seed}", "f.color": color, "f.negative:neg": neg, "negative_prompt": neg,
             "seed": seed, "stage": "main", "checkpoint": "toy", "healthy": True,
             "m.score": seed + (2.0 if neg else 0.0) + (color == "red")}
            for color in ("red", "blue") for neg in ("", "blurry, lowres") for seed in (1, 2, 3)]
    return pd.DataFrame(rows)


def test_a_negative_prompt_factor_is_found_by_its_name_and_its_text_is_no_confound():
    """`--factor neg` names `f.negative:neg`; the negative prompt's text differing within pairs is the
    treatment, not a second change; and the negative_prompt column is not offered as a factor beside it."""
    import numpy as np
    import pytest

    from harness.stats import paired_compare

    df = _negative_study()
    c = paired_compare(df, factor="neg", metric="score", rng=np.random.default_rng(0), n_boot=100)
    assert c.factor == "f.negative:neg" and [r.mean_diff for r in c.rows] == pytest_approx([2.0])
    assert not [n for n in c.notes if "negative_prompt differs" in n], c.notes
    with pytest.raises(ValueError) as e:
        paired_compare(df, factor="nope", metric="score", rng=np.random.default_rng(0))
    assert "Factors that vary in this run: f.color, f.negative:neg " in str(e.value)
    text = paired_compare(df, factor="negative_prompt", metric="score", rng=np.random.default_rng(0),
                          n_boot=100, pair_on=["f.color", "f.negative:neg", "seed"]).rows[0].note
    assert "at blurry, lowres and (empty)" in text, text


def test_a_chained_stage_unpaired_by_its_first_seed_says_so():
    import numpy as np

    from harness.stats import paired_compare

    rows = [{"key": f"{c}{s}", "f.color": c, "seed": 7, "parent_seed": 7, "root_seed": root, "stage": "polish",
             "parent_key": f"p{c}", "checkpoint": "toy", "healthy": True, "m.score": 1.0 + s}
            for c, root in (("red", 1), ("blue", 2)) for s in (0,)]
    rows += [{"key": f"m{c}{s}", "f.color": c, "seed": s, "stage": "main", "checkpoint": "toy", "healthy": True,
              "m.score": float(s)} for c in ("red", "blue") for s in (1, 2)]
    c = paired_compare(pd.DataFrame(rows), factor="color", metric="score", rng=np.random.default_rng(0), n_boot=100)
    assert "root_seed" in c.pair_on
    (note,) = [n for n in c.notes if n.startswith("stage polish")]
    assert "chains of stages started from the same seed (root_seed)" in note and "blue: 2; red: 1" in note, note


def test_summaries_list_stages_in_run_order():
    """`polish` refines `refine`'s images: the variants table lists main, refine, polish, not by name."""
    from harness.stats import summarize

    df = pd.DataFrame({"stage": ["main"] * 2 + ["refine"] * 2 + ["polish"] * 2, "key": list("fedcba"),
                       "healthy": True, "m.x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    assert list(summarize(df, ["stage"], "m.x")["stage"]) == ["main", "refine", "polish"]
