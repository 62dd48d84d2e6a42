"""Files and folders that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def build_folder_once(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """`target`, made by `build(tmp)` (a path that does not exist yet, in a temporary sibling folder) and
    renamed into place on first use.

    `target / marker` existing means the folder is complete. Readers never see a
    half-built folder; if another process finished first, its folder is kept and
    ours is discarded. A `target` without `marker` (damaged by hand: no builder leaves
    one) is replaced by the new build. Staging folders a killed build left behind
    more than a day ago are removed. A build that does not write `marker` is an error.
    """
    target = Path(target)
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target.parent, f".{target.name}.building-")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    tmp = staging / target.name
    try:
        build(tmp)
        if not (tmp / marker).is_file():
            raise RuntimeError(f"building {target} wrote no {marker} into {tmp}")
        try:
            if target.exists() and not (target / marker).is_file():
                os.replace(target, staging / "damaged")  # removed with the staging folder
            os.replace(tmp, target)
        except OSError:
            if not (target / marker).is_file():  # not a concurrent builder that finished first: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_abandoned(folder: Path, prefix: str, age_s: float = 86400) -> None:
    import time

    for stale in folder.glob(prefix + "*"):
        try:
            if time.time() - stale.stat().st_mtime > age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """`path`, made by `write(tmp)` into a uniquely named sibling and renamed into place: readers see the
    old file or the new one, concurrent writers do not collide, and a failed write leaves nothing behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        name_the_target(exc, path, tmp)
        raise
    finally:
        discard(tmp)
    return path


def discard(tmp: Path) -> None:
    """Remove a temp file if it is there. A failure to (a read-only or full disk) is not raised: it would
    replace the error that made the write fail, and name the temp file instead of the file asked for."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def name_the_target(exc: OSError, path: Path, tmp: Path) -> None:
    """Make an OSError (disk full, quota, file too large) raised while writing `tmp` name `path`, the file
    the user asked for: a failed write() names no file, and the temp file it might name is gone."""
    if exc.errno is not None and exc.filename in (None, str(tmp)):
        exc.filename = str(path)
