"""Merging run folders: done jobs, their images, scores and plans of one run copied into another."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import Job, canonical_json
from ..provenance import check_png_digest, fsync_dir, write_durably
from .schema import _JOB_COLUMNS, _RUN_COLUMNS, CHANGED, Merged

if TYPE_CHECKING:
    from .store import Ledger


def merge_runs(into: Ledger, other_dir: Path) -> Merged:
    """Copy done jobs, their images, scores and plan from `other_dir` (e.g. a shard) into `into`.

    Keys already done in `into` are kept as they are, with their scores, unless their image there is missing,
    damaged or changed since it was made: then the source's sound copy replaces it, with its scores
    (`Merged.repaired`). A later stage's image made from another copy of a parent this folder holds
    (overlapping shards that each made the parent, a level apart), where this folder has that child of its
    own copy already, is left out, with what was made from it (`Merged.other_parents`): a second child of
    one parent. So is what was made from a parent whose image the source holds damaged and this folder not
    at all (`Merged.orphans`): remade there with its parent and merged again, it comes with the new copy.
    Where a parent this folder had lost is repaired from the source, this folder's own images made from the
    lost copy, and what was made from them, leave the plan (`Merged.stale_children`; their rows and files
    stay): the source's children of the copy it now holds take their place, or a run makes them anew.
    Plan parts are joined, and so are
    the parents of a later stage's image in both (:func:`harness.stages.join_parents`: shards that split
    parents with identical images each made their one child). Images are verified
    (:func:`check_png`, and against the digest `other_dir` recorded when it made them) and copied
    atomically and durably before the rows that mark them done are committed.
    """
    if other_dir.resolve() == into.run_dir.resolve():
        raise ValueError(f"merge_from: {other_dir} is the run folder being merged into")
    with type(into).open(other_dir, readonly=True) as other:
        theirs = other._read(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs "
                             "WHERE status = 'done' ORDER BY rowid")
        their_scores = other._read("SELECT s.key, s.metric, s.value, s.detail, s.scored_at "
                                   "FROM scores s JOIN jobs j ON j.key = s.key "
                                   "WHERE j.status = 'done'")
        their_plan = other._rows_if_table("SELECT part, key FROM plan")
        their_digests = _digests(other)
        with into._mutex:
            mine = into.done_keys()
            unsound = into._image_problems(mine & {row["key"] for row in theirs}, decode=False)[0]
            mine -= unsound.keys()  # the source's copy, if sound, replaces an image this folder has lost
            lineage = into._read("SELECT key, job_json, parent_key FROM jobs WHERE parent_key IS NOT NULL")
            children_here = {r["key"]: r["job_json"] for r in lineage}
            made_here = {_slot(children_here[k]) for k in mine & children_here.keys()}
            copied, digests, bad, joined, elsewhere, orphans = [], [], {}, [], set(), set()
            for row in theirs:  # in the order they were made: a parent before its children
                parent = row["parent_key"]
                if parent and row["key"] not in mine and (parent in bad or parent in orphans):
                    orphans.add(row["key"])  # its parent is not here: remade, it comes with the new copy
                    continue
                if parent and row["key"] not in mine and (parent in elsewhere or (
                        parent in mine and _slot(row["job_json"]) in made_here
                        and not _made_from(into, parent, row["job_json"]))):
                    elsewhere.add(row["key"])
                    continue
                values = _with_parent_here(row, other, into)
                if row["key"] in children_here and row["parent_key"]:
                    job_json, parent = _join_parents(children_here[row["key"]], values)
                    if job_json != children_here[row["key"]]:
                        joined.append((job_json, parent, row["key"]))
                if row["key"] in mine:
                    continue
                src = other.image_path(row["key"])
                reason, digest = check_png_digest(src)
                if reason is None and their_digests.get(row["key"], digest) != digest:
                    reason = CHANGED
                if reason is not None:
                    bad[row["key"]] = reason
                    continue
                _copy_file_durably(src, into.image_path(row["key"]))
                copied.append(values)
                digests.append((row["key"], digest))
            fsync_dir(into.images_dir)
            keep = {values[0] for values in copied}  # key first, as in _JOB_COLUMNS; a key done here keeps
            # its own scores: the source's were computed on its own pixels, which can differ by batching
            stale = _made_from_lost_copies(into, keep & unsound.keys(), lineage, mine)
            with into._write() as conn:
                placeholders = ", ".join("?" * len(_JOB_COLUMNS))
                updates = ", ".join(f"{c} = excluded.{c}" for c in ("status", *_RUN_COLUMNS, "error"))
                conn.executemany(f"INSERT INTO jobs({', '.join(_JOB_COLUMNS)}) VALUES ({placeholders}) "
                                 f"ON CONFLICT(key) DO UPDATE SET {updates}", copied)
                conn.executemany("UPDATE jobs SET job_json = ?, parent_key = ? WHERE key = ?", joined)
                conn.executemany("INSERT OR REPLACE INTO image_files(key, sha256) VALUES (?, ?)", digests)
                repaired = sorted(keep & unsound.keys())
                conn.executemany("DELETE FROM scores WHERE key = ?", [(k,) for k in repaired])  # the lost image's
                before = conn.total_changes
                conn.executemany("INSERT OR IGNORE INTO scores(key, metric, value, detail, scored_at) "
                                 "VALUES (?, ?, ?, ?, ?)",
                                 [tuple(s) for s in their_scores if s["key"] in keep])
                scores_added = conn.total_changes - before
                conn.executemany("DELETE FROM plan WHERE key = ?", [(k,) for k in stale])
                conn.executemany("INSERT OR IGNORE INTO plan(part, key) VALUES (?, ?)",
                                 [tuple(r) for r in their_plan if r[1] not in elsewhere | orphans])
    return Merged(len(copied), sum(row["key"] in mine for row in theirs), scores_added, bad, len(repaired),
                  len(elsewhere), len(orphans), len(stale))


def _made_from_lost_copies(into: "Ledger", repaired: set[str], lineage, mine: set[str]) -> set[str]:
    """This folder's done later-stage images made from the lost copy of a parent now `repaired` from the
    source (their init hash is not the new copy's), and every image made from those."""
    children: dict[str, list] = {}
    for r in lineage:
        children.setdefault(r["parent_key"], []).append(r)
    stale, todo = set(), [(r, True) for p in repaired for r in children.get(p, ())]
    while todo:
        r, direct = todo.pop()
        if r["key"] in stale or r["key"] not in mine or (direct and _made_from(into, r["parent_key"], r["job_json"])):
            continue
        stale.add(r["key"])
        todo += [(c, False) for c in children.get(r["key"], ())]
    return stale


def _slot(job_json: str) -> str:
    """A later stage's job less what its parent's file sets (init hash and path, so the key): two jobs of
    one slot are one child of one parent, made from two copies of it."""
    job = json.loads(job_json)
    for name in ("key", "init_hash", "init_image"):
        job.pop(name, None)
    return canonical_json(job)


def _made_from(into: "Ledger", parent: str, job_json: str) -> bool:
    """Whether the later stage's job `job_json` was made from the pixels of `into`'s image of `parent`
    (its init hash is theirs; a job without one is taken as made from it)."""
    from ..images import current_init_hash

    job = json.loads(job_json)
    wanted = job.get("init_hash")
    if not wanted:
        return True
    try:
        return current_init_hash(into.image_path(parent), job["width"], job["height"]) == wanted
    except OSError:  # unreadable here: the image problems above already had it replaced or named
        return True


def _digests(ledger: "Ledger") -> dict[str, str]:
    """The image digests a ledger recorded (none in a ledger written before digests were kept)."""
    if not ledger._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'image_files'"):
        return {}
    return dict(ledger._read("SELECT key, sha256 FROM image_files"))


def _with_parent_here(row, other: "Ledger", into: "Ledger") -> tuple:
    """A job row as `into` keeps it: a later stage's init image, its parent's image in the source folder,
    becomes the parent's image in `into` (merged with it), so the record outlives the source. The PNG's
    own provenance keeps the path it was made from; the key does not depend on either."""
    values = dict(zip(_JOB_COLUMNS, tuple(row)))
    parent = values["parent_key"]
    if parent:
        job = json.loads(values["job_json"])
        if job.get("init_image") == str(other.image_path(parent).resolve()):
            job["init_image"] = str(into.image_path(parent).resolve())
            values["job_json"] = canonical_json(job)
    return tuple(values[c] for c in _JOB_COLUMNS)


def _join_parents(here: str, values: tuple) -> tuple[str, str]:
    """(job JSON, parent key) of a later stage's image that `into` holds as `here` (its job JSON) and the
    source as `values` (its row, as :func:`_with_parent_here` gives it): one row with the parents of both,
    as one run plans a child of several parents."""
    from ..stages import join_parents

    theirs = dict(zip(_JOB_COLUMNS, values))["job_json"]
    job = join_parents([Job.from_dict(json.loads(here)), Job.from_dict(json.loads(theirs))])
    return canonical_json(job.to_dict()), job.meta["parent_key"]


def _copy_file_durably(src: Path, dst: Path) -> None:
    """Copy through a temp file, fsync, rename: `dst` is absent or complete. The caller fsyncs the folder."""
    with open(src, "rb") as fin:
        write_durably(dst, lambda fout: shutil.copyfileobj(fin, fout))
