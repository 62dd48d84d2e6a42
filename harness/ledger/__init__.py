"""The run's ledger: one SQLite file that says which jobs exist, which are done,
how they were made, and what they scored.

A run folder looks like::

    RUN/ledger.sqlite      tables meta, jobs, scores, image_files, plan (WAL mode)
    RUN/ledger.lock        held by the one process that writes (POSIX flock)
    RUN/images/<key>.png   written atomically, provenance inside (provenance.py)
    RUN/tables/            derived files, rebuilt from the ledger

Invariants:

- A job is marked done only after its image is durable: ``write_png_atomic``
  fsyncs the file and its folder before it returns, and ``mark_done`` refuses a
  key whose image file is absent. ``reconcile()`` (run and eval start) puts back to
  pending any done row whose image is missing, damaged or not the file it was
  made as (its SHA-256 is recorded when it is marked done), and deletes temp
  files left by interrupted writes, so the ledger and the folder never disagree.
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

from .schema import (IMAGES_DIR, LEDGER_FILE, LEDGER_SCHEMA_VERSION, LOCK_FILE, STATUSES, TABLES_DIR,
                     Done, LedgerError, LedgerLocked, Merged, Reconciled)
from .store import Ledger

__all__ = ["IMAGES_DIR", "LEDGER_FILE", "LEDGER_SCHEMA_VERSION", "LOCK_FILE", "STATUSES", "TABLES_DIR",
           "Done", "Ledger", "LedgerError", "LedgerLocked", "Merged", "Reconciled"]
