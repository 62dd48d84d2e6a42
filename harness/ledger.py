"""The run's ledger: one SQLite file that says which jobs exist, which are done,
how they were made, and what they scored.

A run folder looks like::

    RUN/ledger.sqlite      tables meta, jobs, scores, plan (WAL mode)
    RUN/ledger.lock        held by the one process that writes (POSIX flock)
    RUN/images/<key>.png   written atomically, provenance inside (provenance.py)
    RUN/tables/            derived files, rebuilt from the ledger

Invariants:

- A job is marked done only after its image is durable: ``write_png_atomic``
  fsyncs the file and its folder before it returns, and ``mark_done`` refuses a
  key whose image file is absent. ``reconcile()`` (run start) puts back to
  pending any done row whose image is missing or damaged, and deletes temp files
  left by interrupted writes, so the ledger and the folder never disagree.
- Scores exist only for done jobs: resetting or requeueing a job drops its scores.
- The ``plan`` table holds the keys the experiment asks for now, in parts
  (``main``, ``stage:<name>``, ``ablation``, ``search:<id>``), each replaced by
  whoever plans it. Done jobs in no part (made before the experiment was
  edited) keep their rows, images and scores but are left out of
  :meth:`Ledger.done_jobs` and so of evaluation, reports and stage parents;
  planning them again (undoing the edit) brings them back without regenerating.

Durability choice: ``journal_mode=WAL`` with ``synchronous=NORMAL``. A commit
survives a crash of the process (``kill -9``) at any moment. After a power loss
WAL+NORMAL may roll back the last few commits but never corrupts the file; a
lost "done" mark only makes that job run again, while a "done" mark without its
image cannot happen because the image was fsynced before the commit began. FULL
would add one fsync per commit to protect only recomputable work.

Concurrency: any number of readers (``Ledger.open(run, readonly=True)``, pandas,
the sqlite3 shell) may read while one process writes. A second writer on the
same folder is refused with :class:`LedgerLocked`. Within the writing process a
Ledger may be shared between threads; its operations are serialised by a lock.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .core import Job, Score, canonical_json
from .provenance import check_png, fsync_dir, is_temp_name, write_durably

try:  # the single-writer guard is POSIX-only; elsewhere SQLite's own locking still applies
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LEDGER_SCHEMA_VERSION = 1
LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = "ledger.lock"
IMAGES_DIR = "images"
TABLES_DIR = "tables"
STATUSES = ("pending", "done", "failed")
_KEY = re.compile(r"[0-9a-f]{64}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(
  name  TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs(
  key        TEXT PRIMARY KEY,
  job_json   TEXT NOT NULL,            -- canonical JSON of Job.to_dict()
  checkpoint TEXT NOT NULL,
  mode       TEXT NOT NULL,
  prompt     TEXT NOT NULL,
  seed       INTEGER NOT NULL,
  stage      TEXT,                     -- job.meta["stage"], for multi-stage runs
  parent_key TEXT,                     -- job.meta["parent_key"], the image it came from
  status     TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
  added_at   TEXT NOT NULL,
  done_at    TEXT,
  batch_id,                            -- whatever the generator uses to name a batch
  batch_size INTEGER,
  slot       INTEGER,
  seconds    REAL,                     -- wall time of the batch divided by its size
  device     TEXT,
  dtype_used TEXT,                     -- the dtype actually used (Job.dtype is the policy)
  host       TEXT,
  memory     TEXT,                     -- JSON list of memory settings in force
  health     TEXT,                     -- JSON object from the generator's health checks
  error      TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS scores(
  key       TEXT NOT NULL,
  metric    TEXT NOT NULL,             -- metric configuration id
  value     REAL,                      -- NULL stands for NaN
  detail    TEXT NOT NULL,             -- canonical JSON object
  scored_at TEXT NOT NULL,
  PRIMARY KEY (key, metric)
);
CREATE TABLE IF NOT EXISTS plan(
  part TEXT NOT NULL,                  -- who planned it: main, stage:<name>, ablation, search:<id>
  key  TEXT NOT NULL,
  PRIMARY KEY (part, key)
);
"""

# Columns describing how a done job was made (cleared when it goes back to pending).
_RUN_COLUMNS = ("done_at", "batch_id", "batch_size", "slot", "seconds", "device", "dtype_used",
                "host", "memory", "health")
_JOB_COLUMNS = ("key", "job_json", "checkpoint", "mode", "prompt", "seed", "stage", "parent_key",
                "status", "added_at", *_RUN_COLUMNS, "error")
_CLEAR_RUN = ", ".join(f"{c} = NULL" for c in _RUN_COLUMNS)


class LedgerError(RuntimeError):
    """A ledger operation that cannot proceed; the message says why and what to do."""


class LedgerLocked(LedgerError):
    """Another Ledger already has this run folder open for writing."""


@dataclass(frozen=True)
class Done:
    """How one job was made; the argument of :meth:`Ledger.mark_done_many`."""

    key: str
    batch_id: Any
    batch_size: int
    slot: int
    seconds: float
    device: str
    dtype: str
    memory: Sequence[str] = ()
    health: Mapping[str, Any] | None = None
    host: str | None = None


@dataclass(frozen=True)
class Reconciled:
    """What :meth:`Ledger.reconcile` changed."""

    requeued: dict[str, str] = field(default_factory=dict)   # key -> why its image was rejected
    temp_removed: list[str] = field(default_factory=list)    # names of deleted temp files
    orphans: list[str] = field(default_factory=list)         # keys with an image but no done row


@dataclass(frozen=True)
class Merged:
    """What :meth:`Ledger.merge_from` copied."""

    jobs_added: int = 0            # done rows copied (new keys, or pending/failed here)
    jobs_already_done: int = 0     # done in both runs: this run's row and image kept
    scores_added: int = 0
    bad_images: dict[str, str] = field(default_factory=dict)  # skipped: key -> reason


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"not a job key: {key!r}; a key is 64 lowercase hex digits (Job.key)")
    return key


def _json(value: Any, what: str) -> str:
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable without NaN/inf: {exc}") from exc


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
            conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=30,
                                   isolation_level=None, check_same_thread=False)
            ledger = cls(run_dir, conn, readonly=True, lock_fd=None)
        else:
            for d in (run_dir, run_dir / IMAGES_DIR, run_dir / TABLES_DIR):
                d.mkdir(parents=True, exist_ok=True)
            lock_fd = _acquire_writer_lock(run_dir)
            try:
                conn = sqlite3.connect(db, timeout=30, isolation_level=None, check_same_thread=False)
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise LedgerError(f"{db}: SQLite refused WAL mode (got {mode!r}); "
                                      "keep run folders on a local filesystem")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('schema_version', ?)",
                             (str(LEDGER_SCHEMA_VERSION),))
            except BaseException:
                os.close(lock_fd)
                raise
            ledger = cls(run_dir, conn, readonly=False, lock_fd=lock_fd)
        conn.row_factory = sqlite3.Row
        found = ledger.get_meta("schema_version")
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

    def _read(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        with self._mutex:
            return self._db().execute(sql, params).fetchall()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; everything inside commits together or not at all."""
        if self.readonly:
            raise LedgerError(f"the ledger of {self.run_dir} was opened readonly=True; "
                              "open it without readonly to change it")
        with self._mutex:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

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

    def add_jobs(self, jobs: Iterable[Job]) -> int:
        """Insert jobs not yet in the ledger; returns how many were new.

        A key already present keeps its row, status and stored job (the first
        job seen with a key is the one recorded).
        """
        now, rows = _now(), []
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError(f"add_jobs: expected Job objects, got {type(job).__name__}")
            stage, parent = job.meta.get("stage"), job.meta.get("parent_key")
            rows.append((job.key, _json(job.to_dict(), f"job {job.key[:12]}"), job.checkpoint,
                         job.mode, job.prompt, job.seed, None if stage is None else str(stage),
                         parent, now))
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO jobs(key, job_json, checkpoint, mode, prompt, seed, stage, "
                "parent_key, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return conn.total_changes - before

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
        """Mark a batch of jobs done in one transaction (all or none)."""
        done = [row if isinstance(row, Done) else _done_from_mapping(row) for row in rows]
        now, host, params = _now(), socket.gethostname(), []
        for d in done:
            path = self.image_path(d.key)
            if isinstance(d.memory, str) or not all(isinstance(m, str) for m in d.memory):
                raise TypeError(f"mark_done({d.key[:12]}): memory must be a list of str settings, "
                                f"got {d.memory!r}")
            if not path.is_file():
                raise LedgerError(f"mark_done({d.key[:12]}): {path} does not exist; write the image "
                                  "with write_png_atomic before marking its job done")
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

    def reconcile(self, *, decode: bool = False) -> Reconciled:
        """Make the ledger agree with the images folder. Call at run start.

        Deletes temp files left by interrupted writes; any done job whose image
        is missing or fails :func:`check_png` (every chunk CRC; with
        `decode=True` also a full pixel decode) goes back to pending, its
        damaged file and its scores removed. Images without a done row are
        reported as orphans and left alone (a rerun overwrites them).
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
            requeued = {}
            for key in sorted(done):
                reason = check_png(self.image_path(key), decode=decode)
                if reason is not None:
                    requeued[key] = reason
            self._requeue({k: f"reconcile: image {why}" for k, why in requeued.items()}, strict=False)
            for key, why in requeued.items():
                if why != "missing":
                    self.image_path(key).unlink(missing_ok=True)
            on_disk = {p.stem for p in self.images_dir.glob("*.png") if _KEY.fullmatch(p.stem)}
            orphans = sorted(on_disk - (done - set(requeued)))
        return Reconciled(requeued, temp_removed, orphans)

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
        return [r[0] for r in self._plan_rows("SELECT DISTINCT part FROM plan ORDER BY part")]

    def planned_keys(self) -> set[str] | None:
        """Keys some part of the current plan asks for; None when the ledger holds no plan
        (written by an older harness, or never planned): then every done job counts."""
        rows = self._plan_rows("SELECT DISTINCT key FROM plan")
        return {r[0] for r in rows} if rows else None

    def unplanned_done(self) -> int:
        """Done jobs the current plan no longer asks for (kept, left out of reports)."""
        planned = self.planned_keys()
        return 0 if planned is None else len(self.done_keys() - planned)

    def _plan_rows(self, sql: str) -> list[sqlite3.Row]:
        try:
            return self._read(sql)
        except sqlite3.OperationalError as exc:  # a ledger from before plans, opened read-only
            if "no such table" in str(exc):
                return []
            raise

    # ---------------------------------------------------------------- scores

    def put_scores(self, scores: Iterable[Score]) -> int:
        """Insert or replace scores (one per key and metric id); returns how many were written."""
        now, rows = _now(), []
        for s in scores:
            if not isinstance(s, Score):
                raise TypeError(f"put_scores: expected Score objects, got {type(s).__name__}")
            if not isinstance(s.metric, str) or not s.metric:
                raise ValueError(f"put_scores: score for {s.key[:12]} has metric {s.metric!r}; "
                                 "expected the metric configuration id")
            value = float(s.value)
            rows.append((_check_key(s.key), s.metric, None if math.isnan(value) else value,
                         _json(dict(s.detail), f"detail of score {s.metric} for {s.key[:12]}"), now))
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO scores(key, metric, value, detail, scored_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(key, metric) DO UPDATE SET value = excluded.value, "
                "detail = excluded.detail, scored_at = excluded.scored_at", rows)
        return len(rows)

    def scored_keys(self, metric_id: str) -> set[str]:
        return {r[0] for r in self._read("SELECT key FROM scores WHERE metric = ?", (metric_id,))}

    # ---------------------------------------------------------------- frames

    def jobs_frame(self):
        """One row per job: Job fields, ``f.<factor>``, ``meta.<name>``, run columns, ``h.<health>``."""
        import pandas as pd

        job_fields = [f.name for f in fields(Job) if f.name not in ("factors", "meta")]
        run_cols = ["status", "stage", "parent_key", "added_at", "done_at", "batch_id", "batch_size",
                    "slot", "seconds", "device", "dtype_used", "host", "memory", "error"]
        records, fcols, mcols, hcols = [], set(), set(), set()
        for row in self._read("SELECT * FROM jobs ORDER BY rowid"):
            d = json.loads(row["job_json"])
            rec = {"key": row["key"], **{name: d.get(name) for name in job_fields}}
            for k, v in d.get("factors", {}).items():
                rec[f"f.{k}"] = v
                fcols.add(f"f.{k}")
            for k, v in d.get("meta", {}).items():
                rec[f"meta.{k}"] = v if v is None or isinstance(v, (str, int, float, bool)) else canonical_json(v)
                mcols.add(f"meta.{k}")
            rec.update({c: row[c] for c in run_cols})
            rec["memory"] = None if row["memory"] is None else ",".join(json.loads(row["memory"]))
            for k, v in (json.loads(row["health"]) if row["health"] else {}).items():
                rec[f"h.{k}"] = v
                hcols.add(f"h.{k}")
            records.append(rec)
        columns = ["key", *job_fields, *sorted(fcols), *sorted(mcols), *run_cols, *sorted(hcols)]
        return pd.DataFrame.from_records(records, columns=columns)

    def scores_frame(self):
        """One row per (key, metric): value (NaN where not scorable), detail (JSON text), scored_at."""
        import pandas as pd

        rows = self._read("SELECT key, metric, value, detail, scored_at FROM scores ORDER BY key, metric")
        frame = pd.DataFrame.from_records([tuple(r) for r in rows],
                                          columns=["key", "metric", "value", "detail", "scored_at"])
        frame["value"] = frame["value"].astype(float)
        return frame

    # ---------------------------------------------------------------- merging

    def merge_from(self, other_run_dir: str | os.PathLike) -> Merged:
        """Copy done jobs, their images, scores and plan from another run folder (e.g. a shard).

        Keys done here already are kept as they are; plan parts are joined. Images are verified
        (:func:`check_png`) and copied atomically and durably before the rows
        that mark them done are committed.
        """
        other_dir = Path(other_run_dir)
        if other_dir.resolve() == self.run_dir.resolve():
            raise ValueError(f"merge_from: {other_dir} is this run folder itself")
        with Ledger.open(other_dir, readonly=True) as other:
            theirs = other._read(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs "
                                 "WHERE status = 'done' ORDER BY rowid")
            their_scores = other._read("SELECT s.key, s.metric, s.value, s.detail, s.scored_at "
                                       "FROM scores s JOIN jobs j ON j.key = s.key "
                                       "WHERE j.status = 'done'")
            their_plan = other._plan_rows("SELECT part, key FROM plan")
            with self._mutex:
                mine = self.done_keys()
                copied, bad = [], {}
                for row in theirs:
                    if row["key"] in mine:
                        continue
                    src = other.image_path(row["key"])
                    reason = check_png(src)
                    if reason is not None:
                        bad[row["key"]] = reason
                        continue
                    _copy_file_durably(src, self.image_path(row["key"]))
                    copied.append(row)
                fsync_dir(self.images_dir)
                keep = mine | {row["key"] for row in copied}
                with self._write() as conn:
                    placeholders = ", ".join("?" * len(_JOB_COLUMNS))
                    updates = ", ".join(f"{c} = excluded.{c}" for c in ("status", *_RUN_COLUMNS, "error"))
                    conn.executemany(f"INSERT INTO jobs({', '.join(_JOB_COLUMNS)}) VALUES ({placeholders}) "
                                     f"ON CONFLICT(key) DO UPDATE SET {updates}",
                                     [tuple(row) for row in copied])
                    before = conn.total_changes
                    conn.executemany("INSERT OR IGNORE INTO scores(key, metric, value, detail, scored_at) "
                                     "VALUES (?, ?, ?, ?, ?)",
                                     [tuple(s) for s in their_scores if s["key"] in keep])
                    scores_added = conn.total_changes - before
                    conn.executemany("INSERT OR IGNORE INTO plan(part, key) VALUES (?, ?)",
                                     [tuple(r) for r in their_plan])
        return Merged(len(copied), sum(row["key"] in mine for row in theirs), scores_added, bad)


def _done_from_mapping(row: Mapping[str, Any]) -> Done:
    names = {f.name for f in fields(Done)}
    unknown = set(row) - names
    if unknown:
        raise TypeError(f"mark_done_many: unknown fields {sorted(unknown)}; expected {sorted(names)}")
    return Done(**row)


def _copy_file_durably(src: Path, dst: Path) -> None:
    """Copy through a temp file, fsync, rename: `dst` is absent or complete. The caller fsyncs the folder."""
    with open(src, "rb") as fin:
        write_durably(dst, lambda fout: shutil.copyfileobj(fin, fout))


def _acquire_writer_lock(run_dir: Path) -> int:
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:  # pragma: no cover - Windows
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if holder == str(os.getpid()):
            raise LedgerLocked(f"{run_dir} is already open for writing in this process; pass that "
                               "Ledger along instead of opening a second one") from None
        raise LedgerLocked(f"{run_dir} is open for writing by another process (pid {holder}); wait "
                           "for it to finish, or read with Ledger.open(run_dir, readonly=True)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd
