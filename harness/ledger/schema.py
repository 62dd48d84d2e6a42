"""The ledger's SQLite schema, its row records and errors, and the single-writer lock."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core import canonical_json

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
CHANGED = "changed since it was made"  # why a done image whose bytes differ from its recorded digest is rejected
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
CREATE TABLE IF NOT EXISTS image_files(
  key    TEXT PRIMARY KEY,             -- a done job
  sha256 TEXT NOT NULL                 -- of its image file as made: reconcile requeues a file that differs
);
CREATE TABLE IF NOT EXISTS forced(
  key   TEXT PRIMARY KEY,              -- a job --force asked to make again
  since TEXT NOT NULL                  -- when: done before this, it is still to be remade
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
    orphans: list[str] = field(default_factory=list)         # keys with an image and a job not done
    strays: list[str] = field(default_factory=list)          # keys with an image and no job at all

    def repaired_text(self, consequence: str) -> str:
        """'N finished image(s) were missing, damaged or changed (n why, ...) <consequence>', or ''."""
        if not self.requeued:
            return ""
        reasons = Counter(self.requeued.values()).most_common()
        cut = 3 if len(reasons) > 4 else 4  # folding one reason into "other reasons" would save nothing
        shown = [f"{n} {why}" for why, n in reasons[:cut]]
        if len(reasons) > cut:
            shown.append(f"{sum(n for _, n in reasons[cut:])} for {len(reasons) - cut} other reason(s)")
        return (f"{len(self.requeued)} finished image(s) were missing, damaged or changed ("
                + ", ".join(shown) + f") {consequence}")

    def orphans_text(self, consequence: str) -> str:
        """'N image file(s) in images/ belong to no finished job (...) <consequence>', or '' when none do."""
        if not self.orphans:
            return ""
        return (f"{len(self.orphans)} image file(s) in images/ belong to no finished job (written just before an "
                f"interruption recorded them, or put there by hand) {consequence}")

    def strays_text(self) -> str:
        """'N image file(s) in images/ belong to no job this folder records (...)', or '' when none do."""
        if not self.strays:
            return ""
        return (f"{len(self.strays)} image file(s) in images/ belong to no job this folder records (an earlier "
                "version's, written just before an interruption recorded them, or put there by hand): no report "
                "counts them and no run replaces them unless the experiment plans them again; delete them if "
                f"they are not needed (the first: images/{self.strays[0]}.png)")


@dataclass(frozen=True)
class Merged:
    """What :meth:`Ledger.merge_from` copied."""

    jobs_added: int = 0            # done rows copied (new keys, or pending/failed here)
    jobs_already_done: int = 0     # done in both runs: this run's row and image kept
    scores_added: int = 0
    bad_images: dict[str, str] = field(default_factory=dict)  # skipped: key -> reason
    repaired: int = 0              # of jobs_added: done here, but their image here was missing, damaged or
    #                                changed, so the source's sound copy (and its scores) replaced it
    other_parents: int = 0         # later stages' images left out: made from another copy of a parent this
    #                                folder holds with that child of its own copy, or made from such an image
    orphans: int = 0               # later stages' images left out: made from a parent whose image the source
    #                                holds damaged and this folder not at all, or made from such an image
    stale_children: int = 0        # this folder's later stages' images made from a copy of their parent it had
    #                                lost (repaired from the source), or made from such an image: out of the plan


_clock = threading.Lock()
_last_now: datetime | None = None


def _now() -> str:
    """UTC time in microseconds, later than every earlier call in this process even where the clock's
    tick is coarser or it steps back: a force or a rescore tells what was made after it began from what
    was made before by these times (`Ledger.stale_keys`, `Ledger.scored_keys`)."""
    global _last_now
    with _clock:
        now = datetime.now(timezone.utc)
        if _last_now is not None and now <= _last_now:
            now = _last_now + timedelta(microseconds=1)
        _last_now = now
    return now.isoformat(timespec="microseconds")


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"not a job key: {key!r}; a key is 64 lowercase hex digits (Job.key)")
    return key


def _json(value: Any, what: str) -> str:
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable without NaN/inf: {exc}") from exc


def _done_from_mapping(row: Mapping[str, Any]) -> Done:
    names = {f.name for f in fields(Done)}
    unknown = set(row) - names
    if unknown:
        raise TypeError(f"mark_done_many: unknown fields {sorted(unknown)}; expected {sorted(names)}")
    return Done(**row)



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
                           "for it to finish (reading works meanwhile: harness report, or "
                           "Ledger.open(run_dir, readonly=True) in Python)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd
