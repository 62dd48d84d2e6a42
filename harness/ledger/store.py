"""The Ledger class: one run folder's SQLite store (see the package docstring)."""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..core import Job, Score
from ..provenance import check_png_digest, file_sha256, is_temp_name
from .schema import (_CLEAR_RUN, _KEY, _SCHEMA, CHANGED, IMAGES_DIR, LEDGER_FILE, LEDGER_SCHEMA_VERSION,
                     STATUSES, TABLES_DIR, Done, LedgerError, Merged, Reconciled, _acquire_writer_lock,
                     _check_key, _done_from_mapping, _json, _now)

# a job made in the instant of its force (times from two processes: one process never repeats a time)
# counts as not made again: remaking it once more is safe, skipping it is not
_STALE = ("SELECT jobs.key FROM jobs JOIN forced ON forced.key = jobs.key "
          "WHERE jobs.status = 'done' AND (jobs.done_at IS NULL OR jobs.done_at <= forced.since)")
_REQUEUED = "reconcile: image "  # a re-queued job's error: this, then why
# reconcile's reason for a forced remake written but not recorded before an interrupt
FORCE_UNRECORDED = "remade by an interrupted --force run before it was recorded"


# What SQLite says when the disk under it fails it, and when the file itself is damaged.
_NO_ROOM = ("database or disk is full", "disk i/o error")
_DAMAGED = ("database disk image is malformed", "file is not a database", "no such table", "no such column")
_LOCKED = ("database is locked", "database table is locked")
BUSY_SECONDS = 30  # how long a ledger operation waits for a lock another program holds
_NOT_WRITABLE = ("unable to open database file", "readonly database", "read-only file system")


@contextmanager
def _named_errors(db: Path, *, writing: bool) -> Iterator[None]:
    """SQLite's errors about its file (a full disk, a damaged ledger) as a LedgerError that names the file,
    says what is safe and what to do. Other SQLite errors pass through unchanged."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        text = str(exc).lower()
        if any(m in text for m in _NO_ROOM):
            raise LedgerError(
                f"{db}: {exc} while {'writing' if writing else 'reading'} the ledger; the disk is probably full "
                "or over quota (or a file-size limit stopped it). Nothing is lost: the ledger keeps its last "
                "complete transaction and images already finished are kept. Free space and run the same "
                "command again: it resumes where it stopped") from exc
        if writing and any(m in text for m in _NOT_WRITABLE):
            raise LedgerError(
                f"{db}: {exc}: the run folder cannot be written (a read-only folder or disk?). Images already "
                "finished are kept; make the folder writable, or copy it somewhere writable and run there") from exc
        if any(m in text for m in _LOCKED):
            raise LedgerError(
                f"{db}: {exc}: another program has held the ledger locked for {BUSY_SECONDS:g} seconds (a sqlite3 "
                "shell or a database browser with a write open?). Nothing is lost: images already finished are kept. "
                "Close that program, or end its transaction, and run the same command again") from exc
        if any(m in text for m in _DAMAGED):
            raise LedgerError(f"{db}: {exc}: {_DAMAGED_ADVICE}") from exc
        raise


_DAMAGED_ADVICE = ("the ledger file is damaged. The images beside it keep their settings in their PNG metadata; "
                   "move the run folder aside and run the experiment into a new --out folder")


def _check_meta(conn: sqlite3.Connection, db: Path) -> None:
    """A ledger whose jobs are there and whose meta table is not (dropped by hand, a damaged page) is damaged,
    not a set-up cut off: setting it up again would forget which experiment the jobs belong to."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "jobs" in tables and "meta" not in tables:
        raise LedgerError(f"{db}: its table meta is missing while its jobs are there: {_DAMAGED_ADVICE}")


def _open_for_reading(db: Path) -> sqlite3.Connection:
    """A read-only connection. In a folder this process cannot write (a read-only disk, a colleague's run),
    SQLite cannot make the shared-memory file a WAL reader needs, so such a ledger is read as immutable:
    the harness checkpoints its log when a run ends, so a finished run's ledger file holds everything; a
    log left beside it (a run that was cut off) cannot be read there, and the error says so."""
    def connect(query: str) -> sqlite3.Connection:
        return sqlite3.connect(db.resolve().as_uri() + query, uri=True, timeout=BUSY_SECONDS, isolation_level=None,
                               check_same_thread=False)

    conn = connect("?mode=ro")
    try:
        with _named_errors(db, writing=False):  # a damaged file is named as such
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if "unable to open database file" not in str(exc).lower():
            raise
    except BaseException:
        conn.close()
        raise
    log = db.with_name(db.name + "-wal")
    if log.is_file() and log.stat().st_size > 0:
        raise LedgerError(f"{db}: the run folder cannot be written and holds the write-ahead log of a run that "
                          f"was cut off ({log.name}), which SQLite can only read from a writable folder; copy the "
                          "folder somewhere writable and read it there")
    return connect("?mode=ro&immutable=1")


def check_folder(run_dir: Path) -> None:
    """A run folder to be made must not be, or lie under, something that is not a folder."""
    for place in (run_dir, *run_dir.parents):
        if place.exists() or place.is_symlink():
            if not place.is_dir():
                what = "is" if place == run_dir else f"lies under {place}, which is"
                raise LedgerError(f"{run_dir}: the run folder {what} a file, not a folder; give --out a folder "
                                  "(it is made when missing)")
            return


def check_layout(run_dir: Path) -> None:
    """The folders a run folder keeps its images and tables in must not be files (a stray copy, a mistyped
    mv): reading would take every image for unreadable, writing would fail at the first one."""
    for name in (IMAGES_DIR, TABLES_DIR):
        place = run_dir / name
        if (place.exists() or place.is_symlink()) and not place.is_dir():
            raise LedgerError(f"{place}: a file stands where this folder must be; move or rename it, then run the "
                              "command again")


class Ledger:
    """The SQLite store of one run folder. Open with :meth:`Ledger.open`."""

    def __init__(self, run_dir: Path, conn: sqlite3.Connection, *, readonly: bool, lock_fd: int | None):
        self.run_dir = run_dir
        self.images_dir = run_dir / IMAGES_DIR
        self.tables_dir = run_dir / TABLES_DIR
        self.readonly = readonly
        self._conn = conn
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, run_dir: str | os.PathLike, *, readonly: bool = False) -> "Ledger":
        """Open (creating when writable) the ledger and folder layout of `run_dir`."""
        run_dir = Path(run_dir)
        db = run_dir / LEDGER_FILE
        if readonly:
            if not db.is_file():
                raise FileNotFoundError(f"no ledger at {db}; a run folder is made by "
                                        "Ledger.open(run_dir) without readonly=True")
            check_layout(run_dir)
            conn = _open_for_reading(db)
            ledger = cls(run_dir, conn, readonly=True, lock_fd=None)
        else:
            check_folder(run_dir)
            check_layout(run_dir)
            for d in (run_dir, run_dir / IMAGES_DIR, run_dir / TABLES_DIR):
                d.mkdir(parents=True, exist_ok=True)
            lock_fd = _acquire_writer_lock(run_dir)
            conn = None
            try:
                with _named_errors(db, writing=True):
                    conn = sqlite3.connect(db, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False)
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    if mode.lower() != "wal":
                        raise LedgerError(f"{db}: SQLite refused WAL mode (got {mode!r}); "
                                          "keep run folders on a local filesystem")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    _check_meta(conn, db)
                    conn.executescript(_SCHEMA)
                    # a folder --forced before each job kept its own mark: the one time applies to every job
                    conn.execute("INSERT OR IGNORE INTO forced(key, since) SELECT jobs.key, meta.value FROM jobs, "
                                 "meta WHERE meta.name = 'force_since' AND jobs.status = 'done'")
                    conn.execute("DELETE FROM meta WHERE name = 'force_since'")
                    conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('schema_version', ?)",
                                 (str(LEDGER_SCHEMA_VERSION),))
            except BaseException:
                if conn is not None:
                    conn.close()
                os.close(lock_fd)
                raise
            ledger = cls(run_dir, conn, readonly=False, lock_fd=lock_fd)
        conn.row_factory = sqlite3.Row
        try:
            if readonly and not ledger._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"):
                _check_meta(conn, db)
                raise LedgerError(f"{db} holds no ledger tables: setting it up was cut off (a full disk?) before "
                                  "anything was recorded. `harness run` into this folder sets it up again")
            found = ledger.get_meta("schema_version")
        except BaseException:
            ledger.close()
            raise
        if found is None:  # the tables were made one by one and the version row never written
            ledger.close()
            raise LedgerError(f"{db} records no schema version: setting it up was cut off (a full disk?) before "
                              "anything was recorded. `harness run` into this folder sets it up again")
        if found != str(LEDGER_SCHEMA_VERSION):
            ledger.close()
            raise LedgerError(f"{db} has ledger schema version {found!r}; this harness reads "
                              f"version {LEDGER_SCHEMA_VERSION}. Use a new run folder or the "
                              "harness version that wrote it.")
        return ledger

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.run_dir)!r}, readonly={self.readonly})"

    # ---------------------------------------------------------------- plumbing

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"the ledger of {self.run_dir} is closed")
        return self._conn

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads in this block (from this thread) see the ledger as one moment: a run writing meanwhile (a
        batch marked done) changes nothing they count, so made and not-made images add up to the plan."""
        with self._mutex, _named_errors(self.run_dir / LEDGER_FILE, writing=False):
            conn = self._db()
            if conn.in_transaction:  # inside another snapshot (or a write): that one holds the moment
                yield
                return
            conn.execute("BEGIN")
            try:
                yield
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # read only: nothing to keep

    def _read(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        with self._mutex, _named_errors(self.run_dir / LEDGER_FILE, writing=False):
            return self._db().execute(sql, params).fetchall()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; everything inside commits together or not at all."""
        if self.readonly:
            raise LedgerError(f"the ledger of {self.run_dir} was opened readonly=True; "
                              "open it without readonly to change it")
        with self._mutex, _named_errors(self.run_dir / LEDGER_FILE, writing=True):
            conn = self._db()
            if conn.in_transaction:  # left open by an interrupt (Ctrl-C) that landed inside a rollback
                conn.rollback()
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException:  # KeyboardInterrupt too: an interrupt anywhere here leaves no open transaction
                if conn.in_transaction:
                    conn.rollback()
                raise

    def image_path(self, key: str) -> Path:
        """Where the image of `key` lives: ``RUN/images/<key>.png``."""
        return self.images_dir / f"{_check_key(key)}.png"

    # ---------------------------------------------------------------- meta

    def get_meta(self, name: str, default: str | None = None) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else default

    def set_meta(self, name: str, value: str) -> None:
        """Record run-level information (experiment hash, versions) as text."""
        if name == "schema_version":
            raise ValueError("set_meta: 'schema_version' is owned by the ledger itself")
        if not isinstance(value, str):
            raise TypeError(f"set_meta({name!r}): value must be a str, got {type(value).__name__}; "
                            "encode structured values with core.canonical_json")
        with self._write() as conn:
            conn.execute("INSERT INTO meta(name, value) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    # ---------------------------------------------------------------- jobs

    def add_jobs(self, jobs: Iterable[Job], *, refresh: bool = False) -> int:
        """Insert jobs not yet in the ledger; returns how many were new.

        A key already present keeps its row, status and run information. Its stored job (factors,
        meta, checkpoint name: what the key does not cover) stays the first one seen, unless
        `refresh`: then it becomes this one, so an experiment whose factors were renamed or added
        describes its existing images the way it describes new ones.
        """
        now, rows = _now(), []
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError(f"add_jobs: expected Job objects, got {type(job).__name__}")
            stage, parent = job.meta.get("stage"), job.meta.get("parent_key")
            rows.append((job.key, _json(job.to_dict(), f"job {job.key[:12]}"), job.checkpoint,
                         job.mode, job.prompt, job.seed, None if stage is None else str(stage),
                         parent, now))
        on_conflict = ("DO UPDATE SET job_json = excluded.job_json, checkpoint = excluded.checkpoint, "
                       "stage = excluded.stage, parent_key = excluded.parent_key" if refresh else "DO NOTHING")
        with self._write() as conn:
            before = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            conn.executemany(
                "INSERT INTO jobs(key, job_json, checkpoint, mode, prompt, seed, stage, parent_key, added_at) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) {on_conflict}", rows)
            return conn.execute("SELECT count(*) FROM jobs").fetchone()[0] - before

    def all_jobs(self, status: str | None = None) -> list[Job]:
        """Jobs in the order they were added, optionally only those with `status`."""
        rows = self._select_jobs("key, job_json", status)
        jobs = []
        for row in rows:
            job = Job.from_dict(json.loads(row["job_json"]))
            if job.key != row["key"]:
                raise LedgerError(f"ledger row {row['key'][:12]} no longer hashes to its key "
                                  f"(recomputed {job.key[:12]}): it was written by a harness with a "
                                  "different Job schema. Use a new run folder.")
            jobs.append(job)
        return jobs

    def pending_jobs(self) -> list[Job]:
        return self.all_jobs("pending")

    def done_jobs(self) -> list[Job]:
        """Done jobs the current plan asks for (all done jobs when no plan was recorded)."""
        planned = self.planned_keys()
        return [j for j in self.all_jobs("done") if planned is None or j.key in planned]

    def timings(self) -> list[tuple[Job, float, str]]:
        """(job, seconds per image, device) of every finished image, as `plan.measured_scale` reads them."""
        return [(Job.from_dict(json.loads(r["job_json"])), r["seconds"], r["device"])
                for r in self._select_jobs("job_json, seconds, device", "done")]

    def done_keys(self) -> set[str]:
        return {row[0] for row in self._select_jobs("key", "done")}

    def count(self, status: str | None = None) -> int:
        return self._select_jobs("count(*)", status)[0][0]

    def status_of(self, key: str) -> str | None:
        rows = self._read("SELECT status FROM jobs WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def _select_jobs(self, columns: str, status: str | None) -> list[sqlite3.Row]:
        if status is None:
            return self._read(f"SELECT {columns} FROM jobs ORDER BY rowid")
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {STATUSES}")
        return self._read(f"SELECT {columns} FROM jobs WHERE status = ? ORDER BY rowid", (status,))

    def mark_done(self, key: str, *, batch_id: Any, batch_size: int, slot: int, seconds: float,
                  device: str, dtype: str, memory: Sequence[str] = (),
                  health: Mapping[str, Any] | None = None, host: str | None = None) -> None:
        """Mark one job done; its image must already be written (write_png_atomic)."""
        self.mark_done_many([Done(key, batch_id, batch_size, slot, seconds, device, dtype,
                                  memory, health, host)])

    def mark_done_many(self, rows: Iterable[Done | Mapping[str, Any]]) -> None:
        """Mark a batch of jobs done in one transaction (all or none); scores of an earlier image of the
        same job (one made again after :meth:`force`) are deleted with it."""
        done = [row if isinstance(row, Done) else _done_from_mapping(row) for row in rows]
        now, host, params, digests = _now(), socket.gethostname(), [], []
        for d in done:
            path = self.image_path(d.key)
            if isinstance(d.memory, str) or not all(isinstance(m, str) for m in d.memory):
                raise TypeError(f"mark_done({d.key[:12]}): memory must be a list of str settings, "
                                f"got {d.memory!r}")
            if not path.is_file():
                raise LedgerError(f"mark_done({d.key[:12]}): {path} does not exist; write the image "
                                  "with write_png_atomic before marking its job done")
            digests.append((d.key, file_sha256(path)))
            params.append((now, d.batch_id, d.batch_size, d.slot, d.seconds, d.device, d.dtype,
                           d.host or host, _json(list(d.memory), f"memory of {d.key[:12]}"),
                           None if d.health is None else _json(dict(d.health), f"health of {d.key[:12]}"),
                           d.key))
        with self._write() as conn:
            for p in params:
                cur = conn.execute(
                    "UPDATE jobs SET status = 'done', done_at = ?, batch_id = ?, batch_size = ?, "
                    "slot = ?, seconds = ?, device = ?, dtype_used = ?, host = ?, memory = ?, "
                    "health = ?, error = NULL WHERE key = ?", p)
                if cur.rowcount != 1:
                    raise LedgerError(f"mark_done: job {p[-1][:12]} is not in the ledger; "
                                      "add it with add_jobs first")
                conn.execute("DELETE FROM scores WHERE key = ?", (p[-1],))  # a remade image: its old scores go
            conn.executemany("INSERT OR REPLACE INTO image_files(key, sha256) VALUES (?, ?)", digests)

    def mark_failed(self, key: str, error: str) -> None:
        """Record that a job could not be made; it stays failed until reset/requeue."""
        with self._write() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE key = ?", (_check_key(key),)).fetchone()
            if row is None:
                raise LedgerError(f"mark_failed: job {key[:12]} is not in the ledger")
            if row[0] == "done":
                raise LedgerError(f"mark_failed: job {key[:12]} is done; reset([key]) it first")
            conn.execute(f"UPDATE jobs SET status = 'failed', {_CLEAR_RUN}, error = ? WHERE key = ?",
                         (str(error), key))

    def drop_pending(self, keep: Iterable[str]) -> int:
        """Delete pending or failed rows whose key is not in `keep` (jobs an
        edited experiment no longer asks for). Done rows and images stay."""
        keep = set(keep)
        with self._write() as conn:
            stale = [k for (k,) in conn.execute("SELECT key FROM jobs WHERE status != 'done'") if k not in keep]
            for key in stale:
                conn.execute("DELETE FROM jobs WHERE key = ?", (key,))
        return len(stale)

    def requeue_failed(self) -> int:
        """Put every failed job back to pending; returns how many."""
        with self._write() as conn:
            return conn.execute("UPDATE jobs SET status = 'pending', error = NULL "
                                "WHERE status = 'failed'").rowcount

    def made_with(self) -> set[tuple[str, str]]:
        """(device type, dtype) pairs the done images were made with, e.g. {("cpu", "fp32")}."""
        rows = self._read("SELECT DISTINCT device, dtype_used FROM jobs WHERE status = 'done'")
        return {(str(d).split(":")[0], str(t)) for d, t in rows if d is not None}

    def force(self, keys: Iterable[str], *, among: set[str] | None = None) -> None:
        """``--force`` of the jobs `keys` and the later stages' jobs made from them: each done one is to be
        made again (:meth:`stale_keys`). Its image and scores stay until the new image replaces them, so an
        interrupted forced run loses nothing. A force of jobs some of which an earlier force has not remade
        yet goes on with that one (the images it remade stay); otherwise it starts anew. Jobs not in `keys`
        (another shard, another version of the experiment) are left as they are, and so are later stages'
        jobs not `among` the given keys (when given: a run passes the plan as it found the folder, before an
        edit dropped the stages' parts to plan them again): an earlier version's, or those made from a parent
        that an earlier force remade with other pixels. Nothing would remake them, so a force of them would
        never finish."""
        keys = {_check_key(k) for k in keys}
        now = _now()
        with self._write() as conn:
            made_from: dict[str, list[str]] = {}
            for key, parent in conn.execute("SELECT key, parent_key FROM jobs WHERE parent_key IS NOT NULL"):
                made_from.setdefault(parent, []).append(key)
            todo = list(keys)
            while todo:
                for child in made_from.get(todo.pop(), ()):
                    if child not in keys and (among is None or child in among):
                        keys.add(child)
                        todo.append(child)
            done = {k for (k,) in conn.execute("SELECT key FROM jobs WHERE status = 'done'") if k in keys}
            unfinished = {k for (k,) in conn.execute(_STALE)} & keys
            verb = "INSERT OR IGNORE" if unfinished else "INSERT OR REPLACE"
            conn.executemany(f"{verb} INTO forced(key, since) VALUES (?, ?)", [(k, now) for k in sorted(done)])

    def stale_keys(self) -> set[str]:
        """Done jobs a :meth:`force` asked to make again that are not made again yet."""
        return {row[0] for row in self._rows_if_table(_STALE)}

    def reset(self, keys: Iterable[str]) -> int:
        """Back to pending (``--force``): clears run info and scores, deletes the images."""
        keys = list(dict.fromkeys(_check_key(k) for k in keys))
        self._requeue({k: None for k in keys}, strict=True)
        for key in keys:
            self.image_path(key).unlink(missing_ok=True)
        return len(keys)

    def _requeue(self, reasons: Mapping[str, str | None], *, strict: bool) -> None:
        with self._write() as conn:
            for key, reason in reasons.items():
                cur = conn.execute(f"UPDATE jobs SET status = 'pending', {_CLEAR_RUN}, error = ? "
                                   "WHERE key = ?", (reason, key))
                if strict and cur.rowcount != 1:
                    raise LedgerError(f"reset: job {key[:12]} is not in the ledger")
                conn.execute("DELETE FROM scores WHERE key = ?", (key,))
                conn.execute("DELETE FROM image_files WHERE key = ?", (key,))

    def image_problems(self, keys: Iterable[str] | None = None, *, decode: bool = False) -> dict[str, str]:
        """Done images (of `keys`, or all) whose file is missing, damaged or no longer the file it was made
        as, each with why: what :meth:`reconcile` would put back to pending. Reads only, so a report can
        say which scores belong to no image, or to another one."""
        done = self.done_keys()
        return self._image_problems(done if keys is None else done & set(keys), decode=decode)[0]

    def _image_problems(self, keys: Iterable[str], *, decode: bool) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """(key -> why, for the images of `keys` that are not sound; (key, digest) of sound ones with no
        digest recorded yet, from a ledger older than digests)."""
        recorded = dict(self._rows_if_table("SELECT key, sha256 FROM image_files"))
        stale = self.stale_keys()
        problems, unrecorded = {}, []
        for key in sorted(keys):
            reason, digest = check_png_digest(self.image_path(key), decode=decode)
            if reason is None:
                if key not in recorded:
                    unrecorded.append((key, digest))
                elif digest != recorded[key]:
                    # under --force a remade image is written before it is recorded: an interrupt between
                    # the two leaves a sound new file that is remade all the same
                    reason = CHANGED if key not in stale else FORCE_UNRECORDED
            if reason is not None:
                problems[key] = reason
        return problems, unrecorded

    def reconcile(self, *, decode: bool = False, remove_damaged: bool = True) -> Reconciled:
        """Make the ledger agree with the images folder. Call at run start.

        Deletes temp files left by interrupted writes; any done job whose image
        is missing, fails :func:`check_png` (every chunk CRC; with
        `decode=True` also a full pixel decode) or is no longer the file it
        was made as (its SHA-256, recorded by :meth:`mark_done_many`, differs:
        replaced or edited by hand) goes back to pending, its scores removed
        and, with `remove_damaged` (a run about to remake it), its file too.
        A done job with no recorded digest (a ledger from before digests were
        kept) adopts its file's. Images of jobs not done are reported as
        orphans and left alone (a rerun overwrites them), and so are images
        of no job at all, as strays.
        """
        if self.readonly:
            raise LedgerError("reconcile() changes the ledger; open it without readonly=True")
        with self._mutex:
            temp_removed = []
            for path in sorted(self.images_dir.iterdir()):
                if is_temp_name(path.name):
                    path.unlink(missing_ok=True)
                    temp_removed.append(path.name)
            done = self.done_keys()
            requeued, adopted = self._image_problems(done, decode=decode)
            on_disk = {p.stem for p in self.images_dir.glob("*.png") if _KEY.fullmatch(p.stem)}
            # files an earlier reconcile that kept them (`harness eval`) re-queued: a run about to remake
            # them names them as that one did, not as orphans
            earlier = {k: why.removeprefix(_REQUEUED) for k, why in self._read(
                "SELECT key, error FROM jobs WHERE status = 'pending' AND error LIKE ?", (_REQUEUED + "%",))}
            if remove_damaged:
                requeued.update({k: earlier[k] for k in sorted(on_disk & earlier.keys())})
            with self._write() as conn:
                conn.executemany("INSERT OR REPLACE INTO image_files(key, sha256) VALUES (?, ?)", adopted)
            self._requeue({k: _REQUEUED + why for k, why in requeued.items()}, strict=False)
            for key, why in requeued.items():
                if why != "missing" and remove_damaged:
                    self.image_path(key).unlink(missing_ok=True)
            unrecorded = on_disk - done - requeued.keys() - earlier.keys()
            jobs = {r[0] for r in self._read("SELECT key FROM jobs")} if unrecorded else set()
        return Reconciled(requeued, temp_removed, sorted(unrecorded & jobs), sorted(unrecorded - jobs))

    # ---------------------------------------------------------------- the current plan

    def set_plan(self, part: str, keys: Iterable[str], *, add: bool = False) -> None:
        """Record the keys `part` of the experiment asks for now, replacing that part's
        earlier keys (or adding to them with `add=True`); one transaction."""
        rows = [(part, _check_key(k)) for k in dict.fromkeys(keys)]
        with self._write() as conn:
            if not add:
                conn.execute("DELETE FROM plan WHERE part = ?", (part,))
            conn.executemany("INSERT OR IGNORE INTO plan(part, key) VALUES (?, ?)", rows)

    def drop_plan(self, parts: Iterable[str]) -> None:
        """Forget the named plan parts (a stage removed from the experiment)."""
        with self._write() as conn:
            conn.executemany("DELETE FROM plan WHERE part = ?", [(p,) for p in parts])

    def plan_parts(self) -> list[str]:
        return [r[0] for r in self._rows_if_table("SELECT DISTINCT part FROM plan ORDER BY part")]

    def plan_keys(self, part: str) -> set[str]:
        """Keys plan part `part` asks for now (empty when it has none)."""
        with self._mutex:
            try:
                rows = self._db().execute("SELECT key FROM plan WHERE part = ?", (part,)).fetchall()
            except sqlite3.OperationalError as exc:  # a ledger from before plans (digests, forces), opened read-only
                if "no such table" not in str(exc):
                    raise
                rows = []
        return {r[0] for r in rows}

    def planned_jobs(self, part: str) -> list[Job]:
        """The jobs plan part `part` asks for, in the order they were added (none when it has none)."""
        rows = self._read("SELECT j.job_json FROM plan p JOIN jobs j ON j.key = p.key WHERE p.part = ? "
                          "ORDER BY j.rowid", (part,))
        return [Job.from_dict(json.loads(r[0])) for r in rows]

    def planned_keys(self) -> set[str] | None:
        """Keys some part of the current plan asks for; None when the ledger holds no plan
        (written by an older harness, or never planned): then every done job counts."""
        rows = self._rows_if_table("SELECT DISTINCT key FROM plan")
        return {r[0] for r in rows} if rows else None

    def part_progress(self) -> dict[str, tuple[int, int]]:
        """Plan part (main, stage:<name>, ...) -> (jobs it planned, of those done)."""
        rows = self._rows_if_table("SELECT p.part, COUNT(*), SUM(j.status = 'done') FROM plan p "
                               "LEFT JOIN jobs j ON j.key = p.key GROUP BY p.part")
        return {part: (n, int(done or 0)) for part, n, done in rows}

    def unplanned_done(self) -> int:
        """Done jobs the current plan no longer asks for (kept, left out of reports)."""
        planned = self.planned_keys()
        return 0 if planned is None else len(self.done_keys() - planned)

    def planned_not_done(self) -> int:
        """Images the current plan asks for that are not done yet (a shard not merged, an interrupted run)."""
        planned = self.planned_keys()
        return 0 if planned is None else len(planned - self.done_keys())

    def _rows_if_table(self, sql: str) -> list[sqlite3.Row]:
        with self._mutex:
            try:
                return self._db().execute(sql).fetchall()
            except sqlite3.OperationalError as exc:  # a ledger from before plans (digests, forces), opened read-only
                if "no such table" in str(exc):
                    return []
        return self._read(sql)  # any other error, named

    # ---------------------------------------------------------------- scores

    def put_scores(self, scores: Iterable[Score]) -> int:
        """Insert or replace scores (one per key and metric id); returns how many were written. A value
        must be finite or NaN (infinities would pass as scores to means and tests, and not to plots)."""
        now, rows = _now(), []
        for s in scores:
            if not isinstance(s, Score):
                raise TypeError(f"put_scores: expected Score objects, got {type(s).__name__}")
            if not isinstance(s.metric, str) or not s.metric:
                raise ValueError(f"put_scores: score for {s.key[:12]} has metric {s.metric!r}; "
                                 "expected the metric configuration id")
            value = float(s.value)
            if math.isinf(value):
                raise ValueError(f"put_scores: score {s.metric} for {s.key[:12]} is {value}; expected a finite "
                                 "value, or NaN with detail {'reason': ...} for an image that cannot be scored")
            rows.append((_check_key(s.key), s.metric, None if math.isnan(value) else value,
                         _json(dict(s.detail), f"detail of score {s.metric} for {s.key[:12]}"), now))
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO scores(key, metric, value, detail, scored_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(key, metric) DO UPDATE SET value = excluded.value, "
                "detail = excluded.detail, scored_at = excluded.scored_at", rows)
        return len(rows)

    def scored_keys(self, metric_id: str, since: str | None = None) -> set[str]:
        """Keys scored by `metric_id` (after the time `since`, when given: a score written in the same
        instant may predate it, so it counts as not scored)."""
        if since is None:
            return {r[0] for r in self._read("SELECT key FROM scores WHERE metric = ?", (metric_id,))}
        return {r[0] for r in self._read("SELECT key FROM scores WHERE metric = ? AND scored_at > ?",
                                         (metric_id, since))}

    # ---------------------------------------------------------------- frames and merging

    def jobs_frame(self):
        """One row per job: Job fields, ``f.<factor>``, ``meta.<name>``, run columns, ``h.<health>``."""
        from .frames import jobs_frame
        return jobs_frame(self)

    def scores_frame(self):
        """One row per (key, metric): value (NaN where not scorable), detail (JSON text), scored_at."""
        from .frames import scores_frame
        return scores_frame(self)

    def merge_from(self, other_run_dir: str | os.PathLike) -> Merged:
        """Copy done jobs, their images, scores and plan from another run folder (e.g. a shard);
        see :func:`harness.ledger.merge.merge_runs`."""
        from .merge import merge_runs
        return merge_runs(self, Path(other_run_dir))
