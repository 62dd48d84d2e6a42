"""Report and comparison behaviour end to end on the tiny model: stage images with seeds of their own,
comparisons on the experiment's compare_metrics alone, variants per init image, factors an edit dropped,
baselines spelled as the tables show them, and hints that name the run folder."""

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.core import Job, Score
from harness.ledger import Ledger
from harness.report import build_report
from harness.run import run_experiment
from harness.tables import image_table

ROOT = Path(__file__).resolve().parents[1]
CLIP = "clip_score:model=tiny,cache=none"
MAIN = ('name = "r"\nprompt = "a {@color: red|blue} fox"\nseeds = [1, 2]\ncheckpoints = ["tiny"]\nsteps = 2\n'
        f'width = 64\nheight = 64\nmetrics = ["{CLIP}"]\n')
OWN_SEEDS = '\n[[stages]]\nname = "refine"\nprompt = "__parent__, sharp"\nstrengths = [0.5]\nseeds = [7]\n'


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=ROOT)


def make_run(tmp_path: Path, text: str, name: str = "run") -> Path:
    exp = tmp_path / "exp.toml"
    exp.write_text(text)
    run_experiment(exp, out=tmp_path / name, progress=False)
    return tmp_path / name


def test_stage_images_with_seeds_of_their_own_pair_through_their_parents_seed(tmp_path, one_cpu_thread):
    """`seeds = [7]` gives every stage image of a variant seed 7: level red's image refined from red's seed-1
    parent pairs with blue's from blue's seed-1 parent (their parents' files differ, so pairing on init_image
    would pair none)."""
    run = make_run(tmp_path, MAIN + OWN_SEEDS)
    r = build_report(run, html=False)
    (color,) = [c for c in r.comparisons if c.factor == "f.color"]
    assert "parent_seed" in color.pair_on and "init_image" not in color.pair_on
    assert color.rows[0].n_pairs == 4 and color.n_excluded["unpaired"] == 0  # 2 main + 2 stage pairs
    with Ledger.open(run, readonly=True) as led:
        table = image_table(led)
        seed_of = {j.key: j.seed for j in led.all_jobs()}
    staged = table[table["parent_key"].notna()]
    assert (staged["seed"] == 7).all() and sorted(staged["parent_seed"]) == [1, 1, 2, 2]
    assert all(seed_of[p] == s for p, s in zip(staged["parent_key"], staged["parent_seed"]))
    # a stage's variants pool their parents' seeds (each stage image's init image is its own parent's file)
    variants = pd.read_parquet(run / "tables" / "variants.parquet")
    assert variants.loc[variants["stage"] == "refine", "n"].tolist() == [2, 2]


def test_stage_images_whose_levels_refine_different_parents_are_named_in_a_note(tmp_path, one_cpu_thread):
    """top_k = 1 keeps red's seed-1 image and blue's seed-2 one (scores set so): their stage images cannot
    pair, and `harness report` and `harness compare` say which stage and why, not only an unpaired count."""
    run = make_run(tmp_path, MAIN)
    with Ledger.open(run) as led:
        (metric,) = {m for m in led.scores_frame()["metric"] if m.startswith("clip_score")}
        best = {("red", 1), ("blue", 2)}
        led.put_scores([Score(j.key, metric, 50.0 if (j.factors["color"], j.seed) in best else 1.0)
                        for j in led.all_jobs(status="done")])
    make_run(tmp_path, MAIN + OWN_SEEDS + f'top_k = 1\nmetric = "{CLIP}"\n')
    note = ("stage refine: 2 of its 2 images have no pair at another level of f.color: a pair needs images refined "
            "from parents of the same seed, and the levels refine parents of different seeds (blue: 2; red: 1), as "
            "when top_k keeps each variant's best images")
    report = cli("report", str(run), "--no-html")
    assert report.returncode == 0, report.stderr
    assert f"Note: {note}" in report.stdout and "2 unpaired" in report.stdout
    compare = cli("compare", str(run), "--factor", "color", "--n-boot", "100")
    assert compare.returncode == 0, compare.stderr
    assert f"Note: {note}" in compare.stdout


def test_the_report_compares_on_compare_metrics_alone_and_names_what_it_cannot_compare(tmp_path, one_cpu_thread):
    """A run that scores only `health`: compared on it when compare_metrics names it; otherwise (or when
    compare_metrics names a metric not scored) every factor gets a `not compared:` line."""
    run = make_run(tmp_path, MAIN.replace(f'["{CLIP}"]', '["health"]') + 'compare_metrics = ["health"]\n')
    r = build_report(run, html=False)
    assert [(c.factor, c.metric) for c in r.comparisons] == [("f.color", "m.health")] and not r.skipped
    assert (run / "tables" / "comparisons.csv").is_file()

    (run / "experiment.toml").write_text(MAIN.replace(f'["{CLIP}"]', '["health"]') + f'compare_metrics = ["{CLIP}"]\n')
    r = build_report(run, html=False)
    ((factor, metric, why),) = r.skipped
    assert (factor, metric, r.comparisons) == ("f.color", CLIP, [])
    assert f"was not scored in this run (harness eval {run} -m " in why  # the run folder, not the word RUN

    (run / "experiment.toml").write_text(MAIN.replace(f'["{CLIP}"]', '["health"]'))
    out = cli("report", str(run), "--no-html")
    assert out.returncode == 0, out.stderr
    assert ("not compared: f.color on any metric: no metric to compare on by default: this run scored only "
            "health, which is compared only when named (the experiment's compare_metrics, or --metric)") in out.stdout


def test_variants_tell_init_images_apart(tmp_path, one_cpu_thread):
    from PIL import Image

    for name, rgb in (("a.png", (200, 30, 30)), ("b.png", (30, 30, 200))):
        Image.new("RGB", (64, 64), rgb).save(tmp_path / name)
    run = make_run(tmp_path, MAIN.replace("seeds = [1, 2]", "seeds = [1, 2, 3]")
                   + 'mode = ["img2img"]\ninit_images = ["a.png", "b.png"]\nstrengths = [0.5]\n')
    build_report(run, html=False)
    variants = pd.read_parquet(run / "tables" / "variants.parquet")
    assert len(variants) == 4 and variants["n"].tolist() == [3, 3, 3, 3]  # 2 prompts x 2 init images
    assert sorted(Path(p).name for p in variants["init_image"]) == ["a.png", "a.png", "b.png", "b.png"]


def test_a_drawn_strength_is_pooled_in_variants_and_factors_and_init_images_show_by_name(tmp_path, one_cpu_thread):
    """[randomize] draws each image's strength: variants pool the draws with the seeds (n = seeds x draws,
    with a spread), factors.* has no strength levels, and the page names the init image by its file name."""
    from PIL import Image

    init = tmp_path / "inputs" / "star.png"
    init.parent.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init)
    run = make_run(tmp_path, MAIN.replace("seeds = [1, 2]", "seeds = [1, 2, 3]") + f'mode = "img2img"\n'
                   f'init_images = "{init}"\n[randomize]\nseed = 0\ndraws = 2\nstrength = [0.5, 1.0]\n')
    build_report(run)
    images = pd.read_parquet(run / "tables" / "images.parquet")
    assert len(images) == 12 and images["strength"].nunique() > 2  # every draw its own strength
    variants = pd.read_parquet(run / "tables" / "variants.parquet")
    assert len(variants) == 2 and variants["n"].tolist() == [6, 6] and variants["sd"].notna().all()
    assert "strength" not in variants.columns or variants["strength"].isna().all()
    factors = pd.read_parquet(run / "tables" / "factors.parquet")
    assert set(factors["factor"]) == {"color"} and factors["n"].tolist() == [6, 6]
    page = (run / "index.html").read_text()
    assert str(init.parent) not in page and "<td>star.png</td>" in page


def test_a_factor_dropped_from_the_experiment_leaves_no_column_behind(tmp_path, one_cpu_thread):
    make_run(tmp_path, MAIN.replace("fox", "fox{@artist: |, by x}"))
    run = make_run(tmp_path, MAIN)  # artist dropped: the images of `a red fox` are kept, the others unplanned
    r = build_report(run)
    table = pd.read_parquet(run / "tables" / "images.parquet")
    assert [c for c in table.columns if c.startswith("f.")] == ["f.color"]
    (color,) = r.comparisons
    assert color.pair_on == ["checkpoint", "seed", "stage"]
    page = html.unescape((run / "index.html").read_text())
    records = json.loads(re.search(r'id="sheet-data">(.*?)</script>', page, re.DOTALL).group(1))
    assert {name for record in records.values() for name, _ in record["factors"]} == {"color"}


@pytest.fixture()
def marked_levels(tmp_path):
    """A run whose `style` levels are the empty one, and texts spelled like the marks `(empty)` and `—`."""
    from test_report import finish

    run = tmp_path / "run"
    jobs = [Job("tiny", "fp", "txt2img", f"a cat {style}", "", seed, 4, 7.5, "ddim", 64, 64,
                factors={"style": style}, meta={"stage": "main"})
            for style in ("", "(empty)", "—", "x") for seed in (1, 2)]
    with Ledger.open(run) as led:
        finish(led, jobs)
        led.put_scores([Score(j.key, "toy_color_match[want=red]", float(j.seed)) for j in jobs])
    return run


@pytest.mark.parametrize("spelling, baseline", [
    ("(empty)", ""), ("", ""), ('"(empty)"', "(empty)"), ('"—"', "—"), ("x", "x")])
def test_a_baseline_is_named_as_the_tables_show_it(marked_levels, spelling, baseline):
    out = cli("compare", str(marked_levels), "--factor", "style", "--baseline", spelling, "--format", "json",
              "--n-boot", "100")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["baseline"] == baseline


def test_a_bare_mark_for_a_literal_level_says_how_to_name_it(marked_levels):
    from harness.report import compare

    with Ledger.open(marked_levels, readonly=True) as led:
        table = image_table(led)
    with pytest.raises(ValueError, match="the level whose text is — is named as the tables show it, in quotes: "
                                         '"—"'):
        compare(table, "style", baseline="—")
    assert compare(table[table["f.style"] != ""], "style", baseline='"(empty)"').baseline == "(empty)"
    with pytest.raises(ValueError, match=r"levels: '\"\(empty\)\"', 'x', '\"—\"'; \(empty\) names the empty "
                                         r"level, which this factor does not have; the level whose text is \(empty\) "
                                         r'is named as the tables show it, in quotes: "\(empty\)"'):
        compare(table[table["f.style"] != ""], "style", baseline="(empty)")


def test_compares_hint_names_the_run_folder(marked_levels):
    out = cli("compare", str(marked_levels), "--factor", "style", "--metric", "watermark")
    assert out.returncode != 0 and f"(harness eval {marked_levels} -m watermark scores it)" in out.stderr


def test_a_misspelt_rows_fails_before_stale_extra_tables_are_removed(marked_levels):
    """An ablation table the plan no longer holds goes on the next report, but not on one that fails."""
    ablation = marked_levels / "tables" / "ablation.csv"
    ablation.parent.mkdir(exist_ok=True)
    ablation.write_text("clause,diff\n")
    with pytest.raises(ValueError, match="rows='styel' is not a factor or parameter"):
        build_report(marked_levels, rows="styel", html=False)
    assert ablation.is_file()
    assert build_report(marked_levels, html=False).dropped == ["ablation"] and not ablation.exists()


def test_stage_images_of_txt2img_and_img2img_parents_pair_by_how_their_parent_was_made(tmp_path, one_cpu_thread):
    """A main stage of txt2img and img2img images (the demo's design) refined by a later stage: each stage
    image starts from its own parent's file, never the same at two levels, so pairing on that file would pair
    none. They pair by how the parent was made (`parent_condition`) and the init image their chain started
    from: red's child of its seed-1 img2img parent with blue's child of its seed-1 img2img parent."""
    init = ROOT / "experiments" / "inputs" / "house.png"
    text = MAIN.replace("seeds = [1, 2]", f'seeds = [1, 2]\nmode = ["txt2img", "img2img"]\ninit_images = "{init}"\n'
                                          "strengths = [0.5]")
    run = make_run(tmp_path, text + '\n[[stages]]\nname = "refine"\nprompt = "__parent__, sharp"\nstrengths = [0.5]\n')
    with Ledger.open(run, readonly=True) as led:
        table = image_table(led)
    staged = table[table["parent_key"].notna()]
    assert sorted(staged["parent_condition"].unique()) == ["img2img 0.5 from house.png", "txt2img"]
    r = build_report(run, html=False)
    (color,) = [c for c in r.comparisons if c.factor == "f.color"]
    assert "parent_condition" in color.pair_on
    assert color.rows[0].n_pairs == 8 and color.n_excluded["unpaired"] == 0  # 4 main + 4 stage pairs
    variants = pd.read_parquet(run / "tables" / "variants.parquet")
    assert variants.loc[variants["stage"] == "refine", "n"].tolist() == [2, 2, 2, 2]  # per parent condition


def test_one_stages_images_cluster_as_in_the_whole_run(tmp_path, one_cpu_thread):
    """`--where stage=refine` keeps a later stage's own factor (`finish`) out of the clusters, as the whole
    run does: sibling refinements of one parent are not independent evidence. Comparing strengths, a stage
    that lists one strength of its own is said to have no other level to pair at."""
    from PIL import Image

    from harness.columns import where
    from harness.report import compare

    Image.new("RGB", (64, 64), (30, 30, 200)).save(tmp_path / "init.png")
    run = make_run(tmp_path, MAIN.replace("fox", "{@shape: fox|cat}") + 'mode = "img2img"\ninit_images = "init.png"\n'
                   'strengths = [0.5, 1.0]\n\n[[stages]]\nname = "refine"\nprompt = "__parent__, {@finish: sharp|soft}"\n'
                   'strengths = [0.5]\n')
    with Ledger.open(run, readonly=True) as ledger:
        table = image_table(ledger)
    whole = compare(table, "f.color", metric=CLIP, n_boot=200)
    part = compare(where(table, ["stage=refine"]), "f.color", metric=CLIP, n_boot=200)
    assert "clusters = prompt conditions (f.shape)" in whole.method and "(f.shape)" in part.method
    assert [r.n_clusters for r in part.rows] == [2] and [r.n_pairs for r in part.rows] == [16]
    cli_out = cli("compare", str(run), "--factor", "color", "--where", "stage=refine", "--format", "json")
    assert cli_out.returncode == 0, cli_out.stderr
    assert [r["n_clusters"] for r in json.loads(cli_out.stdout)["rows"]] == [2]
    strength = compare(table, "strength", metric=CLIP, n_boot=200)
    assert ("stage refine: 32 of its 32 images have no pair at another level of strength: they all have strength "
            "0.5, and pairs share their stage (pair_on)") in " ".join(strength.notes)
