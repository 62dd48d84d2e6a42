"""The runner end to end on the tiny model: real pipelines, SQLite, PNGs, processes."""

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app
from harness.ledger import Ledger, LedgerError
from harness.provenance import read_png_text, read_provenance
from harness.experiment import load_experiment
from harness.core import canonical_json
from harness.run import edited_since, run_experiment

from infotext import parse_infotext

ROOT = Path(__file__).resolve().parents[1]

SMALL = """
name = "small"
prompt = "a {red|blue} {cat|dog}"
negative_prompt = "blurry"
seeds = [1, 2]
checkpoints = ["tiny"]
mode = ["txt2img", "img2img"]
init_images = "init.png"
strengths = [0.5]
steps = 4
width = 64
height = 64
batch_size = 3
"""


def experiment(tmp_path, text=SMALL, name="exp.toml"):
    Image.new("RGB", (80, 60), (200, 30, 30)).save(tmp_path / "init.png")
    p = tmp_path / name
    p.write_text(text)
    return p


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_run_writes_every_image_with_readable_provenance(tmp_path):
    r = run_experiment(experiment(tmp_path), out=tmp_path / "run", progress=False)
    assert (r.planned, r.generated) == (16, 16)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        jobs = {j.key: j for j in led.all_jobs()}
        assert led.count("done") == 16
    files = sorted((tmp_path / "run" / "images").glob("*.png"))
    assert len(files) == 16
    for f in files:
        job = jobs[f.stem]
        info = parse_infotext(read_png_text(f)["parameters"])
        assert info.prompt == job.prompt and info.negative_prompt == "blurry"
        assert info.params["Steps"] == "4" and info.params["Seed"] == str(job.seed)
        assert info.params["CFG scale"] == "7.5" and info.params["Size"] == "64x64"
        assert info.params["Model hash"] == job.fingerprint[:10] and info.params["Model"] == "tiny"
        assert info.params.get("Denoising strength") == ("0.5" if job.mode == "img2img" else None)
        prov = read_provenance(f)
        assert prov["key"] == f.stem and prov["factors"] == dict(job.factors)
        assert prov["run"]["batch_size"] in (1, 2, 3) and prov["run"]["safety_checker"] == "off"
        assert prov["checkpoint"]["kind"] == "builtin" and prov["checkpoint"]["family"] == "tiny"
        assert Path(prov["checkpoint"]["source"]).is_dir() and "config" not in prov["checkpoint"]
        assert Image.open(f).size == (64, 64)
    copy = tmp_path / "run" / "experiment.toml"
    assert copy.read_text().endswith(SMALL)  # the text as written, with base_dir pinned above it
    # the copy runs from the run folder: init.png is found next to the original, nothing is redone
    again = run_experiment(copy, out=tmp_path / "run", progress=False)
    assert (again.planned, again.generated) == (16, 0)


def test_rerun_resumes_and_force_regenerates(tmp_path):
    exp = experiment(tmp_path)
    run_experiment(exp, out=tmp_path / "run", progress=False)
    again = run_experiment(exp, out=tmp_path / "run", progress=False)
    assert (again.already_done, again.generated) == (16, 0)
    forced = run_experiment(exp, out=tmp_path / "run", force=True, progress=False)
    assert forced.generated == 16
    # another experiment into this folder (a mistyped --out) is refused before anything changes
    copy = (tmp_path / "run" / "experiment.toml").read_bytes()
    other = experiment(tmp_path, SMALL.replace('name = "small"', 'name = "other"'), name="other.toml")
    r = subprocess.run([sys.executable, "-m", "harness", "run", str(other), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "holds experiment 'small', not 'other'" in r.stderr, r.stderr
    assert (tmp_path / "run" / "experiment.toml").read_bytes() == copy
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert led.get_meta("experiment_name") == "small" and led.count("done") == 16


def test_an_interrupted_force_keeps_every_old_image_until_it_is_remade_and_resumes(tmp_path):
    """--force remakes done images one batch at a time: until a job is remade its image and scores stay,
    and the next run (forced or not) remakes only the jobs not remade yet."""
    from harness.core import Score
    from harness.plan import make_plan
    from harness.run import RunResult, generate_jobs, prepare_run

    exp = experiment(tmp_path)
    run = tmp_path / "run"
    run_experiment(exp, out=run, progress=False)
    with Ledger.open(run) as led:
        led.put_scores([Score(j.key, "health", 1.0) for j in led.all_jobs()])
    before = {p.name: p.stat().st_mtime_ns for p in (run / "images").glob("*.png")}
    loaded = load_experiment(exp)
    plan = make_plan(loaded)
    ledger, pending = prepare_run(loaded, plan, run, force=True)
    try:
        assert len(pending) == 16 and ledger.count("done") == 16  # nothing deleted up front
        generate_jobs(loaded, plan, ledger, pending[:4], RunResult(run, 16, 0), exact=False, device="cpu",
                      batch_size=None, log=lambda m: None, progress=False)  # then "interrupted"
        remade = {j.key for j in pending[:4]}
        assert ledger.stale_keys() == {j.key for j in pending} - remade
        scored = ledger.scored_keys("health")
    finally:
        ledger.close()
    assert scored == {j.key for j in pending} - remade  # the remade images' old scores went with them
    after = {p.name: p.stat().st_mtime_ns for p in (run / "images").glob("*.png")}
    assert after.keys() == before.keys()
    assert sum(after[n] != before[n] for n in before) == 4
    resumed = run_experiment(exp, out=run, progress=False)  # no --force: goes on with the other 12
    assert (resumed.already_done, resumed.generated) == (4, 12)
    assert run_experiment(exp, out=run, progress=False).generated == 0


def test_an_experiment_toml_that_is_not_a_run_copy_is_never_overwritten(tmp_path):
    """--out pointing at a folder that holds someone's experiment.toml (or the experiment's own folder)."""
    exp = experiment(tmp_path, name="experiment.toml")
    text = exp.read_text()
    r = subprocess.run([sys.executable, "-m", "harness", "run", str(exp), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "holds an experiment.toml but is not a run folder" in r.stderr, r.stderr
    assert exp.read_text() == text and not (tmp_path / "ledger.sqlite").exists()


def test_a_folder_of_someone_elses_files_is_never_taken_over(tmp_path):
    """--out at a folder that holds files and no ledger: a run or a merge there is refused before it writes,
    since its reports would rewrite plots/ and index.html and remove the plots and thumbnails they did not
    draw. What setting a ledger up leaves behind (a run killed at its start) does not count."""
    from harness.run import merge_runs

    exp = experiment(tmp_path)
    mine = tmp_path / "mine"
    (mine / "plots").mkdir(parents=True)
    (mine / "plots" / "figure.png").write_bytes(b"my figure")
    (mine / "index.html").write_text("my page")
    before = sorted(str(p.relative_to(mine)) for p in mine.rglob("*"))
    r = CliRunner().invoke(app, ["run", str(exp), "--out", str(mine)])
    assert r.exit_code == 2, r.output
    assert (f"{mine} is not a run folder (no ledger.sqlite) and holds files (index.html, plots): the run would "
            "take it over") in r.output and "give --out a new or empty folder" in r.output, r.output
    with pytest.raises(LedgerError, match="the merge would take it over"):
        merge_runs(mine, [tmp_path / "elsewhere"])
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == before
    # a set-up cut off before the ledger was made (empty images/ and tables/, the lock, a hidden file)
    started = tmp_path / "started"
    for d in ("images", "tables"):
        (started / d).mkdir(parents=True)
    (started / "ledger.lock").write_text("")
    (started / ".DS_Store").write_bytes(b"")
    assert run_experiment(exp, out=started, progress=False, evaluate_after=False).generated == 16


def test_a_file_where_the_run_folder_keeps_a_folder_is_named_and_nothing_changes(tmp_path):
    """images/, tables/ or thumbs/ made a file (a stray copy, a mistyped mv): `run` and `report` say which
    path must be a folder, exit 2, and leave the images and the ledger as they were."""
    exp = experiment(tmp_path, text=SMALL.replace('mode = ["txt2img", "img2img"]', 'mode = "txt2img"')
                     .replace('init_images = "init.png"\nstrengths = [0.5]\n', "").replace("seeds = [1, 2]", "seeds = [1]"))
    run = tmp_path / "run"
    run_experiment(exp, out=run, progress=False, evaluate_after=False)
    images = {p.name: p.read_bytes() for p in (run / "images").iterdir()}
    ledger = (run / "ledger.sqlite").read_bytes()
    for name in ("images", "tables", "thumbs"):
        if (run / name).is_dir():
            shutil.move(run / name, tmp_path / "aside")
        (run / name).write_text("not a folder")
        for command in ("report", "run"):
            if name == "thumbs" and command == "run":
                continue  # a run makes no thumbnails
            r = CliRunner().invoke(app, [command, str(exp if command == "run" else run), "--out", str(run)]
                                   if command == "run" else [command, str(run)])
            assert r.exit_code == 2, r.output
            prefix = "error: " if command == "report" else ""  # as each command writes its other errors
            assert r.stderr == (f"{prefix}{run / name}: a file stands where this folder must be; move or rename it, "
                                "then run the command again\n"), r.output
        (run / name).unlink()
        if (tmp_path / "aside").exists():
            shutil.move(tmp_path / "aside", run / name)
    assert {p.name: p.read_bytes() for p in (run / "images").iterdir()} == images
    assert (run / "ledger.sqlite").read_bytes() == ledger
    assert CliRunner().invoke(app, ["report", str(run)]).exit_code == 0


def test_editing_experiment_adds_only_new_jobs(tmp_path):
    exp = experiment(tmp_path)
    run_experiment(exp, out=tmp_path / "run", progress=False)
    first_copy = (tmp_path / "run" / "experiment.toml").read_text()
    exp.write_text(SMALL.replace("seeds = [1, 2]", "seeds = [1, 2, 3]"))
    r = run_experiment(exp, out=tmp_path / "run", progress=False)
    assert (r.planned, r.already_done, r.generated) == (24, 16, 8)
    with sqlite3.connect(tmp_path / "run" / "ledger.sqlite") as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM jobs").fetchone() == (24, 24)
    # the version that made the first 16 images is kept beside the new copy
    (old,) = (tmp_path / "run" / "history").glob("experiment-*.toml")
    assert old.read_text() == first_copy and "seeds = [1, 2, 3]" in (tmp_path / "run" / "experiment.toml").read_text()
    exp.write_text(SMALL)  # back to the first version: its images return, and the second version is kept too
    assert run_experiment(exp, out=tmp_path / "run", progress=False).generated == 0
    assert len(list((tmp_path / "run" / "history").glob("experiment-*.toml"))) == 2


def test_the_run_folder_copies_of_an_experiment_named_by_its_file_run_again_into_that_folder(tmp_path):
    """No `name` key: the experiment is named by its file. The folder's experiment.toml and its history copies
    keep that name, so they run into the folder again (nothing to make) instead of being refused as another
    experiment, and a folder made before the name was kept apart from the settings is no edited one."""
    exp = experiment(tmp_path, text=SMALL.replace('name = "small"\n', ""), name="pets.toml")
    run = tmp_path / "run"
    run_experiment(exp, out=run, progress=False)
    exp.write_text(exp.read_text().replace("seeds = [1, 2]", "seeds = [1]"))
    run_experiment(exp, out=run, progress=False)
    (old,) = (run / "history").glob("experiment-*.toml")
    for copy in (old, run / "experiment.toml"):
        assert load_experiment(copy).name == "pets"
        assert run_experiment(copy, out=run, progress=False).generated == 0
    assert len(list((run / "history").glob("experiment-*.toml"))) == 2  # the two versions, each kept once
    with sqlite3.connect(run / "ledger.sqlite") as db:  # as a folder recorded the settings with the name
        settings = json.loads(db.execute("SELECT value FROM meta WHERE name = 'experiment'").fetchone()[0])
        db.execute("UPDATE meta SET value = ? WHERE name = 'experiment'", (canonical_json({**settings, "name": "x"}),))
    with Ledger.open(run, readonly=True) as ledger:
        assert not edited_since(ledger, load_experiment(run / "experiment.toml"))


def test_a_run_of_an_edit_stopped_after_writing_its_copy_files_no_history_of_itself(tmp_path):
    """Stopped between writing RUN/experiment.toml and recording the new settings, the next run still sees an
    edit; the copy it would file as the earlier version is this version, so only the first one is kept."""
    import subprocess
    import sys

    exp = experiment(tmp_path)
    run_experiment(exp, out=tmp_path / "run", progress=False)
    first_copy = (tmp_path / "run" / "experiment.toml").read_text()
    exp.write_text(SMALL.replace("seeds = [1, 2]", "seeds = [1, 2, 3]"))
    stopped = subprocess.run([sys.executable, "-c", f"""
import json
import os
from harness.ledger import Ledger
from harness.core import canonical_json
from harness.run import edited_since, run_experiment
real = Ledger.set_meta
def stop(self, key, value):
    if key == "experiment_name":
        os._exit(9)  # the process dies here, as a kill would stop it
    return real(self, key, value)
Ledger.set_meta = stop
run_experiment({str(exp)!r}, out={str(tmp_path / "run")!r}, progress=False)
"""], capture_output=True, text=True)
    assert stopped.returncode == 9, stopped.stderr
    assert "seeds = [1, 2, 3]" in (tmp_path / "run" / "experiment.toml").read_text()  # the copy got written
    assert run_experiment(exp, out=tmp_path / "run", progress=False).generated == 8
    (old,) = (tmp_path / "run" / "history").glob("experiment-*.toml")
    assert old.read_text() == first_copy


def test_an_edited_prompt_file_is_a_new_version_kept_with_its_text_inline(tmp_path):
    import tomllib

    (tmp_path / "p.txt").write_text("a {red|blue} cat\n")
    text = SMALL.replace('prompt = "a {red|blue} {cat|dog}"', 'prompt = "@p.txt"').replace("seeds = [1, 2]", "seeds = [1]")
    exp = experiment(tmp_path, text.replace('mode = ["txt2img", "img2img"]\ninit_images = "init.png"\n'
                                            'strengths = [0.5]', 'mode = "txt2img"'))
    run, copy = tmp_path / "run", tmp_path / "run" / "experiment.toml"
    assert run_experiment(exp, out=run, progress=False).generated == 2
    first = copy.stat().st_mtime_ns
    time.sleep(0.05)
    assert run_experiment(exp, out=run, progress=False).generated == 0
    assert copy.stat().st_mtime_ns == first  # the same version: its copy keeps the time it was first run
    (tmp_path / "p.txt").write_text("a {red|green} cat\n")
    r = run_experiment(exp, out=run, progress=False)
    assert (r.generated, r.unplanned) == (1, 1)
    (kept,) = (run / "history").glob("experiment-*.toml")
    assert tomllib.loads(kept.read_text())["prompt"] == "a {red|blue} cat"
    again = run_experiment(kept, out=run, progress=False)  # the earlier version, as it ran
    assert (again.generated, again.already_done, again.unplanned) == (0, 2, 1)


def test_a_factor_added_to_the_template_describes_the_images_already_made(tmp_path):
    """Appending `{@artist: |, by x}` keeps the 16 earlier images (their prompts are unchanged) and records
    them as the artist "" level, so the A/B table is the same as a fresh run's; a renamed factor likewise."""
    from harness.report import compare
    from harness.tables import image_table

    exp = experiment(tmp_path)
    run_experiment(exp, out=tmp_path / "run", progress=False, evaluate_after=False)
    exp.write_text(SMALL.replace('"a {red|blue} {cat|dog}"', '"a {@hue: red|blue} {cat|dog}{@artist: |, by x}"'))
    r = run_experiment(exp, out=tmp_path / "run", progress=False, evaluate_after=False)
    assert (r.already_done, r.generated) == (16, 16)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        table = image_table(led)
    assert len(table) == 32 and "f.color" not in table.columns
    assert table["f.artist"].notna().all() and table["f.hue"].notna().all()
    assert (table.loc[~table["prompt"].str.contains("by x"), "f.artist"] == "").sum() == 16
    table["m.brightness"] = [float(np.asarray(Image.open(tmp_path / "run" / p)).mean()) for p in table["image"]]
    c = compare(table, "artist", metric="brightness", n_boot=100)
    assert c.rows[0].n_pairs == 16 and c.n_excluded["unpaired"] == 0


def test_an_edited_experiment_reports_only_what_it_asks_for_and_undoing_the_edit_brings_images_back(tmp_path):
    from harness.evaluate import evaluate
    from harness.report import build_report
    from harness.tables import image_table

    exp = experiment(tmp_path)
    run_experiment(exp, out=tmp_path / "run", progress=False)
    exp.write_text(SMALL.replace("steps = 4", "steps = 3"))
    r = run_experiment(exp, out=tmp_path / "run", progress=False)
    assert (r.generated, r.unplanned) == (16, 16)
    assert len(list((tmp_path / "run" / "images").glob("*.png"))) == 32  # nothing made earlier is deleted
    with Ledger.open(tmp_path / "run") as led:
        table = image_table(led)
        assert len(table) == 16 and set(table["steps"]) == {3}
        scored = evaluate(led, ["health"], log=lambda m: None)
        assert scored[0].scored == 16 and len(led.scored_keys(scored[0].metric)) == 16
    report = build_report(tmp_path / "run", html=False)
    assert report.images == 16 and report.excluded["unplanned"] == 16
    exp.write_text(SMALL)  # undo the edit: the first images are current again, none regenerated
    back = run_experiment(exp, out=tmp_path / "run", progress=False)
    assert (back.generated, back.already_done, back.unplanned) == (0, 16, 16)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert set(image_table(led)["steps"]) == {4}


def test_an_ablation_of_an_edited_experiment_leaves_out_the_earlier_main_images(tmp_path):
    from harness.plan import Plan, make_plan
    from harness.tables import image_table
    from harness.run import prepare_run

    exp = experiment(tmp_path)
    run_experiment(exp, out=tmp_path / "run", progress=False)
    exp.write_text(SMALL.replace("steps = 4", "steps = 3"))
    edited = make_plan(load_experiment(exp))
    ledger, _ = prepare_run(edited.experiment, Plan(edited.experiment, (), (), edited.checkpoints), tmp_path / "run",
                            jobs=[], part="ablation")
    with ledger:
        assert len(image_table(ledger)) == 0 and ledger.unplanned_done() == 16
        assert ledger.planned_keys() == {j.key for j in edited.jobs}


def test_settings_this_machine_cannot_honour_fail_before_the_run_folder_exists(tmp_path):
    cases = [(SMALL + 'device = "cpu"\ndtype = "fp16"\n', [], "dtype='fp16' on device 'cpu'"),
             (SMALL + 'device = "cpu"\nmemory = ["model_cpu_offload"]\n', [], "needs a CUDA device"),
             (SMALL, ["--device", "tpu"], "device='tpu': expected 'auto', 'cpu'")]
    for i, (text, args, expected) in enumerate(cases):
        exp = experiment(tmp_path, text, name=f"e{i}.toml")
        r = subprocess.run([sys.executable, "-m", "harness", "run", str(exp), "--out", str(tmp_path / f"run{i}"), *args],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert (f"\n{exp} (--device): " if args else f"\n{exp} (its device, dtype and memory keys): ") in "\n" + r.stderr
        assert not (tmp_path / f"run{i}").exists()


def test_a_checkpoints_own_dtype_this_machine_cannot_use_is_named_by_its_key(tmp_path):
    """The experiment's dtype is fine on the CPU; the one checkpoint table asking for fp16 is the problem."""
    from harness.core import SettingsError

    exp = experiment(tmp_path, SMALL + 'device = "cpu"\n[checkpoint.tiny]\ndtype = "fp16"\n')
    with pytest.raises(SettingsError) as caught:
        run_experiment(exp, out=tmp_path / "run", progress=False)
    assert str(caught.value).startswith(f"{exp} (key 'checkpoint.tiny.dtype'): dtype='fp16' on device 'cpu'")
    assert not (tmp_path / "run").exists()


def test_a_run_folder_in_use_or_a_file_in_its_place_is_a_clean_error(tmp_path):
    exp = experiment(tmp_path)
    (tmp_path / "file").write_text("x")
    r = subprocess.run([sys.executable, "-m", "harness", "run", str(exp), "--out", str(tmp_path / "file")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "file" in r.stderr and "Traceback" not in r.stderr, r.stderr
    with Ledger.open(tmp_path / "busy"):
        r = subprocess.run([sys.executable, "-m", "harness", "run", str(exp), "--out", str(tmp_path / "busy")],
                           capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "open for writing by another process" in r.stderr and "Traceback" not in r.stderr


def test_same_job_gives_identical_pixels_and_batch_within_one_level(tmp_path):
    exp = experiment(tmp_path)
    run_experiment(exp, out=tmp_path / "a", progress=False)
    run_experiment(exp, out=tmp_path / "b", progress=False)
    run_experiment(exp, out=tmp_path / "c", exact=True, progress=False)
    for f in (tmp_path / "a" / "images").glob("*.png"):
        a, b, c = pixels(f), pixels(tmp_path / "b" / "images" / f.name), pixels(tmp_path / "c" / "images" / f.name)
        assert np.array_equal(a, b)
        assert np.abs(a - c).max() <= 1


def test_two_streams_make_every_image_once_with_the_same_pixels(tmp_path):
    exp = experiment(tmp_path)
    streamed = experiment(tmp_path, SMALL.replace("batch_size = 3", "batch_size = 1\nstreams = 2"), "streamed.toml")
    run_experiment(exp, out=tmp_path / "one", progress=False)
    r = run_experiment(streamed, out=tmp_path / "two", progress=False)
    assert r.generated == 16
    with Ledger.open(tmp_path / "two", readonly=True) as led:
        assert len(led.done_keys()) == 16
    for f in (tmp_path / "one" / "images").glob("*.png"):
        assert np.abs(pixels(f) - pixels(tmp_path / "two" / "images" / f.name)).max() <= 1


def test_out_of_memory_halves_the_batch_and_completes(tmp_path, monkeypatch):
    import torch
    import harness.generate as gen

    real = gen.generate_batch
    sizes = []

    def flaky(pipe, jobs, **kw):
        sizes.append(len(jobs))
        if len(jobs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pipe, jobs, **kw)

    monkeypatch.setattr(gen, "generate_batch", flaky)
    # One stream, as on a GPU (where memory runs out): the reduced batch size carries over to later batches.
    exp = experiment(tmp_path, SMALL.replace("batch_size = 3", "batch_size = 3\nstreams = 1"), "one.toml")
    r = run_experiment(exp, out=tmp_path / "run", progress=False)
    assert r.generated == 16 and r.oom_events and "retrying with batch size 1" in r.oom_events[0]
    # Learned once: the later groups (txt2img and img2img at the same size) start at the size that fits.
    assert sizes.count(3) == 1 and set(sizes) == {1, 3} and len(r.oom_events) == 1
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert set(led.jobs_frame()["batch_size"]) == {1}


def test_out_of_memory_at_batch_size_one_is_a_one_line_error_naming_the_image(tmp_path, monkeypatch):
    import torch
    from typer.testing import CliRunner

    import harness.generate as gen
    from harness.cli import app

    def no_memory(pipe, jobs, **kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(gen, "generate_batch", no_memory)
    exp = experiment(tmp_path, SMALL.replace("batch_size = 3", "batch_size = 2\nstreams = 1"))
    result = CliRunner().invoke(app, ["run", str(exp), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output, (result.output, result.exception)
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("out of memory with batch size 1")]
    assert line.startswith("out of memory with batch size 1 making image ") and "prompt 'a red cat'" in line
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert led.done_keys() == set() and len(led.pending_jobs()) == 16


KILL = SMALL.replace("seeds = [1, 2]", "seeds = { count = 12 }").replace("batch_size = 3", "batch_size = 2") \
    .replace('mode = ["txt2img", "img2img"]', 'mode = "txt2img"').replace('init_images = "init.png"\n', "") \
    .replace("strengths = [0.5]\n", "")


def test_sigkill_mid_run_then_rerun_gives_every_job_exactly_once(tmp_path):
    exp = experiment(tmp_path, KILL)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "harness", "run", str(exp), "--out", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    images = run_dir / "images"
    while time.time() < deadline and proc.poll() is None:
        if images.is_dir() and len(list(images.glob("*.png"))) >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Ledger.open(run_dir, readonly=True) as led:
        done_at_kill = led.count("done")
    assert 0 < done_at_kill < 48
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with Ledger.open(run_dir, readonly=True) as led:
        frame = led.jobs_frame()
        assert len(frame) == 48 and frame["key"].is_unique and set(frame["status"]) == {"done"}
    files = sorted(images.glob("*.png"))
    assert sorted(f.stem for f in files) == sorted(frame["key"])
    assert not [p for p in images.iterdir() if not p.name.endswith(".png")]
    for f in files:
        Image.open(f).load()
    assert f"{48 - done_at_kill} generated" in r.stdout or "generated" in r.stdout


def test_streams_auto_is_two_on_a_multicore_cpu_and_one_on_accelerators(monkeypatch):
    import torch

    from harness.worker import resolve_streams

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert resolve_streams("auto", "cpu") == 2
    assert resolve_streams(3, "cpu") == 3
    assert resolve_streams("auto", "cuda:0") == 1 and resolve_streams(4, "cuda") == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert resolve_streams("auto", "cpu") == 1


def test_a_rerun_says_which_finished_images_were_damaged_or_missing(tmp_path):
    exp = experiment(tmp_path)
    run_experiment(exp, out=tmp_path / "run", progress=False)
    first, second = sorted((tmp_path / "run" / "images").glob("*.png"))[:2]
    first.unlink()
    second.write_bytes(second.read_bytes()[:-30])
    said: list[str] = []
    r = run_experiment(exp, out=tmp_path / "run", progress=False, log=said.append)
    assert any(m.startswith("2 finished image(s) were missing, damaged or changed (1 missing, 1 truncated")
               and m.endswith(") and will be made again") for m in said), said
    assert (r.already_done, r.generated) == (14, 2)


def test_a_damaged_image_of_an_earlier_version_is_not_promised_to_this_run(tmp_path):
    """After an edit that drops `dog`, a damaged `dog` image belongs to no job this version plans: the rerun
    says so rather than that it will be made again, and makes none."""
    from harness.ledger import Ledger

    exp = experiment(tmp_path, SMALL.replace('mode = ["txt2img", "img2img"]\ninit_images = "init.png"\n'
                                             'strengths = [0.5]', 'mode = ["txt2img"]'))
    run_experiment(exp, out=tmp_path / "run", progress=False)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        (dog, *_) = [j.key for j in led.all_jobs() if "dog" in j.prompt]
    (tmp_path / "run" / "images" / f"{dog}.png").write_bytes(b"not a png")
    exp.write_text(exp.read_text().replace("{cat|dog}", "{cat|cow}"))
    said: list[str] = []
    r = run_experiment(exp, out=tmp_path / "run", progress=False, log=said.append)
    assert any(m.startswith("1 finished image(s) were missing, damaged or changed") and m.endswith(
        "1 of them belong to no job of this version's first stage (an earlier version of the experiment, or a "
        "later stage), and are made again when a run plans them") for m in said), said
    assert r.generated == 4  # the cow images only


@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "interrupted"),
                                                 (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_ctrl_c_with_two_streams_stops_soon_keeps_finished_batches_and_resumes(tmp_path, signum, code, said):
    """SIGINT (or SIGTERM: a scheduler's time limit, `timeout`, `kill`) just after both CPU streams began
    their second batches: they stop at their next denoising step instead of finishing those batches, every
    image on disk is marked done, and the rerun makes only the rest."""
    exp = experiment(tmp_path, 'name = "intr"\nprompt = "a {red|blue} {cat|dog}"\nseeds = [1, 2]\n'
                     'checkpoints = ["tiny"]\nsteps = 100\nwidth = 64\nheight = 64\nbatch_size = 2\nstreams = 2\n')
    run = tmp_path / "run"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(exp), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    while time.perf_counter() - started < 300 and proc.poll() is None and \
            len(list((run / "images").glob("*.png"))) < 4:
        time.sleep(0.05)
    first_batches = time.perf_counter() - started  # loading, then one batch in each stream
    time.sleep(0.3)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signum)
    sent, lines = time.perf_counter(), []
    for line in proc.stderr:  # timed to the line that says it stopped, not to the interpreter's exit
        lines.append(line)
        if f"{said}: what was finished is kept" in line:
            break
    stopped_after = time.perf_counter() - sent
    _, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == code and f"{said}: what was finished is kept" in err, err[-2000:]
    assert "Traceback" not in err
    with Ledger.open(run, readonly=True) as led:
        done = led.done_keys()
    assert {p.stem for p in (run / "images").glob("*.png")} == done and 4 <= len(done) < 8
    # finishing the second batches would take about as long as the first ones did
    assert stopped_after < 0.5 * first_batches, (stopped_after, first_batches)
    r = run_experiment(exp, out=run, progress=False)
    assert (r.already_done, r.generated) == (len(done), 8 - len(done))


def test_resuming_on_another_device_or_dtype_says_the_pixels_differ(tmp_path):
    """A study started on a GPU in fp16 and resumed on the CPU in fp32 mixes images whose pixels differ."""
    exp = experiment(tmp_path)
    run_experiment(exp, out=tmp_path / "run", progress=False)
    with sqlite3.connect(tmp_path / "run" / "ledger.sqlite") as conn:  # as if made on a GPU
        conn.execute("UPDATE jobs SET device = 'cuda:0', dtype_used = 'fp16'")
    next(iter((tmp_path / "run" / "images").glob("*.png"))).unlink()
    said: list[str] = []
    r = run_experiment(exp, out=tmp_path / "run", progress=False, log=said.append)
    assert r.generated == 1
    assert any(m.startswith("note: this folder's finished images were made with cuda fp16; this run makes them "
                            "with cpu fp32. Pixels differ") for m in said), said
    said.clear()
    next(iter((tmp_path / "run" / "images").glob("*.png"))).unlink()
    with sqlite3.connect(tmp_path / "run" / "ledger.sqlite") as conn:
        conn.execute("UPDATE jobs SET device = 'cpu', dtype_used = 'fp32'")
    run_experiment(exp, out=tmp_path / "run", progress=False, log=said.append)
    assert not any("Pixels differ" in m for m in said)


def test_the_run_summary_counts_every_image_scored_as_it_generated(tmp_path):
    exp = experiment(tmp_path, SMALL + 'metrics = ["health"]\n')
    r = subprocess.run([sys.executable, "-m", "harness", "run", str(exp), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "\nhealth: 16 images scored; mean 1\n" in r.stdout and "in this pass" not in r.stdout
    assert "Loading" not in r.stderr, r.stderr  # diffusers' and transformers' loading bars only on a terminal


def test_the_infotext_names_the_schedule_and_carries_no_control_character(tmp_path):
    """A run with DPM++ 2M writes `Schedule type: Uniform` (the web UI would read the bare sampler as
    Karras), and a prompt holding a NUL is written with U+FFFD in the infotext, exact in the record."""
    text = ('name = "s"\nprompt = "a red\\u0000cat"\nseeds = [1]\ncheckpoints = ["tiny"]\nsteps = 2\n'
            'width = 64\nheight = 64\nscheduler = "dpmpp_2m"\n')
    run_experiment(experiment(tmp_path, text), out=tmp_path / "run", progress=False)
    (image,) = (tmp_path / "run" / "images").glob("*.png")
    info = parse_infotext(read_png_text(image)["parameters"])
    assert info.params["Sampler"] == "DPM++ 2M" and info.params["Schedule type"] == "Uniform"
    assert info.prompt == "a red\ufffdcat" and read_provenance(image)["job"]["prompt"] == "a red\x00cat"


def test_an_unknown_executor_or_a_missing_ray_is_refused_before_the_run_folder_is_made(tmp_path, monkeypatch):
    from harness.core import SettingsError

    exp = experiment(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    for executor, expected in (("ray", "executor 'ray' needs Ray: pip install 'harness[ray]'"),
                               ("dask", "executor 'dask': expected one of local, ray")):
        with pytest.raises(SettingsError, match=re.escape(expected)):
            run_experiment(exp, out=tmp_path / "run", executor=executor, progress=False)
        assert not (tmp_path / "run").exists()


def test_ray_batches_for_gpu_workers_are_not_sized_on_the_drivers_gpu(monkeypatch):
    """With an automatic batch size, GPU actors size their own batches; the driver (perhaps without a GPU)
    must not query CUDA memory for them."""
    import torch

    from harness.batching import MAX_BATCH
    from harness.core import Job
    from harness.executors.ray_executor import work_units

    def no_driver_gpu(*args, **kwargs):
        raise RuntimeError("Found no NVIDIA driver on your system")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_driver_gpu)
    jobs = [Job("tiny", "f", "txt2img", f"p{i}", "", i, 2, 7.5, "ddim", 512, 512) for i in range(40)]
    units = work_units(jobs, "cuda", exact=False, batch_size=None)
    assert [len(u) for u in units] == [MAX_BATCH, MAX_BATCH, 40 - 2 * MAX_BATCH]
    assert [len(u) for u in work_units(jobs, "cuda", exact=False, batch_size=6)][:2] == [6, 6]
    assert {len(u) for u in work_units(jobs, "cuda", exact=True, batch_size=None)} == {1}


def test_the_unhealthy_count_is_the_folders_with_this_runs_share(tmp_path):
    """An image found unhealthy earlier still counts once a run that makes others, or none, goes on in the
    folder: the line gives the folder's count, as the report does, and how many this run made."""
    from typer.testing import CliRunner

    from harness.cli import app

    exp = experiment(tmp_path, 'name = "h"\nprompt = "a {red|blue} cat"\nseeds = [1]\ncheckpoints = ["tiny"]\n'
                     'steps = 2\nwidth = 64\nheight = 64\n')
    run = tmp_path / "run"
    first = CliRunner().invoke(app, ["run", str(exp), "--out", str(run)])
    assert first.exit_code == 0 and "unhealthy images" not in first.stdout, first.output
    with sqlite3.connect(run / "ledger.sqlite") as conn:  # as the health check finds a black image
        (key, health), *_ = conn.execute("SELECT key, health FROM jobs ORDER BY key").fetchall()
        conn.execute("UPDATE jobs SET health = ? WHERE key = ?", (json.dumps({**json.loads(health), "ok": False}), key))
    again = CliRunner().invoke(app, ["run", str(exp), "--out", str(run)])
    assert again.exit_code == 0 and "0 generated" in again.stdout, again.output
    assert "unhealthy images: 1 of the 2 finished (0 made by this run; black, uniform, NaN" in again.stdout
    exp.write_text(exp.read_text().replace("seeds = [1]", "seeds = [1, 2]"))
    more = CliRunner().invoke(app, ["run", str(exp), "--out", str(run)])
    assert "2 generated" in more.stdout and "unhealthy images: 1 of the 4 finished (0 made by this run" in more.stdout
