"""Report tables and comparisons on a crafted run (real SQLite and PNGs, no model)."""

import html
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.core import Job, Score
from harness.ledger import Done, Ledger
from harness.provenance import write_png_atomic
from harness.report import build_report, compare
from harness.tables import image_table

from commands import harness

ROOT = Path(__file__).resolve().parents[1]
METRIC = "clip_score[model=tiny,pretrained=tiny,scale=100,clamp=image]"


# Hand-made scores: artist "by x" adds exactly +2 except in one pair (+0 -> a tie at margin 0).
SCORES = {  # (color, seed, artist) -> score
    ("red", 1, ""): 20.0, ("red", 1, ", by x"): 22.0,
    ("red", 2, ""): 21.0, ("red", 2, ", by x"): 23.0,
    ("blue", 1, ""): 18.0, ("blue", 1, ", by x"): 20.0,
    ("blue", 2, ""): 19.0, ("blue", 2, ", by x"): 19.0,
}


def finish(led: Ledger, jobs: list[Job]) -> None:
    """Add `jobs` to the ledger as done, each with a flat gray PNG."""
    led.add_jobs(jobs)
    for job in jobs:
        write_png_atomic(led.image_path(job.key), np.full((64, 64, 3), 120, np.uint8), parameters=job.prompt,
                         provenance={"key": job.key})
    led.mark_done_many([Done(j.key, "b", 1, 0, 0.1, "cpu", "fp32", health={"ok": True, "flags": []}) for j in jobs])


@pytest.fixture()
def crafted_run(tmp_path):
    run = tmp_path / "run"
    with Ledger.open(run) as led:
        jobs = []
        for (color, seed, artist), _ in SCORES.items():
            jobs.append(Job("tiny", "fp", "txt2img", f"a {color} cat{artist}", "", seed, 4, 7.5, "ddim", 64, 64,
                            factors={"color": color, "artist": artist}, meta={"stage": "main"}))
        jobs.append(Job("tiny", "fp", "txt2img", "a green cat", "", 1, 4, 7.5, "ddim", 64, 64,
                        factors={"color": "green", "artist": ""}, meta={"stage": "main"}))  # unpaired for artist
        finish(led, jobs)
        scores = [Score(j.key, METRIC, SCORES.get((j.factors["color"], j.seed, j.factors["artist"]), 10.0))
                  for j in jobs]
        scores.append(Score(jobs[0].key, "health", 1.0))
        led.put_scores(scores)
    return run


def test_image_table_has_factors_parameters_and_scores(crafted_run):
    with Ledger.open(crafted_run, readonly=True) as led:
        t = image_table(led)
    assert len(t) == 9
    assert {"f.color", "f.artist", "seed", "prompt", "steps", f"m.{METRIC}", "healthy", "image"} <= set(t.columns)
    assert t["healthy"].all() and (t["image"] == "images/" + t["key"] + ".png").all()


def test_compare_gives_hand_checked_numbers(crafted_run):
    with Ledger.open(crafted_run, readonly=True) as led:
        t = image_table(led)
    c = compare(t, "artist", metric="clip_score", n_boot=500)
    (row,) = c.rows
    assert c.baseline == "" and row.level == ", by x"
    assert row.n_pairs == 4 and row.mean_diff == pytest.approx((2 + 2 + 2 + 0) / 4)
    assert row.win_rate == pytest.approx((3 + 0.5) / 4)
    assert row.ci_low <= row.mean_diff <= row.ci_high
    assert c.n_excluded["unpaired"] == 1


def test_tables_round_trip_through_pandas(crafted_run):
    r = build_report(crafted_run, html=False)
    tables = crafted_run / "tables"
    csv = pd.read_csv(tables / "images.csv", keep_default_na=False, na_values=[""])
    pq = pd.read_parquet(tables / "images.parquet")
    assert len(csv) == len(pq) == 9
    assert sorted(csv["key"]) == sorted(pq["key"])
    assert pq.set_index("key").loc[csv["key"][0], f"m.{METRIC}"] == pytest.approx(csv[f"m.{METRIC}"][0])
    assert (tables / "images.md").read_text().startswith("| key | image |")
    factors = pd.read_parquet(tables / "factors.parquet")
    red = factors[(factors.factor == "color") & (factors.level == "red")].iloc[0]
    assert red["n"] == 4 and red["mean"] == pytest.approx(21.5)
    assert {c.factor for c in r.comparisons} >= {"f.artist", "f.color"}


def test_report_compares_on_the_experiments_compare_metrics(crafted_run):
    """`compare_metrics` in the run's experiment copy: every factor on each listed metric (a spec or an id)."""
    with Ledger.open(crafted_run) as led:
        led.put_scores([Score(j.key, "toy_color_match[want=red]", float(j.factors["color"] == "red"))
                        for j in led.all_jobs(status="done")])
    (crafted_run / "experiment.toml").write_text(
        'prompt = "x"\ncompare_metrics = ["toy_color_match:want=red", "clip_score"]\n')
    r = build_report(crafted_run, html=False)
    pairs = {(c.factor, c.metric) for c in r.comparisons}
    assert pairs == {("f.artist", "m.toy_color_match[want=red]"), ("f.color", "m.toy_color_match[want=red]"),
                     ("f.artist", f"m.{METRIC}"), ("f.color", f"m.{METRIC}")}
    red_vs_blue = next(c for c in r.comparisons if c.factor == "f.color" and "toy" in c.metric)
    assert [row.mean_diff for row in red_vs_blue.rows if row.level == "red"] == [1.0]
    # --metric on the command line wins over the experiment's list
    assert {c.metric for c in build_report(crafted_run, html=False, metric="clip_score").comparisons} == {f"m.{METRIC}"}


def test_comparison_tables_name_baseline_direction_and_pairs_and_skips_are_reported(crafted_run):
    (crafted_run / "experiment.toml").write_text('prompt = "x"\ncompare_metrics = ["clip_score", "nosuch:x=1"]\n')
    r = build_report(crafted_run, html=False)
    table = pd.read_csv(crafted_run / "tables" / "comparisons.csv", keep_default_na=False)
    artist = table[table["factor"] == "f.artist"].iloc[0]
    assert (artist["baseline"], artist["level"], str(artist["higher_is_better"])) == ("", ", by x", "True")
    assert artist["pair_on"] == "f.color,checkpoint,seed,stage" and artist["n_boot"] == 2000
    assert sorted((f, m) for f, m, _ in r.skipped) == [("f.artist", "nosuch:x=1"), ("f.color", "nosuch:x=1")]
    assert all("nosuch" in why for _, _, why in r.skipped)
    cli = harness("report", str(crafted_run), "--no-html")
    assert cli.returncode == 0 and "not compared: f.color on nosuch:x=1" in cli.stdout
    bad = harness("report", str(crafted_run), "--no-html", "--metric", "nosuch:x=1")
    assert bad.returncode != 0 and "nosuch" in bad.stderr and "Traceback" not in bad.stderr


def test_the_report_compares_img2img_strengths_pairing_each_with_the_same_prompt_and_seed(tmp_path):
    run = tmp_path / "run"
    with Ledger.open(run) as led:
        jobs = [Job("tiny", "fp", "txt2img", f"a {color} cat", "", seed, 4, 7.5, "ddim", 64, 64,
                    factors={"color": color}, meta={"stage": "main"}) for color in ("red", "blue") for seed in (1, 2)]
        jobs += [Job("tiny", "fp", "img2img", f"a {color} cat", "", seed, 4, 7.5, "ddim", 64, 64, strength=strength,
                     init_hash="h", init_image="init.png", factors={"color": color}, meta={"stage": "main"})
                 for color in ("red", "blue") for seed in (1, 2) for strength in (0.3, 0.6)]
        finish(led, jobs)
        led.put_scores([Score(j.key, METRIC, 10.0 + 10 * (j.strength or 0) + j.seed) for j in jobs])
    r = build_report(run, html=False)
    strength = next(c for c in r.comparisons if c.factor == "strength")
    (row,) = strength.rows
    assert (strength.baseline, row.level, row.n_pairs) == (0.3, 0.6, 4) and row.mean_diff == pytest.approx(3.0)
    assert strength.n_excluded["no_level"] == 4  # the txt2img images have no strength
    table = pd.read_csv(run / "tables" / "comparisons.csv")
    assert set(table["factor"]) == {"f.color", "strength"}


def test_strengths_drawn_per_image_are_not_compared_with_one_short_reason(tmp_path):
    run = tmp_path / "run"
    with Ledger.open(run) as led:
        jobs = [Job("tiny", "fp", "img2img", f"a {color} cat", "", seed, 4, 7.5, "ddim", 64, 64,
                    strength=0.3 + 0.01 * i, init_hash="h", init_image="init.png", factors={"color": color},
                    meta={"stage": "main"}) for i, (color, seed) in enumerate(itertools.product(("red", "blue"),
                                                                                                (1, 2, 3)))]
        finish(led, jobs)
        led.put_scores([Score(j.key, METRIC, 10.0 + j.seed) for j in jobs])
    r = build_report(run, html=False)
    ((metric, why),) = [(m, why) for factor, m, why in r.skipped if factor == "strength"]
    assert metric == METRIC  # the default metric, named
    assert why.startswith("no complete pairs") and why.endswith("; and 3 more level(s) alike") and len(why) < 500


def test_prompts_cut_to_the_clip_limit_are_marked_and_noted_in_comparisons(crafted_run):
    with Ledger.open(crafted_run) as led:
        long = [j for j in led.all_jobs(status="done") if j.factors["artist"]]
        led.put_scores([Score(j.key, METRIC, 30.0, {"tokens": 90, "truncated": True}) for j in long])
    r = build_report(crafted_run, html=False)
    assert r.truncated == len(long) == 4
    table = pd.read_parquet(crafted_run / "tables" / "images.parquet")
    assert sorted(table.loc[table["truncated"] != "", "key"]) == sorted(j.key for j in long)
    assert set(table.loc[table["truncated"] != "", "truncated"]) == {json.dumps([METRIC])}
    artist = next(c for c in r.comparisons if c.factor == "f.artist")
    # scores from before the limit was recorded: no number is made up
    assert any(n.startswith(f"4 image(s) have prompts longer than {METRIC} reads: it read them only up to its "
                            "CLIP text limit") for n in artist.notes)
    with Ledger.open(crafted_run) as led:  # scored now: the detail says how many tokens the model read
        led.put_scores([Score(j.key, METRIC, 30.0, {"tokens": 90, "truncated": True, "limit": 30}) for j in long])
    r = build_report(crafted_run, html=False)
    assert r.text_limits == {METRIC: 30}
    artist = next(c for c in r.comparisons if c.factor == "f.artist")
    assert "it read only their first 30 tokens" in artist.to_text()
    assert "it read only their first 30 tokens" in pd.read_csv(crafted_run / "tables" / "comparisons.csv",
                                                                keep_default_na=False)["comparison_notes"][0]
    cli = harness("report", str(crafted_run), "--no-html")
    assert f"4 images have prompts longer than a CLIP metric reads ({METRIC} reads 30 tokens)" in cli.stdout


def test_report_is_rebuilt_from_the_ledger(crafted_run):
    build_report(crafted_run, html=False)
    first = (crafted_run / "tables" / "factors.csv").read_text()
    import shutil
    shutil.rmtree(crafted_run / "tables")
    build_report(crafted_run, html=False)
    assert (crafted_run / "tables" / "factors.csv").read_text() == first


def test_compare_cli_json_and_errors(crafted_run):
    r = harness("compare", str(crafted_run), "--factor", "artist", "--metric", "clip_score", "--format", "json",
                "--n-boot", "200")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["rows"][0]["n_pairs"] == 4 and data["rows"][0]["mean_diff"] == pytest.approx(1.5)
    bad = harness("compare", str(crafted_run), "--factor", "artsit")
    assert bad.returncode == 2 and "artist" in bad.stderr


def test_compare_where_keeps_the_images_at_one_level_and_names_a_level_that_is_not_there(crafted_run):
    """Red only: pairs (red, seed 1) +2 and (red, seed 2) +2, so +2 (all four pairs give +1.5)."""
    from typer.testing import CliRunner

    from harness.cli import app

    r = CliRunner().invoke(app, ["compare", str(crafted_run), "--factor", "artist", "--metric", "clip_score",
                                 "--format", "json", "--n-boot", "200", "--where", "color=red"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)["rows"]
    assert row["n_pairs"] == 2 and row["mean_diff"] == pytest.approx(2.0)
    assert "only images where color=red: 4 of 9" in r.stderr
    bad = CliRunner().invoke(app, ["compare", str(crafted_run), "--factor", "artist", "--where", "color=mauve"])
    assert bad.exit_code == 2
    assert "--where 'color=mauve': color has no level 'mauve' among the images; its levels: blue, green, red" in bad.output
    form = CliRunner().invoke(app, ["compare", str(crafted_run), "--factor", "artist", "--where", "red"])
    assert form.exit_code == 2 and "expected NAME=LEVEL" in form.output
    # a parameter's number is read by value: guidance 7.50 is the level 7.5
    by_value = CliRunner().invoke(app, ["compare", str(crafted_run), "--factor", "artist", "--metric", "clip_score",
                                        "--n-boot", "200", "--where", "guidance=7.50"])
    assert by_value.exit_code == 0 and "only images where guidance=7.50: 9 of 9" in by_value.stderr, by_value.output


def test_a_misspelt_metric_is_an_error_and_no_comparisons_outlive_their_run(crafted_run):
    """`report --metric TYPO` fails and names the scored metrics; a report that compares nothing removes
    an earlier report's comparison tables rather than leaving them to be read as current."""
    build_report(crafted_run, html=False)
    tables = crafted_run / "tables"
    assert (tables / "comparisons.csv").is_file() and (tables / "comparisons.txt").is_file()
    with pytest.raises(ValueError, match="unknown metric 'clip_scor'; scored metrics in this run: clip_score"):
        build_report(crafted_run, html=False, metric="clip_scor")
    with pytest.raises(ValueError, match=f"metric 'watermark' was not scored in this run \\(harness eval "
                                         f"{re.escape(str(crafted_run))} -m watermark scores it\\); scored metrics "
                                         "in this run: clip_score"):  # the run folder, not the word RUN
        build_report(crafted_run, html=False, metric="watermark")
    with pytest.raises(ValueError, match="-m 'toy_style_match:want=ian mcque' scores it"):
        build_report(crafted_run, html=False, metric="toy_style_match[want=ian mcque]")  # pasteable into a shell
    r = harness("report", str(crafted_run), "--no-html", "--metric", "clip_scor")
    assert r.returncode != 0 and "unknown metric 'clip_scor'" in r.stderr
    assert build_report(crafted_run, html=False, compare_factors=[]).comparisons == []
    assert not list(tables.glob("comparisons.*")) and not list(tables.glob(".*tmp*"))


def test_a_metric_that_cannot_load_stores_nothing_and_the_next_eval_tries_again(crafted_run, broken_clip):
    """Missing model weights are the environment's fault, not the image's: no NaN is stored for them, so
    fixing the weights and running `harness eval` again scores every image instead of skipping them."""
    from harness.evaluate import evaluate

    spec = f"clip_score:model=x,pretrained={broken_clip},cache=none"
    with Ledger.open(crafted_run) as led:
        for _ in range(2):
            (summary,) = evaluate(led, [spec], log=lambda m: None)
            assert (summary.skipped, summary.scored, summary.nan, summary.unscored) == (0, 0, 0, 9)
            [(reason, count)] = summary.unscored_reasons.items()
            assert "could not load CLIP" in reason and count == 9
            assert led.scored_keys(summary.metric) == set()
        (health,) = evaluate(led, ["health"], log=lambda m: None)
        assert health.scored == 8 and health.skipped == 1  # per-image outcomes are stored as before
    r = harness("eval", str(crafted_run), "-m", spec)
    assert r.returncode == 1 and "(0 in this pass)" in r.stdout
    assert "not scored: 9 images" in r.stderr and "could not load CLIP" in r.stderr


def test_a_run_that_names_no_metrics_is_scored_offline_with_its_builtin_models_clip(crafted_run):
    from harness.evaluate import metrics_for_run

    with Ledger.open(crafted_run, readonly=True) as led:  # images of the built-in tiny checkpoint only
        ids = [m.id for m in metrics_for_run(led, None)]
    assert ids[0] == "health" and ids[1].startswith("watermark[") and ids[2].startswith("clip_score[model=tiny,pretrained=tiny")


def test_eval_scale_rescales_the_experiments_clip_score_not_a_default_model(crafted_run):
    """`harness eval RUN --scale 2.5` without -m scores the experiment's CLIP model at the new scale."""
    from harness.core import canonical_json
    from harness.evaluate import scaled_clip_specs

    assert scaled_clip_specs([], 2.5, ["health", "clip_score:model=tiny,scale=100"]) == [
        "clip_score:model=tiny,scale=2.5"]
    assert scaled_clip_specs(["clip_score", "health"], 2.5) == ["clip_score:scale=2.5", "health"]
    assert scaled_clip_specs([], 2.5, ["health"]) == ["clip_score:scale=2.5"]
    with Ledger.open(crafted_run) as led:
        led.set_meta("experiment", canonical_json({"metrics": ["health", "clip_score:model=tiny,cache=none"]}))
    r = harness("eval", str(crafted_run), "--scale", "2.5")
    assert r.returncode == 0, r.stderr
    with Ledger.open(crafted_run, readonly=True) as led:
        new = set(led.scores_frame()["metric"]) - {METRIC, "health"}
    assert len(new) == 1 and "model=tiny" in next(iter(new)) and "scale=2.5" in next(iter(new))


def test_default_comparison_metric_is_the_prompt_clip_score_not_a_fixed_probe(crafted_run):
    """A `text=` probe scores every image against one fixed text: it sorts first but is not the default."""
    probe = "clip_score[model=tiny,pretrained=tiny,scale=100,clamp=image,text=a red circle]"
    with Ledger.open(crafted_run) as led:
        led.put_scores([Score(j.key, probe, 1.0) for j in led.all_jobs(status="done")])
    assert sorted([probe, METRIC])[0] == probe
    assert {c.metric for c in build_report(crafted_run, html=False).comparisons} == {f"m.{METRIC}"}
    # `harness compare` without --metric takes the experiment's first compare_metrics, as the report does
    (crafted_run / "experiment.toml").write_text(f'prompt = "x"\ncompare_metrics = ["{probe}"]\n')
    r = harness("compare", str(crafted_run), "--factor", "artist", "--format", "json", "--n-boot", "100")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["metric"] == f"m.{probe}"


def test_comparison_tables_carry_the_caveats_and_rankings_and_unpairable_factors_are_not_compared(tmp_path):
    """comparisons.* holds each comparison's excluded counts and notes; three levels also write rankings.*;
    a factor whose levels never pair (nested in another factor) is a `not compared` line, not an empty row."""
    run = tmp_path / "run"
    jobs = []
    for style, subject in (("", "cat"), ("oil", "cat"), ("ink", "cat"), ("", "dog"), ("oil", "dog"), ("ink", "dog")):
        for seed in (1, 2, 3):
            # 'breed' is nested in 'subject': each subject has its own breed, so breeds never pair
            jobs.append(Job("tiny", "fp", "txt2img", f"a {subject} {style}", "", seed, 4, 7.5, "ddim", 64, 64,
                            factors={"style": style, "subject": subject,
                                     "breed": {"cat": "tabby", "dog": "collie"}[subject]}, meta={"stage": "main"}))
    with Ledger.open(run) as led:
        finish(led, jobs)
        led.put_scores([Score(j.key, METRIC, {"": 20.0, "oil": 22.0, "ink": 25.0}[j.factors["style"]] + j.seed)
                        for j in jobs])
    r = build_report(run, html=False)
    assert {c.factor for c in r.comparisons} == {"f.style"}
    (why,) = [why for f, _, why in r.skipped if f == "f.breed"]
    assert why.startswith("no complete pairs: f.subject never take(s) the same value at tabby and collie")
    levels = pd.read_csv(run / "tables" / "comparisons.csv", keep_default_na=False)
    assert set(levels["excluded"]) == {"0 unhealthy, 0 unscored, 0 unpaired, 0 no level"}
    assert "comparison_notes" in levels.columns
    ranks = pd.read_csv(run / "tables" / "rankings.csv", keep_default_na=False)
    assert list(ranks.sort_values("rank")["level"]) == ["ink", "oil", ""]
    cli = harness("report", str(run), "--no-html")
    assert "not compared: f.breed" in cli.stdout and "f.subject never take(s) the same value" in cli.stdout
    # fewer than three levels now: the rankings of the earlier report go
    build_report(run, html=False, compare_factors=["subject"])
    assert not list((run / "tables").glob("rankings.*"))


def test_factor_tables_name_the_pooled_images_a_factor_does_not_apply_to(crafted_run):
    with Ledger.open(crafted_run, readonly=True) as led:
        table = image_table(led)
    table["strength"] = [0.3, 0.6] * 4 + [None]  # one image with no strength (a txt2img image)
    from harness.tables import factor_summary, markdown_table
    summary = factor_summary(table)
    assert set(summary.loc[summary["factor"] == "strength", "level"]) == {"0.3", "0.6", "(none)"}
    assert "None" not in markdown_table(table[["key", "strength", "init_image"]].astype(object))
    assert "stage" not in summary.columns  # one stage: nothing to tell apart


def test_factor_tables_tell_a_prompt_factor_from_a_parameter_of_the_same_name(crafted_run):
    """A prompt factor named `mode` beside the varying `mode` parameter is listed as `f.mode`, the name
    `harness compare` takes for it, so the two sets of levels are not read as one factor."""
    from harness.tables import factor_summary

    with Ledger.open(crafted_run, readonly=True) as led:
        table = image_table(led)
    table["f.mode"] = ["sketch", "photo"] * 4 + ["photo"]
    table["mode"] = ["txt2img"] * 5 + ["img2img"] * 4
    summary = factor_summary(table)
    assert set(summary.loc[summary["factor"] == "mode", "level"]) == {"txt2img", "img2img"}
    assert set(summary.loc[summary["factor"] == "f.mode", "level"]) == {"sketch", "photo"}
    assert "color" in set(summary["factor"])  # no clash: the bare name


def test_summary_tables_list_levels_in_natural_order_and_no_two_alike():
    """`s2` before `s10`; a level whose own text is a table's mark ((empty), —, (none)) reads in quotes,
    in the factor table and in Markdown, so it is not taken for the empty level or the pooled images."""
    from harness.tables import factor_summary, markdown_table

    levels = ["s10", "s2", "s1", "", "(empty)", "—", "(none)", None]
    table = pd.DataFrame({"key": [f"k{i}" for i in range(len(levels))], "f.n": levels,
                          "m.score": np.arange(len(levels), dtype=float), "healthy": True})
    summary = factor_summary(table)
    assert summary["level"].tolist() == ["", "(empty)", '"(none)"', "s1", "s2", "s10", "—", "(none)"]
    md = [line.strip("| ").split(" | ")[1] for line in markdown_table(summary[["factor", "level"]]).splitlines()[2:]]
    assert md == ["(empty)", '"(empty)"', '"(none)"', "s1", "s2", "s10", '"—"', "(none)"]
    assert len(set(md)) == len(md)


def test_factor_tables_keep_a_later_stage_apart_from_the_first(crafted_run):
    from harness.tables import factor_summary

    with Ledger.open(crafted_run, readonly=True) as led:
        table = image_table(led)
    later = table.assign(stage="refine", strength=0.6, mode="img2img", **{f"m.{METRIC}": 100.0})
    summary = factor_summary(pd.concat([table.assign(strength=0.6, mode="img2img"), later], ignore_index=True))
    rows = summary[(summary["factor"] == "color") & (summary["level"] == "red")].set_index("stage")
    assert list(summary.columns[:3]) == ["factor", "stage", "level"]
    assert rows.loc["refine", "mean"] == 100.0 and rows.loc["main", "mean"] < 100.0
    assert rows.loc["refine", "n"] == rows.loc["main", "n"]


def test_markdown_tells_an_empty_level_from_a_factor_that_does_not_apply(tmp_path):
    from harness.tables import markdown_table, write_table

    table = pd.DataFrame({"f.artist": ["", ", by ian mcque", None], "level": ["", "x", "(none)"],
                          "note": ["", "n", None], "m.score": [1.0, 2.0, float("nan")]})
    rows = markdown_table(table).splitlines()[2:]
    assert rows == ["| (empty) | (empty) |  | 1 |", "| , by ian mcque | x | n | 2 |", "| — | (none) |  |  |"]
    write_table(table, tmp_path, "images")
    back = pd.read_parquet(tmp_path / "images.parquet")  # the typed copy keeps them apart
    assert back["f.artist"].tolist()[:2] == ["", ", by ian mcque"] and pd.isna(back["f.artist"].iloc[2])


def test_flags_and_numbers_with_gaps_are_stored_typed_not_as_text(crafted_run, tmp_path):
    """Two of the nine images have a watermark score: the `watermark` flag of the rest is missing, and the
    Parquet copy keeps it a nullable boolean rather than the text 'True'/'False'."""
    with Ledger.open(crafted_run) as led:
        keys = [j.key for j in led.all_jobs()]
        led.put_scores([Score(keys[0], "watermark", 1.0), Score(keys[1], "watermark", 0.0)])
    build_report(crafted_run, html=False)
    images = pd.read_parquet(crafted_run / "tables" / "images.parquet").set_index("key")
    assert images["watermark"].dtype == "boolean"
    assert images.loc[keys[0], "watermark"] is np.True_ and images.loc[keys[1], "watermark"] is np.False_
    assert images["watermark"].isna().sum() == 7
    from harness.tables import write_table

    with Ledger.open(crafted_run, readonly=True) as led:
        table = image_table(led).assign(strength=[0.5, None] * 4 + [None])
    write_table(table.astype(object), tmp_path, "images")  # any column that lost its type on the way
    back = pd.read_parquet(tmp_path / "images.parquet")
    assert back["strength"].dtype == "float64" and back["strength"].tolist()[:1] == [0.5]
    assert back["seed"].dtype == "int64" and back["seed"].tolist() == table["seed"].tolist()
    assert back["watermark"].dtype == "boolean" and back["healthy"].dtype == "boolean"


def test_levels_spelled_as_decimal_or_negative_numbers_read_in_numeric_order_everywhere(tmp_path):
    """End to end on the tiny model: prompt levels are text, yet `0.25` comes before `0.5` and `-1` before
    `0`, in the factor tables, the default baseline, the plots and the grid's columns."""
    from harness.plots import level_stats
    from harness.run import run_experiment

    exp = tmp_path / "w.toml"
    exp.write_text('name = "w"\nprompt = "a photo of a (cat:{@w: 0.5|1.5|0.25|0.75}) {@t: 1|0|-1}"\nseeds = [1]\n'
                   'checkpoints = ["tiny"]\nsteps = 2\nwidth = 64\nheight = 64\n'
                   'metrics = ["clip_score:model=tiny,cache=none"]\n')
    run_experiment(exp, out=tmp_path / "run", progress=False)
    r = build_report(tmp_path / "run")
    factors = pd.read_parquet(tmp_path / "run" / "tables" / "factors.parquet")
    assert factors.loc[factors["factor"] == "w", "level"].tolist() == ["0.25", "0.5", "0.75", "1.5"]
    assert factors.loc[factors["factor"] == "t", "level"].tolist() == ["-1", "0", "1"]
    baselines = {c.factor: (c.baseline, [row.level for row in c.rows]) for c in r.comparisons}
    assert baselines == {"f.w": ("0.25", ["0.5", "0.75", "1.5"]), "f.t": ("-1", ["0", "1"])}
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        table = image_table(led)
    assert level_stats(table, "t", "clip_score")["level"].tolist() == ["-1", "0", "1"]  # the plot's x-axis
    page = (tmp_path / "run" / "index.html").read_text()
    assert re.findall(r'<th scope="col" title="w=([^"]*)">', page)[:4] == ["0.25", "0.5", "0.75", "1.5"]


def test_the_page_plots_and_tables_tell_prompt_factors_from_parameters_of_the_same_name(tmp_path):
    """End to end on the tiny model: factors named `mode` and `seed` beside the mode and seed parameters
    read `f.mode` and `f.seed` on the grids, in the details, comparisons, plots and factor tables, the
    names `--rows` and `--factor` take for them."""
    from PIL import Image

    from harness.run import run_experiment

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "init.png")
    exp = tmp_path / "modes.toml"
    exp.write_text('name = "modes"\nprompt = "a {@mode: portrait|landscape} of a {@seed: cat|dog}"\nseeds = [1, 2]\n'
                   'checkpoints = ["tiny"]\nmode = ["txt2img", "img2img"]\ninit_images = "init.png"\n'
                   'strengths = [0.5]\nsteps = 4\nwidth = 64\nheight = 64\n'
                   'metrics = ["clip_score:model=tiny,cache=none"]\n')
    run_experiment(exp, out=tmp_path / "run", progress=False)
    build_report(tmp_path / "run")
    page = html.unescape((tmp_path / "run" / "index.html").read_text())
    assert '<th class="corner" scope="col">seed \\ f.mode</th>' in page
    assert "one grid per <b>f.seed, mode</b>" in page
    assert set(re.findall(r"<h3>clip_score by ([^,]*),", page)) == {"f.mode", "f.seed"}
    assert set(re.findall(r'<figcaption>clip_score\[[^<]*\] by ([^<]*)</figcaption>', page)) == {"f.mode", "f.seed"}
    records = json.loads(re.search(r'id="sheet-data">(.*?)</script>', page, re.S).group(1))
    (record, *_) = records.values()
    assert [name for name, _ in record["factors"]] == ["f.mode", "f.seed"]
    assert re.fullmatch(r"f\.mode=\w+, f\.seed=\w+, mode=\w+2img, seed=\d", record["title"]), record["title"]
    factors = pd.read_parquet(tmp_path / "run" / "tables" / "factors.parquet")
    assert set(factors["factor"]) == {"f.mode", "f.seed", "mode"}


def test_a_misspelt_grid_axis_fails_before_any_table_is_rewritten(crafted_run):
    build_report(crafted_run, html=False)
    before = {p.name: p.stat().st_mtime_ns for p in (crafted_run / "tables").iterdir()}
    with pytest.raises(ValueError, match="rows='colour' is not a factor or parameter of this run"):
        build_report(crafted_run, rows="colour")
    assert {p.name: p.stat().st_mtime_ns for p in (crafted_run / "tables").iterdir()} == before
    with pytest.raises(ValueError, match="rows='colour' is not a factor"):  # tables only: checked all the same
        build_report(crafted_run, rows="colour", html=False)
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        build_report(crafted_run, metric="nope")
    assert {p.name: p.stat().st_mtime_ns for p in (crafted_run / "tables").iterdir()} == before
    for bad in (["--rows", "colr", "--no-html"], ["--metric", "nope"]):
        cli = harness("report", str(crafted_run), *bad)
        assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (crafted_run / "tables").iterdir()} == before


def test_a_randomized_run_pairs_by_draw_and_its_drawn_guidance_splits_no_grid(tmp_path):
    """End to end on the tiny model: [randomize] with two draws of guidance per prompt and seed."""
    from harness.run import run_experiment

    exp = tmp_path / "rand.toml"
    exp.write_text('name = "rand"\nprompt = "a {@color: red|blue} cat"\nseeds = [1, 2]\ncheckpoints = ["tiny"]\n'
                   'steps = 2\nwidth = 64\nheight = 64\nmetrics = ["health", "clip_score:model=tiny,cache=none"]\n'
                   '[randomize]\nseed = 3\ndraws = 2\nguidance = [4.0, 9.0]\n')
    run_experiment(exp, out=tmp_path / "run", progress=False)
    r = build_report(tmp_path / "run")
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        table = image_table(led)
    assert sorted(table["draw"].tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert table.groupby(["f.color", "seed", "draw"])["guidance"].nunique().eq(1).all()
    color = next(c for c in r.comparisons if c.factor == "f.color")
    assert "draw" in color.pair_on and "guidance" not in color.pair_on
    assert color.rows[0].n_pairs == 4 and color.n_excluded["unpaired"] == 0
    page = (tmp_path / "run" / "index.html").read_text()
    # color x seed is the grid, one per draw (labelled); guidance, drawn per image, splits nothing
    assert "one grid per <b>draw</b> ·" in page
    build_report(tmp_path / "run", rows="draw", cols="color")  # and a draw can be an axis
    # the drawn guidance: a row per metric over the 4 draws (seed x draw, each the mean of its 2 prompts);
    # two draws on each of two seeds leave too few to correlate within seeds, and the row says so
    drawn = pd.read_csv(tmp_path / "run" / "tables" / "drawn.csv")
    clip = drawn[drawn["metric"].str.startswith("clip_score")].iloc[0]
    assert drawn["parameter"].unique().tolist() == ["guidance"] and clip["units"] == 4 and clip["images"] == 8
    assert clip["within_seed"] and clip["why_none"] == "too few draws (3 beyond the seeds of the 4 needed)"
    per_draw = table.groupby(["seed", "draw"]).agg(g=("guidance", "first"), s=(clip_col(table), "mean"))
    assert (clip["low"], clip["high"]) == (per_draw["g"].min(), per_draw["g"].max())
    assert (tmp_path / "run" / "plots" / "drawn__guidance.png").is_file()
    assert "Settings drawn by [randomize]" in (tmp_path / "run" / "index.html").read_text()
    from typer.testing import CliRunner

    from harness.cli import app

    out = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--no-html"]).output
    assert "settings drawn by [randomize] (tables/drawn.csv):" in out and "guidance (" in out
    copy = tmp_path / "run" / "experiment.toml"  # the experiment without [randomize]: no drawn table is left
    copy.write_text(copy.read_text().split("[randomize]")[0])
    build_report(tmp_path / "run", html=False)
    assert not (tmp_path / "run" / "tables" / "drawn.csv").exists()


def clip_col(table):
    return next(c for c in table.columns if c.startswith("m.clip_score"))


def test_eval_means_cover_the_images_of_the_current_plan_only(crafted_run):
    """An edited experiment keeps the images of its earlier version; the mean `run`/`eval` print is over
    the images the experiment asks for now, as the report's statistics are."""
    from harness.evaluate import evaluate

    with Ledger.open(crafted_run) as led:
        planned = [j.key for j in led.all_jobs() if j.factors["color"] != "green"]
        led.set_plan("main", planned)
        (summary,) = evaluate(led, ["clip_score:model=tiny"], log=lambda m: None)
    assert summary.metric == METRIC and summary.skipped == 8 and summary.scored == 0
    assert summary.mean == pytest.approx(sum(SCORES.values()) / 8)  # not pulled down by the green image (10.0)


def test_the_page_counts_images_not_made_yet_and_shows_why_some_failed(crafted_run):
    """The plan asks for 10 images: 7 made, 2 failed (their errors on the page), 1 never tried."""
    with Ledger.open(crafted_run) as led:
        jobs = led.all_jobs()
        extra = Job("tiny", "fp", "txt2img", "a grey cat", "", 9, 4, 7.5, "ddim", 64, 64,
                    factors={"color": "grey", "artist": ""}, meta={"stage": "main"})
        led.add_jobs([extra])
        led.set_plan("main", [j.key for j in jobs] + [extra.key])
        led.reset([jobs[0].key, jobs[1].key])
        led.mark_failed(jobs[0].key, "CUDA out of memory <b>")
        led.mark_failed(jobs[1].key, "NaN latents")
    r = build_report(crafted_run)
    assert r.missing == 3 and sorted(e for _, e in r.failed) == ["CUDA out of memory <b>", "NaN latents"]
    page = (crafted_run / "index.html").read_text()
    assert "1 planned not made yet" in page and ">2 failed</a>" in page
    assert "1 is not made yet and 2 failed" in page
    assert "CUDA out of memory &lt;b&gt;" in page and "NaN latents" in page and jobs[0].key[:12] in page
    from typer.testing import CliRunner

    from harness.cli import app

    out = CliRunner().invoke(app, ["report", str(crafted_run), "--no-html"]).output
    assert "failed: 2 images of the experiment's plan" in out  # not counted as an interrupted run's
    assert "not made yet: 1 images of the experiment's plan (an interrupted run" in out


def test_a_run_with_no_image_left_gets_an_empty_page_and_no_stale_checkpoints_or_plots(crafted_run):
    build_report(crafted_run)
    assert (crafted_run / "tables" / "checkpoints.csv").is_file() and list((crafted_run / "plots").glob("*.png"))
    (crafted_run / "plots" / "search_trajectory.png").write_bytes(b"made by harness evolve")
    with Ledger.open(crafted_run) as led:
        keys = [j.key for j in led.all_jobs()]
        led.set_meta("search/current", "s1")  # a search whose images the plan still holds: its plot stays
        led.set_plan("main", keys)
        led.set_plan("search:s1", keys[:1])
        led.reset(keys)
        for key in keys:
            led.mark_failed(key, "out of memory")
    r = build_report(crafted_run)
    assert r.images == 0 and len(pd.read_csv(crafted_run / "tables" / "images.csv")) == 0
    page = (crafted_run / "index.html").read_text()
    assert "No images in this run yet." in page and "9 failed" in page and 'class="item' not in page
    assert 'class="legend"' not in page  # no grid: no rows and columns to name
    assert not list((crafted_run / "tables").glob("checkpoints.*"))
    assert [p.name for p in (crafted_run / "plots").iterdir()] == ["search_trajectory.png"]


def test_a_report_of_the_current_folder_is_titled_by_the_folder_name(crafted_run, monkeypatch):
    monkeypatch.chdir(crafted_run)
    build_report(Path("."))
    title = re.search(r"<title>([^<]*)</title>", (crafted_run / "index.html").read_text()).group(1)
    assert title == f"{crafted_run.name}: 9 images"


def test_report_counts_finished_images_whose_file_is_gone(crafted_run):
    from typer.testing import CliRunner

    from harness.cli import app

    next((crafted_run / "images").glob("*.png")).unlink()
    assert build_report(crafted_run, html=False).gone == 1
    r = CliRunner().invoke(app, ["report", str(crafted_run), "--no-html"])
    assert r.exit_code == 0, r.output
    assert (f"image files gone: 1 finished images have no file in images/ (deleted since they were made); their "
            f"scores still count in these tables until `harness eval {crafted_run}` drops them") in r.stderr


def test_report_names_finished_images_whose_file_is_damaged_or_replaced(crafted_run):
    from PIL import Image
    from typer.testing import CliRunner

    from harness.cli import app

    cut, replaced = sorted((crafted_run / "images").glob("*.png"))[:2]
    cut.write_bytes(cut.read_bytes()[:-40])
    Image.new("RGB", (8, 8), (255, 0, 0)).save(replaced)  # a sound PNG, but another picture than the one scored
    r = build_report(crafted_run, html=False)
    damaged = dict(r.damaged)
    assert r.gone == 0 and set(damaged) == {cut.stem, replaced.stem}
    assert damaged[replaced.stem] == "changed since it was made" and "truncated" in damaged[cut.stem]
    out = CliRunner().invoke(app, ["report", str(crafted_run), "--no-html"])
    assert out.exit_code == 0, out.output
    assert "image files damaged or changed: 2 finished images are not the files they were made as" in out.stderr
    assert f"`harness eval {crafted_run}` drops them" in out.stderr


def test_a_report_reads_a_ledger_older_than_image_digests_and_forces(crafted_run):
    """Such a ledger has no image_files or forced table, and a report opens it read-only (creating nothing):
    its images are taken as made, a missing file still counted as gone."""
    import sqlite3

    with sqlite3.connect(crafted_run / "ledger.sqlite") as conn:
        conn.execute("DROP TABLE image_files")
        conn.execute("DROP TABLE forced")
    next((crafted_run / "images").glob("*.png")).unlink()
    r = build_report(crafted_run, html=False)
    assert (r.gone, r.damaged) == (1, [])


def test_an_ambiguous_metric_lists_only_the_ids_it_could_mean():
    from harness.columns import resolve_metric
    from harness.report import _find_metric

    df = pd.DataFrame({"m.clip_score[model=toy]": [1.0], "m.clip_score[model=tiny]": [2.0], "m.health": [1.0]})
    for find in (_find_metric, resolve_metric):
        with pytest.raises(ValueError) as info:
            find(df, "clip_score")
        assert str(info.value).endswith("one of: clip_score[model=toy], clip_score[model=tiny]")


def test_a_factor_nested_in_another_is_compared_and_so_is_the_one_that_holds_it(tmp_path):
    """`{cat {@hat: red|blue}|dog}`: the outer factor's value is its option's text ('cat red'), so requiring it
    to match would leave the hats no pair. The run records which factor sits in which, and each comparison
    leaves the other one free, holding the seed and everything else fixed."""
    from harness.run import run_experiment

    (tmp_path / "exp.toml").write_text(
        'name = "nest"\nprompt = "a {cat {@hat: red|blue}|dog} photo"\nseeds = [1, 2]\ncheckpoints = ["tiny"]\n'
        'steps = 2\nwidth = 64\nheight = 64\nmetrics = ["clip_score:model=tiny"]\n')
    run_experiment(tmp_path / "exp.toml", out=tmp_path / "run", progress=False)
    r = build_report(tmp_path / "run", html=False)
    by_factor = {c.factor: c for c in r.comparisons}
    assert set(by_factor) == {"f.hat", "f.cat {red|blue}|dog"} and not r.skipped
    (hat,) = by_factor["f.hat"].rows
    assert (by_factor["f.hat"].baseline, hat.level, hat.n_pairs) == ("blue", "red", 2)
    assert by_factor["f.hat"].pair_on == ["checkpoint", "seed", "stage"]
    outer = by_factor["f.cat {red|blue}|dog"]
    assert sorted((row.level, row.n_pairs) for row in outer.rows) == [("cat red", 2), ("dog", 2)]
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert compare(image_table(led), "hat").rows[0].n_pairs == 2  # `harness compare` pairs them too


def test_a_partial_run_names_the_factors_it_cannot_compare_yet(tmp_path):
    """An interrupted run whose images so far show one shape: the report says why shape is not compared,
    rather than leaving it out without a word."""
    run = tmp_path / "run"
    jobs = [Job("tiny", "fp", "txt2img", f"a {color} {shape}", "", seed, 4, 7.5, "ddim", 64, 64,
                factors={"color": color, "shape": shape}, meta={"stage": "main"})
            for shape in ("circle", "square") for color in ("red", "blue") for seed in (1, 2)]
    with Ledger.open(run) as led:
        led.add_jobs(jobs)
        led.set_plan("main", [j.key for j in jobs])
        made = [j for j in jobs if j.factors["shape"] == "circle"]
        finish(led, made)
        led.put_scores([Score(j.key, METRIC, 10.0 + j.seed + (j.factors["color"] == "red")) for j in made])
    r = build_report(run, html=False)
    assert [c.factor for c in r.comparisons] == ["f.color"]
    assert r.skipped == [("f.shape", "any metric", "only 1 level ('circle') among the 4 images made; the plan "
                                                   "has 2 (4 images not made yet)")]


def test_compare_on_a_run_with_no_image_yet_says_so(tmp_path):
    with Ledger.open(tmp_path / "run") as led:
        led.add_jobs([Job("tiny", "fp", "txt2img", "a cat", "", 1, 4, 7.5, "ddim", 64, 64)])
        table = image_table(led)
    with pytest.raises(ValueError, match=r"no image of this run is made yet; run `harness run` first"):
        compare(table, "checkpoint")


def test_a_tables_only_report_says_the_earlier_page_predates_its_tables(crafted_run):
    from typer.testing import CliRunner

    from harness.cli import app

    assert build_report(crafted_run, html=False).stale_page is None  # no page yet: nothing to warn about
    build_report(crafted_run)
    before = (crafted_run / "index.html").read_text()
    r = CliRunner().invoke(app, ["report", str(crafted_run), "--no-html"])
    assert r.exit_code == 0, r.output
    assert f"note: {crafted_run / 'index.html'} and plots/ are an earlier report's" in r.stderr
    assert (crafted_run / "index.html").read_text() == before  # left as it was, not removed
    assert "earlier report's" not in CliRunner().invoke(app, ["report", str(crafted_run)]).stderr
