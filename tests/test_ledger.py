"""The run ledger: real SQLite files and real PNGs in tmp_path."""

from __future__ import annotations

import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.core import Job, Score
from harness.ledger import Done, Ledger, LedgerError, LedgerLocked
from harness.ledger.schema import _now
from harness.provenance import (
    a1111_parameters, check_png, is_temp_name, provenance_record, read_provenance, temp_path_for,
    write_png_atomic,
)


def make_jobs(n: int, **changes) -> list[Job]:
    colors, media = ["red", "blue", "green"], ["photo", "painting"]
    jobs = []
    for i in range(n):
        color, medium = colors[i % 3], media[(i // 3) % 2]
        fields = dict(checkpoint="tiny", fingerprint="ab" * 32, mode="txt2img",
                      prompt=f"a {color} fox, {medium}", negative_prompt="", seed=i, steps=4,
                      guidance=7.5, scheduler="ddim", width=64, height=64,
                      factors={"color": color, "medium": medium}, meta={"prompt_seed": 0})
        fields.update(changes)
        jobs.append(Job(**fields))
    return jobs


def save_image(ledger: Ledger, job: Job) -> None:
    write_png_atomic(ledger.image_path(job.key), np.full((16, 16, 3), job.seed % 256, np.uint8),
                     parameters=a1111_parameters(job, sampler="DDIM", model_name="tiny"),
                     provenance=provenance_record(job, batch_size=1, slot=0))


def finish(ledger: Ledger, job: Job, **run) -> None:
    save_image(ledger, job)
    ledger.mark_done(job.key, **{**dict(batch_id=1, batch_size=1, slot=0, seconds=0.5, device="cpu",
                                         dtype="float32", memory=[]), **run})


def finished(ledger: Ledger, n: int) -> list[Job]:
    """`n` jobs added to `ledger` and made."""
    jobs = make_jobs(n)
    ledger.add_jobs(jobs)
    for job in jobs:
        finish(ledger, job)
    return jobs


@pytest.fixture
def ledger(tmp_path):
    with Ledger.open(tmp_path / "run") as led:
        yield led


# ---------------------------------------------------------------- opening


def test_open_creates_layout_in_wal_mode(tmp_path):
    with Ledger.open(tmp_path / "run") as led:
        assert led.get_meta("schema_version") == "1"
    run = tmp_path / "run"
    assert (run / "images").is_dir() and (run / "tables").is_dir()
    conn = sqlite3.connect(run / "ledger.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_jobs_survive_reopening(tmp_path):
    jobs = make_jobs(4)
    with Ledger.open(tmp_path) as led:
        led.add_jobs(jobs)
        finish(led, jobs[0])
    with Ledger.open(tmp_path) as led:
        assert led.all_jobs() == jobs
        assert led.done_keys() == {jobs[0].key}


def test_a_second_writer_is_refused_but_readers_are_fine(tmp_path):
    with Ledger.open(tmp_path) as led:
        led.add_jobs(make_jobs(3))
        with pytest.raises(LedgerLocked, match="already open for writing in this process"):
            Ledger.open(tmp_path)
        with Ledger.open(tmp_path, readonly=True) as reader:
            assert reader.count() == 3
            with pytest.raises(LedgerError, match="readonly"):
                reader.add_jobs(make_jobs(1))
    with Ledger.open(tmp_path):  # released on close
        pass


def test_writer_lock_names_the_other_process(tmp_path):
    Ledger.open(tmp_path).close()
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from harness.ledger import Ledger
        led = Ledger.open({str(tmp_path)!r})
        print("ready", flush=True)
        time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(LedgerLocked, match=f"another process \\(pid {child.pid}\\)"):
            Ledger.open(tmp_path)
    finally:
        child.kill()
        child.wait()
    Ledger.open(tmp_path).close()  # a killed writer's lock is released by the kernel


def test_unknown_schema_version_is_refused(tmp_path):
    Ledger.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "ledger.sqlite")
    conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="schema version '99'"):
        Ledger.open(tmp_path)


def test_a_damaged_ledger_file_is_named_with_what_to_do(tmp_path):
    Ledger.open(tmp_path).close()
    (tmp_path / "ledger.sqlite").write_bytes(b"not a database, garbage " * 200)
    (tmp_path / "ledger.sqlite-wal").unlink(missing_ok=True)
    for readonly in (False, True):
        with pytest.raises(LedgerError, match="ledger file is damaged") as caught:
            Ledger.open(tmp_path, readonly=readonly)
        assert str(caught.value).startswith(f"{tmp_path / 'ledger.sqlite'}: file is not a database")
    with pytest.raises(LedgerError, match="damaged"):  # not LedgerLocked: the failed open let go of the lock
        Ledger.open(tmp_path)


def test_a_ledger_another_program_holds_locked_is_named_and_nothing_is_lost(tmp_path, monkeypatch):
    """A sqlite3 shell or a database browser with a write open: the run gives up after the busy timeout with
    one error naming the ledger and what to do, and goes on once the other program lets go."""
    from harness.ledger import store

    ledger = Ledger.open(tmp_path)
    jobs = finished(ledger, 2)
    ledger.close()
    other = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(store, "BUSY_SECONDS", 0.2)
    with pytest.raises(LedgerError) as caught:
        with Ledger.open(tmp_path) as led:
            led.add_jobs(make_jobs(3))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'ledger.sqlite'}: database is locked: another program has held the "
                              "ledger locked for 0.2 seconds"), message
    assert "run the same command again" in message
    other.execute("ROLLBACK")
    other.close()
    with Ledger.open(tmp_path) as led:
        assert led.done_keys() == {j.key for j in jobs}
    with pytest.raises(LedgerError, match="no such table: scores: the ledger file is damaged"):
        with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:
            conn.execute("DROP TABLE scores")
        with Ledger.open(tmp_path, readonly=True) as led:
            led.scores_frame()


def test_a_ledger_whose_meta_table_is_gone_is_damaged_not_a_set_up_cut_off(tmp_path):
    ledger = Ledger.open(tmp_path)
    finished(ledger, 1)
    ledger.close()
    with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:
        conn.execute("DROP TABLE meta")
    for readonly in (True, False):  # and a run does not set it up again, forgetting the jobs' experiment
        with pytest.raises(LedgerError, match="its table meta is missing while its jobs are there: the ledger "
                                              "file is damaged"):
            Ledger.open(tmp_path, readonly=readonly)
    with sqlite3.connect(tmp_path / "ledger.sqlite") as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'meta'").fetchall() == []


def test_a_full_disk_while_writing_the_ledger_is_a_ledger_error_and_loses_no_committed_row(tmp_path):
    """SQLite's "disk I/O error" / "database or disk is full" becomes a LedgerError naming ledger.sqlite and
    saying what to do; every transaction committed before it is intact when the ledger is reopened."""
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_ledger import make_jobs, finish
        from harness.ledger import Ledger, LedgerError
        run = {str(tmp_path / "run")!r}
        led = Ledger.open(run)
        jobs = make_jobs(400)
        led.add_jobs(jobs[:10])
        for job in jobs[:3]:
            finish(led, job)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        committed = 0
        try:
            for job in jobs[10:]:
                led.add_jobs([job])
                committed += 1
        except LedgerError as exc:
            print("COMMITTED", committed)
            print("ERROR", exc)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    committed = int(r.stdout.split("COMMITTED ")[1].split()[0])
    error = r.stdout.split("ERROR ", 1)[1]
    assert 0 < committed < 390, r.stdout
    assert error.startswith(f"{tmp_path / 'run' / 'ledger.sqlite'}: ")
    assert "while writing the ledger" in error and "run the same command again" in error
    with Ledger.open(tmp_path / "run") as led:
        assert led.count() == 10 + committed and led.count("done") == 3
        assert all(led.image_path(k).is_file() for k in led.done_keys())


# ---------------------------------------------------------------- jobs


def test_adding_jobs_twice_never_duplicates(ledger):
    jobs = make_jobs(6)
    assert ledger.add_jobs(jobs) == 6
    assert ledger.add_jobs(jobs + make_jobs(8)[6:]) == 2
    assert ledger.count() == 8
    assert [j.key for j in ledger.all_jobs()] == [j.key for j in make_jobs(8)]


def test_re_adding_keeps_the_existing_status(ledger):
    jobs = make_jobs(3)
    ledger.add_jobs(jobs)
    finish(ledger, jobs[1])
    assert ledger.add_jobs(jobs) == 0
    assert ledger.status_of(jobs[1].key) == "done"
    assert ledger.pending_jobs() == [jobs[0], jobs[2]]


def test_pending_to_done_records_how_it_was_made(ledger):
    jobs = make_jobs(3)
    ledger.add_jobs(jobs)
    finish(ledger, jobs[0], batch_id="b7", batch_size=2, slot=1, seconds=0.25, device="cuda:0",
           dtype="float16", memory=["attention_slicing", "vae_tiling"], health={"nan": False, "std": 0.3},
           host="gpu-box")
    assert ledger.count("done") == 1 and ledger.count("pending") == 2
    assert ledger.done_keys() == {jobs[0].key}
    row = ledger.jobs_frame().set_index("key").loc[jobs[0].key]
    assert (row["batch_id"], row["batch_size"], row["slot"], row["seconds"]) == ("b7", 2, 1, 0.25)
    assert (row["device"], row["dtype_used"], row["host"]) == ("cuda:0", "float16", "gpu-box")
    assert row["memory"] == "attention_slicing,vae_tiling"
    assert row["h.std"] == 0.3 and not row["h.nan"]


def test_mark_done_refuses_a_job_without_its_image(ledger):
    job = make_jobs(1)[0]
    ledger.add_jobs([job])
    with pytest.raises(LedgerError, match="write the image"):
        ledger.mark_done(job.key, batch_id=0, batch_size=1, slot=0, seconds=1.0, device="cpu", dtype="float32")
    assert ledger.status_of(job.key) == "pending"


def test_mark_done_many_commits_all_or_nothing(ledger):
    jobs = make_jobs(3)
    ledger.add_jobs(jobs[:2])
    for job in jobs:
        save_image(ledger, job)
    rows = [Done(j.key, 1, 3, i, 0.1, "cpu", "float32") for i, j in enumerate(jobs)]
    with pytest.raises(LedgerError, match="not in the ledger"):
        ledger.mark_done_many(rows)  # jobs[2] was never added
    assert ledger.count("done") == 0
    ledger.mark_done_many(rows[:2])
    assert ledger.done_keys() == {jobs[0].key, jobs[1].key}


def test_mark_done_many_accepts_mappings_and_rejects_unknown_fields(ledger):
    job = make_jobs(1)[0]
    ledger.add_jobs([job])
    save_image(ledger, job)
    row = dict(key=job.key, batch_id=1, batch_size=1, slot=0, seconds=0.1, device="cpu", dtype="float32")
    with pytest.raises(TypeError, match="unknown fields \\['colour'\\]"):
        ledger.mark_done_many([{**row, "colour": 1}])
    ledger.mark_done_many([row])
    assert ledger.status_of(job.key) == "done"


def test_failed_jobs_stay_failed_until_requeued(ledger):
    jobs = make_jobs(2)
    ledger.add_jobs(jobs)
    ledger.mark_failed(jobs[0].key, "CUDA out of memory")
    assert ledger.pending_jobs() == [jobs[1]]
    assert ledger.jobs_frame().set_index("key").loc[jobs[0].key, "error"] == "CUDA out of memory"
    assert ledger.requeue_failed() == 1
    assert ledger.pending_jobs() == jobs


def test_reset_returns_done_jobs_to_pending_and_removes_image_and_scores(ledger):
    jobs = finished(ledger, 2)
    ledger.put_scores([Score(jobs[0].key, "clip:ViT-B-32", 30.0)])
    assert ledger.reset([jobs[0].key]) == 1
    assert ledger.status_of(jobs[0].key) == "pending"
    assert not ledger.image_path(jobs[0].key).exists()
    assert ledger.scored_keys("clip:ViT-B-32") == set()
    assert ledger.status_of(jobs[1].key) == "done" and ledger.image_path(jobs[1].key).exists()
    with pytest.raises(LedgerError, match="not in the ledger"):
        ledger.reset(["0" * 64])


def test_image_paths_only_accept_job_keys(ledger):
    assert ledger.image_path("a" * 64).name == "a" * 64 + ".png"
    with pytest.raises(ValueError, match="64 lowercase hex"):
        ledger.image_path("../../etc/passwd")


# ---------------------------------------------------------------- reconcile


def test_reconcile_requeues_a_done_job_whose_image_was_deleted(ledger):
    jobs = finished(ledger, 2)
    ledger.image_path(jobs[0].key).unlink()
    result = ledger.reconcile()
    assert result.requeued == {jobs[0].key: "missing"}
    assert ledger.pending_jobs() == [jobs[0]]
    assert "missing" in ledger.jobs_frame().set_index("key").loc[jobs[0].key, "error"]


def test_reconcile_requeues_a_truncated_image_and_deletes_it(ledger):
    job = make_jobs(1)[0]
    ledger.add_jobs([job])
    finish(ledger, job)
    ledger.put_scores([Score(job.key, "m", 1.0)])
    path = ledger.image_path(job.key)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = ledger.reconcile()
    assert "truncated" in result.requeued[job.key]
    assert ledger.status_of(job.key) == "pending"
    assert not path.exists()
    assert ledger.scored_keys("m") == set()


def test_reconcile_requeues_a_sound_image_that_is_not_the_one_made(ledger):
    """A valid PNG copied over a finished image (a hand edit, another run's file) is not what the job made:
    back to pending with its scores gone, the file deleted only when a run is about to remake it."""
    jobs = finished(ledger, 3)
    ledger.put_scores([Score(j.key, "m", 1.0) for j in jobs])
    swapped, edited = ledger.image_path(jobs[0].key), ledger.image_path(jobs[1].key)
    swapped.write_bytes(ledger.image_path(jobs[2].key).read_bytes())
    Image.open(edited).rotate(90).save(edited)
    result = ledger.reconcile(remove_damaged=False)
    assert result.requeued == {jobs[0].key: "changed since it was made", jobs[1].key: "changed since it was made"}
    assert ledger.done_keys() == {jobs[2].key} and ledger.scored_keys("m") == {jobs[2].key}
    assert swapped.is_file() and edited.is_file()
    assert ledger.reconcile(remove_damaged=False).orphans == []  # still set aside, not an orphan
    finish(ledger, jobs[0])  # made again: its new file is the one recorded
    # a run about to remake the other names it as the earlier pass did, not as a file of no job, and deletes it
    result = ledger.reconcile()
    assert result.requeued == {jobs[1].key: "changed since it was made"} and result.orphans == []
    assert not edited.exists() and ledger.status_of(jobs[0].key) == "done"
    assert ledger.reconcile().requeued == {}
    kept = ledger.image_path(jobs[2].key)
    Image.open(kept).rotate(90).save(kept)
    assert ledger.reconcile().requeued == {jobs[2].key: "changed since it was made"}
    assert not kept.exists()  # a run, about to remake it, deletes it


def test_the_repair_message_counts_every_image_it_requeued():
    from harness.ledger import Reconciled

    requeued = {"a": "missing", "b": "missing", "c": "truncated", "d": "CRC mismatch", "e": "changed", "f": "odd"}
    text = Reconciled(requeued).repaired_text("and will be made again")
    assert text == ("6 finished image(s) were missing, damaged or changed (2 missing, 1 truncated, 1 CRC mismatch, "
                    "2 for 2 other reason(s)) and will be made again")
    del requeued["f"]  # four reasons: each is named
    assert Reconciled(requeued).repaired_text("and will be made again") == (
        "5 finished image(s) were missing, damaged or changed (2 missing, 1 truncated, 1 CRC mismatch, 1 changed) "
        "and will be made again")


def test_an_image_remade_by_an_interrupted_force_is_not_called_a_hand_edit(ledger):
    """--force writes the remade image before recording it: killed in between, the next start finds a sound
    file that is not the recorded one, says so in those words, and remakes it as the force asked."""
    jobs = finished(ledger, 2)
    time.sleep(0.01)
    ledger.force(j.key for j in jobs)
    Image.new("RGB", (16, 16), "white").save(ledger.image_path(jobs[0].key))  # remade, not yet recorded
    Image.new("RGB", (16, 16), "black").save(ledger.image_path(jobs[1].key))
    assert ledger.reconcile().requeued == {jobs[0].key: "remade by an interrupted --force run before it was recorded",
                                           jobs[1].key: "remade by an interrupted --force run before it was recorded"}


def test_a_force_marks_its_own_jobs_and_their_later_stages_and_goes_on_where_it_was_cut_off(ledger):
    """--force of some jobs (a shard, a version of the experiment) leaves the others alone; a second
    --force after an interrupted one remakes only what the first had not remade; once a force has remade
    all of its jobs, the next starts anew."""
    jobs = finished(ledger, 4)
    parent = jobs[0]
    child = make_jobs(1, seed=99, meta={"parent_key": parent.key, "stage": "refine"})[0]
    ledger.add_jobs([child])
    finish(ledger, child)
    time.sleep(0.01)
    ledger.force([jobs[0].key, jobs[1].key])  # one shard: jobs 0 and 1, and the child made from job 0
    assert ledger.stale_keys() == {jobs[0].key, jobs[1].key, child.key}
    time.sleep(0.01)
    finish(ledger, jobs[0])  # remade, then interrupted
    time.sleep(0.01)
    ledger.force([jobs[0].key, jobs[1].key])  # forced again: goes on
    assert ledger.stale_keys() == {jobs[1].key, child.key}
    time.sleep(0.01)
    finish(ledger, jobs[1])
    finish(ledger, child)
    assert ledger.stale_keys() == set()  # jobs 2 and 3 were never asked for
    time.sleep(0.01)
    ledger.force([jobs[1].key])  # the earlier force is done: this one starts anew
    assert ledger.stale_keys() == {jobs[1].key}


def test_times_never_repeat_in_a_process_even_where_the_clock_stands_still(monkeypatch):
    from datetime import datetime as real

    from harness.ledger import schema

    class Stopped(real):
        @classmethod
        def now(cls, tz=None):
            return real(2026, 11, 25, 10, 0, 0, 999_999, tzinfo=tz)

    monkeypatch.setattr(schema, "datetime", Stopped)
    monkeypatch.setattr(schema, "_last_now", None)  # given back after the test, with the real clock
    times = [schema._now() for _ in range(3)]
    assert times == sorted(set(times)) and times[2] == "2026-11-25T10:00:01.000001+00:00"


def test_a_job_made_in_the_instant_of_its_force_is_made_again(ledger, monkeypatch):
    """Two processes' clocks can give a finish and a force the same time: which came first is unknown,
    so the job is remade rather than skipped."""
    from harness.ledger import store

    monkeypatch.setattr(store, "_now", lambda: "2026-11-25T10:00:00.000000+00:00")
    jobs = finished(ledger, 2)
    ledger.force([jobs[0].key])
    assert ledger.stale_keys() == {jobs[0].key}


def test_a_folder_forced_before_jobs_kept_their_own_mark_keeps_its_stale_jobs(tmp_path):
    with Ledger.open(tmp_path / "run") as led:
        jobs = finished(led, 3)
        time.sleep(0.01)
        with led._write() as conn:  # as an earlier version recorded a --force: one time for the folder
            conn.execute("INSERT INTO meta(name, value) VALUES ('force_since', ?)", (_now(),))
        time.sleep(0.01)
        finish(led, jobs[0])
    with Ledger.open(tmp_path / "run") as led:
        assert led.stale_keys() == {jobs[1].key, jobs[2].key} and led.get_meta("force_since") is None


def test_reconcile_adopts_the_images_of_a_ledger_that_kept_no_digests(ledger):
    """Ledgers written before image digests were kept: their files are taken as made, then watched."""
    jobs = finished(ledger, 2)
    with ledger._write() as conn:
        conn.execute("DELETE FROM image_files")
    assert ledger.reconcile().requeued == {} and ledger.done_keys() == {j.key for j in jobs}
    Image.new("RGB", (16, 16)).save(ledger.image_path(jobs[0].key))
    assert ledger.reconcile().requeued == {jobs[0].key: "changed since it was made"}


def test_reconcile_removes_temp_files_and_reports_orphans(ledger):
    jobs = make_jobs(2)
    ledger.add_jobs(jobs)
    finish(ledger, jobs[0])
    save_image(ledger, jobs[1])  # written, never marked done (a crash between the two)
    temp = temp_path_for(ledger.image_path(jobs[1].key))
    temp.write_bytes(b"\x89PNG half")
    result = ledger.reconcile()
    assert result.temp_removed == [temp.name]
    assert result.orphans == [jobs[1].key]
    assert result.requeued == {} and result.repaired_text("x") == ""
    assert result.orphans_text("and are made again").startswith(
        "1 image file(s) in images/ belong to no finished job (written just before an interruption")
    assert sorted(p.name for p in ledger.images_dir.iterdir()) == sorted(
        f"{j.key}.png" for j in jobs)
    assert result.strays == [] and result.strays_text() == ""


def test_an_image_of_no_job_at_all_is_a_stray_said_to_be_replaced_by_no_run(ledger):
    """An earlier version's image written just before an interruption, whose job the next version's plan
    dropped: no run would replace it, so the note does not promise one (it did, at every run)."""
    jobs = make_jobs(2)
    ledger.add_jobs(jobs[:1])
    save_image(ledger, jobs[0])  # a pending job's image: an orphan, replaced when its job runs
    save_image(ledger, jobs[1])  # no job row: a stray
    result = ledger.reconcile()
    assert (result.orphans, result.strays) == ([jobs[0].key], [jobs[1].key])
    assert result.strays_text() == (
        "1 image file(s) in images/ belong to no job this folder records (an earlier version's, written just "
        "before an interruption recorded them, or put there by hand): no report counts them and no run replaces "
        f"them unless the experiment plans them again; delete them if they are not needed (the first: "
        f"images/{jobs[1].key}.png)")
    assert ledger.image_path(jobs[1].key).is_file()  # left where it is


def test_crash_between_temp_write_and_rename_leaves_job_pending(ledger, monkeypatch):
    job = make_jobs(1)[0]
    ledger.add_jobs([job])

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        finish(ledger, job)
    monkeypatch.undo()
    assert not ledger.image_path(job.key).exists()
    assert ledger.status_of(job.key) == "pending"
    assert ledger.reconcile().requeued == {}


# ---------------------------------------------------------------- scores and frames


def test_scores_upsert_and_nan_is_stored_as_null(ledger):
    jobs = make_jobs(2)
    ledger.add_jobs(jobs)
    ledger.put_scores([Score(jobs[0].key, "clip", 25.0), Score(jobs[1].key, "clip", float("nan"),
                                                                {"reason": "black image"})])
    ledger.put_scores([Score(jobs[0].key, "clip", 27.5, {"truncated": True})])
    assert ledger.scored_keys("clip") == {jobs[0].key, jobs[1].key}
    assert ledger.scored_keys("aesthetic") == set()
    frame = ledger.scores_frame().set_index("key")
    assert len(frame) == 2
    assert frame.loc[jobs[0].key, "value"] == 27.5
    assert frame.loc[jobs[0].key, "detail"] == '{"truncated":true}'
    assert math.isnan(frame.loc[jobs[1].key, "value"])
    raw = sqlite3.connect(ledger.run_dir / "ledger.sqlite").execute(
        "SELECT value FROM scores WHERE key = ?", (jobs[1].key,)).fetchone()
    assert raw == (None,)


def test_score_detail_with_nan_is_refused_with_its_metric(ledger):
    with pytest.raises(ValueError, match="detail of score clip"):
        ledger.put_scores([Score("a" * 64, "clip", 1.0, {"x": float("nan")})])


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_an_infinite_score_is_refused_and_nothing_of_the_batch_is_stored(ledger, value):
    jobs = make_jobs(2)
    ledger.add_jobs(jobs)
    with pytest.raises(ValueError, match=f"score clip for {jobs[1].key[:12]} is {value}; expected a finite value"):
        ledger.put_scores([Score(jobs[0].key, "clip", 1.0), Score(jobs[1].key, "clip", value)])
    assert ledger.scored_keys("clip") == set()


def test_jobs_frame_has_job_factor_and_status_columns(ledger):
    jobs = make_jobs(6)
    ledger.add_jobs(jobs)
    finish(ledger, jobs[0])
    frame = ledger.jobs_frame()
    assert list(frame["key"]) == [j.key for j in jobs]
    assert {"f.color", "f.medium", "meta.prompt_seed", "prompt", "seed", "guidance", "status",
            "seconds"} <= set(frame.columns)
    assert list(frame["f.color"]) == ["red", "blue", "green"] * 2
    assert frame.groupby("f.medium").size().to_dict() == {"photo": 3, "painting": 3}
    assert list(frame["status"]) == ["done"] + ["pending"] * 5


def test_empty_frames_have_their_columns(ledger):
    assert {"key", "prompt", "status"} <= set(ledger.jobs_frame().columns)
    assert list(ledger.scores_frame().columns) == ["key", "metric", "value", "detail", "scored_at"]


# ---------------------------------------------------------------- merge


def test_merge_copies_done_jobs_images_and_scores_once(tmp_path):
    jobs = make_jobs(5)
    with Ledger.open(tmp_path / "b") as b:  # a finished shard
        b.add_jobs(jobs)
        for job in jobs[2:4]:
            finish(b, job, device="cuda:1")
        b.mark_failed(jobs[4].key, "oom")
        b.put_scores([Score(jobs[2].key, "clip", 2.0), Score(jobs[3].key, "clip", 3.0),
                      Score(jobs[4].key, "clip", float("nan"))])
    with Ledger.open(tmp_path / "a") as a:
        a.add_jobs(jobs)
        for job in jobs[:3]:
            finish(a, job, device="cuda:0")
        a.put_scores([Score(jobs[2].key, "clip", 1.0)])

        result = a.merge_from(tmp_path / "b")
        assert (result.jobs_added, result.jobs_already_done, result.bad_images) == (1, 1, {})
        assert a.done_keys() == {j.key for j in jobs[:4]}
        assert a.count() == 5 and a.status_of(jobs[4].key) == "pending"
        frame = a.jobs_frame().set_index("key")
        assert frame.loc[jobs[2].key, "device"] == "cuda:0"  # ours kept
        assert frame.loc[jobs[3].key, "device"] == "cuda:1"
        assert read_provenance(a.image_path(jobs[3].key))["key"] == jobs[3].key
        scores = a.scores_frame().set_index("key")["value"].to_dict()
        assert scores == {jobs[2].key: 1.0, jobs[3].key: 3.0}
        assert result.scores_added == 1

        again = a.merge_from(tmp_path / "b")
        assert (again.jobs_added, again.scores_added) == (0, 0)
        assert not any(is_temp_name(p.name) for p in a.images_dir.iterdir())


def test_merge_adds_rows_for_keys_it_did_not_know_and_skips_damaged_images(tmp_path):
    with Ledger.open(tmp_path / "a") as a, Ledger.open(tmp_path / "b") as b:
        jobs = finished(b, 3)
        b.image_path(jobs[0].key).write_bytes(b"\x89PNG\r\n\x1a\n broken")
        result = a.merge_from(tmp_path / "b")
        assert "CRC" in result.bad_images[jobs[0].key] or "truncated" in result.bad_images[jobs[0].key]
        assert a.all_jobs() == jobs[1:]
        assert a.done_keys() == {j.key for j in jobs[1:]}
        assert all(check_png(a.image_path(j.key)) is None for j in jobs[1:])


def test_merge_skips_a_shard_image_changed_since_it_was_made_and_records_the_copies(tmp_path):
    with Ledger.open(tmp_path / "a") as a, Ledger.open(tmp_path / "b") as b:
        jobs = finished(b, 2)
        Image.new("RGB", (16, 16), "white").save(b.image_path(jobs[0].key))
        result = a.merge_from(tmp_path / "b")
        assert result.bad_images == {jobs[0].key: "changed since it was made"}
        assert a.done_keys() == {jobs[1].key}
        assert a.reconcile().requeued == {}  # the copy's digest was recorded with it
        Image.new("RGB", (16, 16)).save(a.image_path(jobs[1].key))
        assert a.reconcile().requeued == {jobs[1].key: "changed since it was made"}


def test_merging_a_shard_again_repairs_an_image_the_folder_has_lost_since(tmp_path):
    """A merged folder whose copy of an image was damaged, replaced or deleted takes the source's sound copy
    (and its scores) on the next merge, instead of keeping a bad file that a later run would remake."""
    with Ledger.open(tmp_path / "b") as b:
        jobs = finished(b, 3)
        b.put_scores([Score(j.key, "clip", 2.0) for j in jobs])
    with Ledger.open(tmp_path / "a") as a:
        assert a.merge_from(tmp_path / "b").jobs_added == 3
        a.put_scores([Score(jobs[0].key, "other", 5.0)])  # scored here, on the image about to be lost
        damaged = bytearray(a.image_path(jobs[0].key).read_bytes())
        damaged[60] ^= 0xFF
        a.image_path(jobs[0].key).write_bytes(bytes(damaged))
        a.image_path(jobs[1].key).unlink()
        again = a.merge_from(tmp_path / "b")
        assert (again.jobs_added, again.repaired, again.jobs_already_done, again.bad_images) == (2, 2, 1, {})
        assert a.image_path(jobs[0].key).read_bytes() == b.image_path(jobs[0].key).read_bytes()
        assert all(check_png(a.image_path(j.key)) is None for j in jobs) and a.reconcile().requeued == {}
        scores = a.scores_frame()
        assert set(scores[scores["key"] == jobs[0].key]["metric"]) == {"clip"}  # the lost image's score went


def test_merge_leaves_out_a_second_child_of_a_parent_made_from_another_copy_of_it(tmp_path):
    """Overlapping shards both made parent P, a level apart, and each refined its own copy. This folder
    holds P and its child already: the source's child of the same slot (and what was made from it) would
    be a second child of P, so it is left out. A child this folder lacks is taken, from either copy (a
    shard that only the source refined P in)."""
    from harness.images import init_hash

    parent = make_jobs(1)[0]
    stage = dict(mode="img2img", strength=0.5, meta={"parent_key": parent.key, "stage": "refine"})
    with Ledger.open(tmp_path / "a") as a, Ledger.open(tmp_path / "b") as b:
        for led, value in ((a, 1), (b, 0)):
            led.add_jobs([parent])
            write_png_atomic(led.image_path(parent.key), np.full((16, 16, 3), value, np.uint8),
                             parameters=a1111_parameters(parent, sampler="DDIM", model_name="tiny"),
                             provenance=provenance_record(parent, batch_size=1, slot=0))
            led.mark_done(parent.key, batch_id=1, batch_size=1, slot=0, seconds=0.5, device="cpu",
                          dtype="float32", memory=[])
        here, there = (init_hash(led.image_path(parent.key), 64, 64) for led in (a, b))
        own = make_jobs(1, seed=5, init_hash=here, **stage)[0]
        a.add_jobs([own])
        finish(a, own)
        twin = make_jobs(1, seed=5, init_hash=there, **stage)[0]  # the same child, of b's copy of P
        grandchild = make_jobs(1, seed=7, mode="img2img", strength=0.3, meta={"parent_key": twin.key, "stage": "polish"})[0]
        lacking = make_jobs(1, seed=6, init_hash=there, **stage)[0]  # a child a has none of
        b.add_jobs([twin, grandchild, lacking])
        for job in (twin, grandchild, lacking):
            finish(b, job)
        b.set_plan("main", [parent.key])
        b.set_plan("stage:refine", [twin.key, lacking.key])
        b.set_plan("stage:polish", [grandchild.key])
        a.set_plan("main", [parent.key])
        a.set_plan("stage:refine", [own.key])
        result = a.merge_from(tmp_path / "b")
        assert (result.jobs_added, result.other_parents, result.jobs_already_done) == (1, 2, 1)
        assert a.done_keys() == {parent.key, own.key, lacking.key}
        assert a.planned_keys() == {parent.key, own.key, lacking.key}  # nothing planned that no run would make


# ---------------------------------------------------------------- kill -9


CHILD = textwrap.dedent("""
    import os, sys
    from PIL import Image
    from harness.core import Job
    from harness.ledger import Ledger
    from harness.provenance import a1111_parameters, provenance_record, write_png_atomic

    jobs = [Job("tiny", "cd" * 32, "txt2img", f"prompt {i}", "", i, 4, 7.0, "ddim", 96, 96)
            for i in range(1000)]
    with Ledger.open(sys.argv[1]) as led:
        led.reconcile()
        led.add_jobs(jobs)
        pending = led.pending_jobs()
        provenance_record(jobs[0])  # warm the library-version cache
        print("ready", flush=True)
        for n, job in enumerate(pending):
            image = Image.frombytes("RGB", (96, 96), os.urandom(96 * 96 * 3))
            write_png_atomic(led.image_path(job.key), image, provenance=provenance_record(job),
                             parameters=a1111_parameters(job, sampler="DDIM", model_name="tiny"))
            led.mark_done(job.key, batch_id=n, batch_size=1, slot=0, seconds=0.0, device="cpu",
                          dtype="float32")
""")


def test_kill_9_at_a_random_moment_never_leaves_a_bad_done_image(tmp_path):
    run = tmp_path / "run"
    rng = random.Random()
    done_before = 0
    for _ in range(3):
        delay = rng.uniform(0.05, 0.5)
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(run)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        with Ledger.open(run) as led:
            result = led.reconcile(decode=True)
            assert result.requeued == {}, f"kill after {delay:.3f}s left bad done rows"
            assert not any(is_temp_name(p.name) for p in led.images_dir.iterdir())
            done = led.done_keys()
            assert len(done) >= done_before
            for key in done:
                assert check_png(led.image_path(key), decode=True) is None
                assert read_provenance(led.image_path(key))["key"] == key
            done_before = len(done)
    assert done_before > 0


def test_an_interrupt_at_any_moment_of_a_write_leaves_the_ledger_usable(tmp_path):
    """Ctrl-C landing between BEGIN and COMMIT (here a timer's KeyboardInterrupt, hundreds of times at
    varying moments) must never leave a transaction open: the next write would fail, and with it the
    runner's final commit of finished images."""
    led = Ledger.open(tmp_path / "run")

    def interrupt(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        for trial in range(200):
            signal.setitimer(signal.ITIMER_REAL, 0.0005 + (trial % 17) * 0.0001)
            try:
                while True:
                    led.set_meta("x", str(trial))
            except KeyboardInterrupt:
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            led.set_meta("after", str(trial))  # raised "cannot start a transaction within a transaction"
            assert led.get_meta("after") == str(trial)
    finally:
        signal.signal(signal.SIGALRM, old)
    # a transaction left open by an interrupt inside the rollback itself is rolled back by the next write
    led._db().execute("BEGIN IMMEDIATE")
    led._db().execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('lost', 'yes')")
    led.set_meta("y", "1")
    assert led.get_meta("y") == "1" and led.get_meta("lost") is None
    led.close()


def test_reads_in_a_snapshot_see_one_moment_while_a_run_writes(tmp_path):
    """A report reads done and not-done images in one snapshot: a batch marked done in between is counted
    in neither before the snapshot ends, and in the done ones after."""
    with Ledger.open(tmp_path / "run") as writer:
        jobs = make_jobs(3)
        writer.add_jobs(jobs)
        finish(writer, jobs[0])
        with Ledger.open(tmp_path / "run", readonly=True) as reader:
            with reader.snapshot():
                before = (reader.count("done"), reader.count("pending"))
                finish(writer, jobs[1])  # the run goes on meanwhile
                with reader.snapshot():  # nested: the outer one holds the moment
                    assert (reader.count("done"), reader.count("pending")) == before == (1, 2)
            assert (reader.count("done"), reader.count("pending")) == (2, 1)
