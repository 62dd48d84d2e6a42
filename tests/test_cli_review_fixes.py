"""Bad input and unwritable places get one clear line, before anything is generated: an ablation metric's
bad option, a non-name checkpoint beside per-checkpoint tables, a report that cannot write its tables,
`toy train --out` naming a file, a ledger whose set-up was cut off, and a run folder on a read-only disk
(read as it is; written with a line that says why not)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.experiment import ExperimentError, experiment_from_dict
from harness.ledger import Ledger, LedgerError

EXP = 'prompt = "a castle, oil painting"\nseeds = [1, 2]\ncheckpoints = ["tiny"]\nsteps = 1\nwidth = 64\nheight = 64\n'


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_ablate_refuses_a_bad_metric_option_before_generating(tmp_path):
    (tmp_path / "e.toml").write_text(EXP)
    r = invoke("ablate", tmp_path / "e.toml", "--out", tmp_path / "out", "-m", "clip_score:model=tiny",
               "-m", "clip_score:model=tiny", "-m", "clip_score:model=nope")
    assert r.exit_code == 2 and "--metric 'clip_score:model=nope'" in r.output and "nope" in r.output
    assert not list((tmp_path / "out").rglob("*.png"))


def test_a_checkpoint_that_is_not_a_name_is_named_beside_per_checkpoint_tables(tmp_path):
    raw = {"prompt": "a", "checkpoints": ["tiny", 5], "checkpoint": {"tiny": {"x": {"y": 1}}}}
    with pytest.raises(ExperimentError) as e:
        experiment_from_dict(raw, tmp_path / "e.toml")
    assert e.value.problems == ["key 'checkpoints[1]': got 5, expected a checkpoint name, hub id or path",
                                "unknown key 'checkpoint.tiny.x'; valid keys: config, dtype, guidance, height, "
                                "scheduler, steps, width"], e.value.problems


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ro")
    (root / "e.toml").write_text(EXP)
    r = invoke("run", root / "e.toml", "--out", root / "run")
    assert r.exit_code == 0, r.output
    return root / "run"


def test_report_that_cannot_write_its_tables_says_so_in_one_line(run_folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_folder, run)
    shutil.rmtree(run / "tables")
    (run / "tables").write_text("a file where the tables folder goes")
    r = invoke("report", run, "--no-html")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output == (f"error: {run / 'tables'}: a file stands where this folder must be; move or rename it, then "
                        "run the command again\n")


def test_toy_train_out_naming_a_file_is_refused(tmp_path, capsys):
    from harness.toy import train

    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as e:
        train.main(["--what", "vae", "--minutes", "0.01", "--out", str(tmp_path / "afile")], prog="harness toy train")
    assert e.value.code == 2
    assert f"--out {tmp_path / 'afile'}: is a file; expected a folder" in capsys.readouterr().err


def test_a_ledger_cut_off_before_its_version_row_says_so(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with sqlite3.connect(run / "ledger.sqlite") as conn:
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    with pytest.raises(LedgerError, match="records no schema version: setting it up was cut off"):
        Ledger.open(run, readonly=True)
    Ledger.open(run).close()  # a writer sets it up again
    Ledger.open(run, readonly=True).close()


def test_a_merge_into_a_ledger_whose_set_up_was_cut_off_sets_it_up_and_merges(run_folder, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    with sqlite3.connect(out / "ledger.sqlite") as conn:  # a merge killed while setting up its --out
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    r = invoke("merge", run_folder, "--out", out)
    assert r.exit_code == 0 and "2 done jobs (2 added" in r.output, r.output
    assert len(list((out / "images").glob("*.png"))) == 2


@pytest.fixture
def read_only_copy(run_folder, tmp_path):
    """The finished run on a read-only tmpfs (root ignores file modes, so a mount it is)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        shutil.copytree(run_folder, mnt / "run")
        (mnt / "run" / "ledger.sqlite-wal").write_bytes(b"")  # as a copy of a finished run may hold
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt / "run"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_read_only_run_folder_is_read_and_not_written(read_only_copy, tmp_path):
    with Ledger.open(read_only_copy, readonly=True) as ledger:
        assert len(ledger.done_keys()) == 2
    (tmp_path / "e.toml").write_text(EXP)
    r = invoke("plan", tmp_path / "e.toml", "--out", read_only_copy)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    r = invoke("run", tmp_path / "e.toml", "--out", read_only_copy, "--force")
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert r.output.startswith("error: ") and ("cannot be written" in r.output or "(EROFS)" in r.output), r.output
    r = invoke("eval", read_only_copy, "-m", "health")
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert r.output.startswith("error: ") and ("cannot be written" in r.output or "(EROFS)" in r.output), r.output
