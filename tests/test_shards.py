"""`--shard i/n` runs plus `harness merge` equal one full run."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app
from harness.ledger import Ledger
from harness.run import run_experiment

EXP = """
name = "sharded"
prompt = "a {red|blue|green} {cat|{@breed: dog}}"
seeds = [1, 2]
checkpoints = ["tiny"]
steps = 2
width = 64
height = 64
"""


def cli(*args):
    """The command line in this process (a fresh interpreter per command adds seconds and tests nothing more)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def harness(*args):
    r = cli(*args)
    assert r.exit_code == 0, (r.stderr, r.exception)
    return r


def test_two_shards_and_merge_equal_a_full_run(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(EXP)
    run_experiment(exp, out=tmp_path / "full", progress=False)
    run_experiment(exp, out=tmp_path / "s0", shard=(0, 2), progress=False)
    harness("run", exp, "--out", tmp_path / "s1", "--shard", "1/2")  # the CLI route too
    keys = {}
    for name in ("full", "s0", "s1"):
        with Ledger.open(tmp_path / name, readonly=True) as led:
            keys[name] = led.done_keys()
    assert keys["s0"] and keys["s1"] and not keys["s0"] & keys["s1"]
    assert keys["s0"] | keys["s1"] == keys["full"] and len(keys["full"]) == 12
    harness("merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "merged")
    with Ledger.open(tmp_path / "merged", readonly=True) as led:
        assert led.done_keys() == keys["full"] and led.planned_keys() == keys["full"]
        assert json.loads(led.get_meta("factor_nesting")) == [["cat|{dog}", "breed"]]  # nesting travels too
    for key in keys["full"]:
        a = np.asarray(Image.open(tmp_path / "full" / "images" / f"{key}.png"), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "merged" / "images" / f"{key}.png"), dtype=np.int16)
        assert np.abs(a - b).max() <= 1
    # a shard folder run again from its own copy, without --shard, goes on with its shard, not the whole plan
    (tmp_path / "s1" / "images" / f"{min(keys['s1'])}.png").unlink()
    rerun = harness("run", tmp_path / "s1" / "experiment.toml", "--out", tmp_path / "s1")
    assert "shard 1/2: the only shard this folder's earlier runs made" in rerun.stderr
    assert f"jobs: {len(keys['s1'])} planned, {len(keys['s1']) - 1} already done, 1 generated" in rerun.stdout
    whole = run_experiment(tmp_path / "s1" / "experiment.toml", out=tmp_path / "s1", shard=(0, 1), progress=False)
    assert (whole.planned, whole.generated) == (12, len(keys["s0"]))
    again = harness("merge", tmp_path / "s0", "--out", tmp_path / "merged")
    assert "0 added" in again.stdout and "not made yet" not in again.stdout
    # a shard merged into the other's folder: that folder holds both now, and goes on with the whole plan
    import shutil

    shutil.copytree(tmp_path / "s0", tmp_path / "both")
    harness("merge", tmp_path / "s1", "--out", tmp_path / "both")
    both = harness("run", tmp_path / "both" / "experiment.toml", "--out", tmp_path / "both")
    assert "shard 0/2" not in both.stderr and "jobs: 12 planned, 12 already done, 0 generated" in both.stdout
    # one shard alone: the merge and the report say how much of the plan is missing
    half = harness("merge", tmp_path / "s0", "--out", tmp_path / "half")
    assert f"not made yet: {len(keys['s1'])} images" in half.stdout
    assert f"not made yet: {len(keys['s1'])} images" in harness("report", tmp_path / "half", "--no-html").stdout
    # ... and a run there makes them: a folder shards were merged into runs the whole plan, even from one shard
    rest = harness("run", tmp_path / "half" / "experiment.toml", "--out", tmp_path / "half")
    assert "shard 0/2" not in rest.stderr and f"{len(keys['s1'])} generated" in rest.stdout


STAGED = EXP.replace("seeds = [1, 2]", "seeds = [1, 2, 3]") + """
metrics = ["health"]

[[stages]]
name = "refine"
prompt = "__parent__, {sharp|soft}"
strengths = [0.5]
top_k = 1
metric = "health"
"""


def test_shards_of_a_staged_experiment_merge_into_the_full_run_with_the_same_top_k(tmp_path):
    """Each shard gets whole variants (every seed), ranks them and makes all their children, so the merged
    run has exactly the full run's stage images: one parent per variant (top_k = 1), two prompts each."""
    exp = tmp_path / "exp.toml"
    exp.write_text(STAGED)
    run_experiment(exp, out=tmp_path / "full", progress=False)
    for i in range(2):
        run_experiment(exp, out=tmp_path / f"s{i}", shard=(i, 2), progress=False)
    harness("merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "merged")
    stages = {}
    for name in ("full", "merged"):
        with Ledger.open(tmp_path / name, readonly=True) as led:
            stages[name] = {(j.key, j.meta.get("stage")) for j in led.done_jobs()}
            assert led.planned_keys() == {key for key, _ in stages[name]}
    assert stages["merged"] == stages["full"]
    assert sum(stage == "refine" for _, stage in stages["full"]) == 6 * 2
    with Ledger.open(tmp_path / "merged", readonly=True) as led:  # init images: the parents merged here
        refine = [j for j in led.done_jobs() if j.meta.get("stage") == "refine"]
        assert refine and all(j.init_image == str(led.image_path(j.meta["parent_key"]).resolve()) for j in refine)
    # the shards' folders are gone: the stage images are scored against their parents in the merged folder
    import shutil

    from harness.evaluate import evaluate
    for i in range(2):
        shutil.rmtree(tmp_path / f"s{i}")
    with Ledger.open(tmp_path / "merged") as led:
        (summary,) = evaluate(led, ["clip_image_similarity:model=tiny"], log=lambda m: None)
    assert summary.scored == 18 + 12 and summary.nan == 0  # main images have no init image: not applicable
    assert summary.not_applicable == 18 and summary.not_applicable_reasons == {
        "item has no init image (only img2img items can be scored by this metric)": 18}


def test_shards_run_one_after_another_into_one_folder_are_all_reported(tmp_path):
    from harness.tables import image_table

    exp = tmp_path / "exp.toml"
    exp.write_text(EXP.replace("{cat|{@breed: dog}}", "cat"))
    run_experiment(exp, out=tmp_path / "run", shard=(0, 2), progress=False)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        first = set(image_table(led)["key"])
    run_experiment(exp, out=tmp_path / "run", shard=(1, 2), progress=False)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        both = set(image_table(led)["key"])
        assert led.unplanned_done() == 0
    assert first and first < both and len(both) == 6


def test_a_shard_run_into_a_folder_another_shard_ran_into_refines_only_its_own_chains(tmp_path):
    """Shard 1/2 run into shard 0/2's folder: its second stage (from the first) refines the first stage's
    images that start from its own main images, not shard 0's too, so it plans and counts only its own."""
    exp = tmp_path / "exp.toml"
    exp.write_text(STAGED + '\n[[stages]]\nname = "polish"\nfrom = "refine"\nprompt = "__parent__, crisp"\n'
                            'strengths = [0.5]\n')
    apart = run_experiment(exp, out=tmp_path / "apart", shard=(1, 2), progress=False)
    run_experiment(exp, out=tmp_path / "one", shard=(0, 2), progress=False)
    second = run_experiment(exp, out=tmp_path / "one", shard=(1, 2), progress=False)
    assert (second.planned, second.generated) == (apart.planned, apart.generated)
    full = run_experiment(exp, out=tmp_path / "full", progress=False)
    with Ledger.open(tmp_path / "one", readonly=True) as one, Ledger.open(tmp_path / "full", readonly=True) as led:
        assert len(one.done_keys()) == len(led.done_keys()) == full.planned


def test_merge_refuses_runs_of_different_experiments_before_merging_anything(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(EXP.replace("seeds = [1, 2]", "seeds = [1]").replace("{red|blue|green}", "red"))
    b.write_text(EXP.replace("seeds = [1, 2]", "seeds = [1]").replace("{red|blue|green}", "blue"))
    run_experiment(a, out=tmp_path / "ra", progress=False, evaluate_after=False)
    run_experiment(b, out=tmp_path / "rb", progress=False, evaluate_after=False)
    r = cli("merge", tmp_path / "ra", tmp_path / "rb", "--out", tmp_path / "m")
    assert r.exit_code != 0 and "different experiments" in r.stderr and str(tmp_path / "rb") in r.stderr
    r = cli("merge", tmp_path / "ra", tmp_path / "nope", "--out", tmp_path / "m")
    assert r.exit_code != 0 and "not a run folder" in r.stderr
    assert not (tmp_path / "m" / "images").exists()  # nothing merged from ra before the bad source was seen
    run_experiment(a, out=tmp_path / "m", progress=False, evaluate_after=False)
    before = sorted(p.name for p in (tmp_path / "m" / "images").iterdir())
    r = cli("merge", tmp_path / "ra", tmp_path / "m", "--out", tmp_path / "m")
    assert r.exit_code == 2 and f"{tmp_path / 'm'} is the run folder being merged into" in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path / "m" / "images").iterdir()) == before
    # someone's experiment folder (an experiment.toml, no ledger) is not a place to merge into
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "experiment.toml").write_text(EXP)
    r = cli("merge", tmp_path / "ra", "--out", tmp_path / "study")
    assert r.exit_code == 2 and "holds an experiment.toml but is not a run folder" in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == ["experiment.toml"]


def test_merge_refuses_shards_whose_prompt_file_held_other_text(tmp_path):
    (tmp_path / "p.txt").write_text("a {@color: red|blue} cat\n")
    exp = tmp_path / "exp.toml"
    exp.write_text(EXP.replace('prompt = "a {red|blue|green} {cat|{@breed: dog}}"', 'prompt = "@p.txt"'))
    run_experiment(exp, out=tmp_path / "s0", shard=(0, 2), progress=False)
    (tmp_path / "p.txt").write_text("a {@color: red|blue} dog\n")
    run_experiment(exp, out=tmp_path / "s1", shard=(1, 2), progress=False)
    r = cli("merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m")
    assert r.exit_code == 2 and "one experiment whose prompt file or wildcard files held other text" in r.stderr
    assert not (tmp_path / "m" / "images").exists()


def test_a_merge_keeps_the_scores_of_images_the_folder_made_itself(tmp_path):
    """The source's score of a key done in both folders was computed on its own pixels (another batch
    may differ by a level), so it does not become this folder's."""
    from harness.evaluate import evaluate

    exp = tmp_path / "exp.toml"
    exp.write_text(EXP.replace("seeds = [1, 2]", "seeds = [1]"))
    for name in ("a", "b"):
        run_experiment(exp, out=tmp_path / name, progress=False)
    with Ledger.open(tmp_path / "b") as led:
        evaluate(led, ["health"], log=lambda m: None)
    harness("merge", tmp_path / "b", "--out", tmp_path / "a")
    with Ledger.open(tmp_path / "a", readonly=True) as led:
        assert len(led.scores_frame()) == 0 and len(led.done_keys()) == 6


def test_stages_added_to_a_sharded_study_refine_each_shards_own_images_once(tmp_path):
    """Adding stages shards by variant, so some main images move to the other shard; each shard refines
    only its own, and the merged folder holds one child per parent and prompt, as a full run does."""
    exp = tmp_path / "exp.toml"
    exp.write_text(EXP)
    for i in range(2):
        run_experiment(exp, out=tmp_path / f"s{i}", shard=(i, 2), progress=False, evaluate_after=False)
    exp.write_text(EXP + '\n[[stages]]\nname = "refine"\nprompt = "__parent__, sharp"\nstrengths = [0.5]\n')
    for i in range(2):
        run_experiment(exp, out=tmp_path / f"s{i}", shard=(i, 2), progress=False, evaluate_after=False)
    harness("merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m")
    with Ledger.open(tmp_path / "m", readonly=True) as led:
        refine = [j for j in led.done_jobs() if j.meta.get("stage") == "refine"]
        main = [j for j in led.done_jobs() if j.meta.get("stage", "main") == "main"]
    assert len(main) == 12 and len(refine) == 12
    assert len({(j.prompt.removesuffix(", sharp"), j.seed) for j in refine}) == 12


def test_a_ledger_whose_setup_was_cut_off_is_set_up_again_by_the_next_run(tmp_path):
    import sqlite3

    exp = tmp_path / "exp.toml"
    exp.write_text(EXP.replace("seeds = [1, 2]", "seeds = [1]"))
    (tmp_path / "run").mkdir()
    sqlite3.connect(tmp_path / "run" / "ledger.sqlite").close()  # created, no tables: a full disk stopped it
    r = cli("report", tmp_path / "run", "--no-html")
    assert r.exit_code == 2 and "holds no ledger tables: setting it up was cut off" in r.stderr, r.stderr
    assert run_experiment(exp, out=tmp_path / "run", progress=False, evaluate_after=False).generated == 6


def test_a_merge_cut_off_after_recording_the_experiment_refuses_another_experiment_next(tmp_path, monkeypatch):
    import pytest

    import harness.run as run_module

    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(EXP.replace("seeds = [1, 2]", "seeds = [1]"))
    b.write_text(EXP.replace("seeds = [1, 2]", "seeds = [2]"))
    run_experiment(a, out=tmp_path / "ra", progress=False, evaluate_after=False)
    run_experiment(b, out=tmp_path / "rb", progress=False, evaluate_after=False)

    def cut_off(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(run_module, "write_atomic", cut_off)
    with pytest.raises(KeyboardInterrupt):
        run_module.merge_runs(tmp_path / "m", [tmp_path / "ra"], log=lambda m: None)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="different experiments"):
        run_module.merge_runs(tmp_path / "m", [tmp_path / "rb"], log=lambda m: None)
    run_module.merge_runs(tmp_path / "m", [tmp_path / "ra"], log=lambda m: None)
    assert (tmp_path / "m" / "experiment.toml").read_text() == (tmp_path / "ra" / "experiment.toml").read_text()


def test_merge_onto_a_full_disk_is_one_line_that_says_it_goes_on(tmp_path, monkeypatch):
    import errno

    from typer.testing import CliRunner

    import harness.run as run_module
    from harness.cli import app

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m" / "images" / "x.png"))
    monkeypatch.setattr(run_module, "merge_runs", full)
    r = CliRunner().invoke(app, ["merge", str(tmp_path / "s0"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "No space left on device" in r.output and "merge again, it goes on" in r.output
    assert "Traceback" not in r.output


def test_a_shards_report_names_the_factor_its_shard_holds_one_level_of(tmp_path):
    """Shard 0/2 of this plan makes the blue image only: its report says why color is not compared there
    (the whole plan has two colors), though the shard's ledger holds none of the other shard's jobs."""
    from harness.report import build_report

    exp = tmp_path / "exp.toml"
    exp.write_text('name = "s"\nprompt = "a {@color: red|blue} cat"\nseeds = [2]\ncheckpoints = ["tiny"]\n'
                   'steps = 2\nwidth = 64\nheight = 64\n')
    run_experiment(exp, out=tmp_path / "s0", shard=(0, 2), progress=False)
    with Ledger.open(tmp_path / "s0", readonly=True) as led:
        assert [j.factors["color"] for j in led.all_jobs()] == ["blue"]
    r = build_report(tmp_path / "s0", html=False)
    assert r.skipped == [("f.color", "any metric", "only 1 level ('blue') among the 1 images made; the plan has 2 "
                                                   "(1 images not made yet)")]
