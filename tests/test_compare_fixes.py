"""Fixes to `harness compare`: a setting drawn by [randomize] is no factor, a factor a checkpoint sets is
the checkpoint comparison (and a --pair-on that leaves checkpoint out says so), and the contact sheet's
comparison table leaves an empty note empty."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.stats import paired_compare


def _drawn_table() -> pd.DataFrame:
    """Two prompts x 4 seeds x 2 draws; steps and guidance drawn per seed and draw."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(4):
        for d in range(2):
            guidance, steps = float(rng.uniform(3, 9)), int(rng.integers(10, 30))
            for subject in ("cat", "dog"):
                rows.append({"key": f"{subject}-{s}-{d}", "f.subject": subject, "checkpoint": "toy", "seed": s,
                             "draw": d, "stage": "main", "guidance": guidance, "steps": steps,
                             "m.score": float(rng.normal()), "healthy": True})
    return pd.DataFrame(rows)


@pytest.fixture
def drawn_run(tmp_path, monkeypatch):
    """A run folder whose experiment draws steps and guidance, its image table stood in for the ledger's."""
    import harness.ledger
    import harness.tables

    run = tmp_path / "run"
    run.mkdir()
    (run / "ledger.sqlite").write_bytes(b"")
    (run / "experiment.toml").write_text('prompt = "a {cat|dog}"\n[randomize]\ndraws = 2\n'
                                         'steps = [10, 30]\nguidance = [3.0, 9.0]\n', encoding="utf-8")
    monkeypatch.setattr(harness.ledger.Ledger, "open", staticmethod(lambda *a, **k: contextlib.nullcontext(None)))
    monkeypatch.setattr(harness.tables, "image_table", lambda ledger: _drawn_table())
    return run


def test_compare_refuses_a_factor_drawn_by_randomize(drawn_run):
    r = CliRunner().invoke(app, ["compare", str(drawn_run), "--factor", "guidance", "--metric", "score"])
    assert r.exit_code == 2, r.output
    assert "drawn by the experiment's [randomize]" in r.output and "no levels to pair" in r.output
    assert "tables/drawn." in r.output and "settings drawn by [randomize]" in r.output
    assert "no complete pairs" not in r.output


def test_unknown_factor_lists_drawn_settings_apart(drawn_run):
    r = CliRunner().invoke(app, ["compare", str(drawn_run), "--factor", "subjct", "--metric", "score"])
    assert r.exit_code == 2, r.output
    varying = r.output.split("Factors that vary in this run:")[1].split("(")[0]
    assert "f.subject" in varying and "guidance" not in varying and "steps" not in varying
    assert "drawn by [randomize]" in r.output
    ok = CliRunner().invoke(app, ["compare", str(drawn_run), "--factor", "subject", "--metric", "score"])
    assert ok.exit_code == 0, ok.output  # the prompt factor still compares, paired on seed and draw


def _override_table() -> pd.DataFrame:
    """Checkpoints toy and ft, `[checkpoint.ft] guidance = 5.0` (the others 7.5): 6 prompts x 3 seeds."""
    rng = np.random.default_rng(1)
    return pd.DataFrame([{"key": f"{ck}-{p}-{s}", "f.subject": f"s{p}", "checkpoint": ck, "seed": s,
                          "stage": "main", "guidance": 5.0 if ck == "ft" else 7.5, "steps": 20,
                          "m.score": float(rng.normal()) + (1.0 if ck == "ft" else 0.0), "healthy": True}
                         for ck in ("toy", "ft") for p in range(6) for s in range(3)])


def test_no_pairs_note_says_a_checkpoint_sets_the_factor():
    c = paired_compare(_override_table(), factor="guidance", metric="score", rng=np.random.default_rng(0),
                       n_boot=100)
    note = c.rows[0].note
    assert c.rows[0].n_pairs == 0 and "checkpoint never take(s) the same value" in note
    assert "guidance is set by checkpoint" in note and "--factor checkpoint" in note
    assert "pass --pair-on without it" not in note


def test_no_pairs_note_still_advises_dropping_a_parameter_column():
    """strength, when comparing txt2img with img2img: not set by a checkpoint, so the old advice stands."""
    rows = [{"key": f"{m}-{p}-{s}-{st}", "f.subject": f"s{p}", "checkpoint": "toy", "seed": s, "stage": "main",
             "mode": m, "strength": st, "m.score": float(p + s), "healthy": True}
            for p in range(3) for s in range(2) for m, st in (("txt2img", None), ("img2img", 0.5), ("img2img", 0.75))]
    c = paired_compare(pd.DataFrame(rows), factor="mode", metric="score", rng=np.random.default_rng(0), n_boot=100)
    assert "pass --pair-on without it" in c.rows[0].note


def test_pair_on_without_checkpoint_notes_the_checkpoint_differs_within_pairs():
    c = paired_compare(_override_table(), factor="guidance", metric="score", rng=np.random.default_rng(0),
                       n_boot=100, pair_on=["f.subject", "seed", "stage"])
    assert c.rows[0].n_pairs == 18
    assert any(n.startswith("checkpoint differs between the images of a pair") and "set with guidance" in n
               for n in c.notes), c.notes


def test_sheet_comparison_leaves_an_empty_note_empty():
    from harness.sheet_tables import comparison_model

    rng = np.random.default_rng(0)
    rows = [{"key": f"{p}-{s}-{a}", "f.subject": f"s{p}", "f.artist": a, "seed": s,
             "m.score": float(rng.normal()), "healthy": True}
            for p in range(20) for s in range(2) for a in ("", "greg rutkowski")]
    c = paired_compare(pd.DataFrame(rows), factor="artist", metric="score", rng=rng, n_boot=100)
    assert c.rows[0].note == ""
    table = comparison_model(c)["tables"][0]
    row = dict(zip(table["head"], (cell["text"] for cell in table["body"][0])))
    assert row["note"] == "" and row["level"] == "greg rutkowski"


def test_sheet_tables_label_level_columns_only():
    from harness.sheet_tables import table_model

    frame = pd.DataFrame({"f.artist": ["", "x"], "negative_prompt": ["", "blurry"], "baseline": ["", ""],
                          "why_none": ["", "under 4 draws"]})
    body = [[cell["text"] for cell in row] for row in table_model(frame)["body"]]
    assert body == [["(empty)", "(empty)", "(empty)", ""], ["x", "blurry", "(empty)", "under 4 draws"]]


def _crossed(rng, clusters: int, seeds: int, seed_effect: float) -> pd.DataFrame:
    """clusters prompts x seeds x 2 arms; the treatment's difference is 0.5 plus, per seed, a shift shared
    by every prompt (sd `seed_effect`), plus a cluster effect and noise (sd 0.5 each)."""
    shift = rng.normal(0, seed_effect, seeds) if seed_effect else np.zeros(seeds)
    cluster = rng.normal(0, 0.5, clusters)
    rows = []
    for c in range(clusters):
        for s in range(seeds):
            base = rng.normal(20, 1)
            for arm, v in (("", base), (", by x", base + 0.5 + shift[s] + cluster[c] + rng.normal(0, 0.5))):
                rows.append({"key": f"{c}-{s}-{arm}", "f.subject": f"s{c}", "f.artist": arm, "checkpoint": "tiny",
                             "seed": s, "mode": "txt2img", "m.clip_score": v, "healthy": True})
    return pd.DataFrame(rows)


def test_a_difference_that_moves_with_the_seed_alike_across_prompts_is_noted_with_a_seed_interval():
    """Two of four seeds favour the treatment in every prompt: 30 prompts make the cluster interval narrow,
    but the evidence is four seeds; the note gives the interval with seeds as the units."""
    from harness.stats import paired_compare, t_interval

    df = _crossed(np.random.default_rng(0), 30, 4, seed_effect=0.0)
    df.loc[df["f.artist"] != "", "m.clip_score"] += np.where(df.loc[df["f.artist"] != "", "seed"] % 2 == 0, 4, -4)
    (row,) = paired_compare(df, factor="f.artist", metric="m.clip_score", rng=np.random.default_rng(1)).rows
    assert "the difference moves with the seed alike across prompts" in row.note
    d = df[df["f.artist"] != ""].set_index(["f.subject", "seed"])["m.clip_score"] - \
        df[df["f.artist"] == ""].set_index(["f.subject", "seed"])["m.clip_score"]
    lo, hi = t_interval(d.groupby(level="seed").mean())
    from scipy import stats as sps

    p = sps.ttest_1samp(d.groupby(level="seed").mean(), 0.0).pvalue
    assert f"with the 4 seeds as the units the 95% interval is [{lo:+.4g}, {hi:+.4g}] and p {p:.3g}" in row.note
    assert hi - lo > 1.5 * (row.ci_high - row.ci_low) and p > 0.2 > row.p_value  # the seeds say: not shown


def test_the_seed_interval_stays_within_what_a_difference_of_the_metric_can_be():
    """A 0/1 oracle: three of four seeds turn it on in every prompt, one in none. The t interval over the
    per-seed means reaches past +1, which no difference of two 0/1 scores can; the note cuts it there."""
    from harness.stats import paired_compare

    metric = "m.toy_color_match[want=red]"
    rows = [{"key": f"{c}-{s}-{arm}", "f.subject": f"s{c}", "f.artist": arm, "checkpoint": "toy", "seed": s,
             "mode": "txt2img", metric: float(arm != "" and s < 3), "healthy": True}
            for c in range(30) for s in range(4) for arm in ("", ", by x")]
    (row,) = paired_compare(pd.DataFrame(rows), factor="f.artist", metric=metric, n_boot=300,
                            rng=np.random.default_rng(0)).rows
    assert "with the 4 seeds as the units the 95% interval is [-0.04561, +1] and p 0.0577" in row.note


def test_no_seed_note_where_seeds_share_nothing_beyond_noise():
    from harness.stats import paired_compare

    noted = 0
    for r in range(20):
        df = _crossed(np.random.default_rng(100 + r), 30, 4, seed_effect=0.0)
        (row,) = paired_compare(df, factor="f.artist", metric="m.clip_score", n_boot=300,
                                rng=np.random.default_rng(r)).rows
        noted += "moves with the seed" in row.note
    assert noted <= 1


def test_the_checkpoint_table_shows_each_checkpoints_own_settings_and_what_differs():
    from harness.tables import checkpoint_summary

    rows = [{"checkpoint": ck, "fingerprint": f"fp-{ck}", "width": 128, "height": 128, "steps": 12,
             "guidance": g, "scheduler": "ddim", "healthy": True, "m.clip_score": 1.0, "seed": s}
            for ck, g in (("toy", 7.5), ("toy-ft", 5.0)) for s in (1, 2)]
    out = checkpoint_summary(pd.DataFrame(rows)).set_index("checkpoint")
    assert out.loc["toy", "guidance"] == "7.5" and out.loc["toy-ft", "guidance"] == "5.0"
    assert (out["steps"] == "12").all() and (out["scheduler"] == "ddim").all()
    assert (out["note"] == "checkpoints ran at different guidance").all()


def test_images_a_metric_does_not_apply_to_are_not_counted_as_unscored():
    """Image similarity to the init image has nothing to say of a txt2img image: its NaN is no failure."""
    metric = "m.clip_image_similarity:model=tiny"
    rows = []
    for subject in ("cat", "dog"):
        for seed in (1, 2, 3):
            for arm in ("", ", by x"):
                for mode, value in (("txt2img", np.nan), ("img2img", 0.5 + 0.1 * seed + (0.2 if arm else 0))):
                    rows.append({"key": f"{subject}{seed}{arm}{mode}", "f.subject": subject, "f.artist": arm,
                                 "checkpoint": "tiny", "seed": seed, "mode": mode, "healthy": True, metric: value,
                                 "strength": 0.5 if mode == "img2img" else np.nan})
    df = pd.DataFrame(rows)
    df.loc[0 + 1, metric] = np.nan  # one img2img image that failed to score
    c = paired_compare(df, factor="f.artist", metric=metric, rng=np.random.default_rng(0))
    assert c.n_excluded["not_applicable"] == 12 and c.n_excluded["unscored"] == 1
    assert "1 unscored" in c.to_text() and "12 the metric does not apply to (no init or parent image)" in c.to_text()


def test_the_default_baseline_passes_over_a_level_the_metric_never_scored():
    """An oracle that cannot judge the first artist (NaN on every image there) would leave every comparison
    with it empty: the first level with scores is the baseline, and a note says which it passed over."""
    from harness.stats import paired_compare

    metric = "m.toy_style_match"
    rows = [{"key": f"{a}-{s}", "f.artist": a, "checkpoint": "toy", "seed": s, "mode": "txt2img",
             metric: {"alphonse mucha": np.nan, "claude monet": 0.0, "ian mcque": 1.0}[a], "healthy": True}
            for a in ("alphonse mucha", "claude monet", "ian mcque") for s in range(6)]
    cmp = paired_compare(pd.DataFrame(rows), factor="f.artist", metric=metric, n_boot=200,
                         rng=np.random.default_rng(0))
    assert cmp.baseline == "claude monet"
    assert "baseline claude monet: the first level with a healthy scored image (alphonse mucha has none)" in \
        "; ".join(cmp.notes)
    ian = next(r for r in cmp.rows if r.level == "ian mcque")
    assert ian.n_pairs == 6 and ian.mean_diff == 1.0
    given = paired_compare(pd.DataFrame(rows), factor="f.artist", metric=metric, baseline="alphonse mucha",
                           n_boot=200, rng=np.random.default_rng(0))
    assert given.baseline == "alphonse mucha" and all(r.n_pairs == 0 for r in given.rows)
