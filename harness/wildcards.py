"""Wildcard files: `__name__` -> the lines of `name.txt` on a search path.

A wildcard file holds one option per line; blank lines and lines starting
with `#` are skipped; each line is itself a template (it may use braces,
slashes and other wildcards). `__artists/painters__` reads
`artists/painters.txt`. The first folder on the search path that has the file
wins: the experiment's (or template file's) folder, then any `--grammars`
folders, then `$HARNESS_GRAMMARS` (os.pathsep-separated), then `./grammars`.
"""

from __future__ import annotations

import errno
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .grammar import GrammarError, Loc


@dataclass(frozen=True)
class WildcardFile:
    name: str
    path: Path
    text: str
    lines: tuple[tuple[int, str, str], ...]  # (1-based line number, option text, the line as in the file)


class WildcardLibrary:
    def __init__(self, search_path: Iterable[Path | str] = ()):
        seen: list[Path] = []
        given = [Path(d) for d in search_path]
        for d in given:
            p = d.resolve()
            if p.is_dir() and p not in seen:
                seen.append(p)
        self.search_path = tuple(seen)
        # entries of $HARNESS_GRAMMARS on this path that are no folder: named when a wildcard is unknown
        self.left_out = tuple(d for d in dict.fromkeys(_env_entries()) if d in given and not _is_dir(d))
        self._cache: dict[str, WildcardFile | None] = {}

    def get(self, name: str) -> WildcardFile | None:
        if name not in self._cache:
            self._cache[name] = self._load(name)
        return self._cache[name]

    def _load(self, name: str) -> WildcardFile | None:
        if ".." in name.split("/"):
            return None
        spellings = dict.fromkeys((name, unicodedata.normalize("NFD", name)))  # a file name saved decomposed
        for d in self.search_path:
            path = next((p for p in (d / f"{n}.txt" for n in spellings) if _is_file(p)), None)
            if path is not None:
                text = read_text(path)
                lines = tuple((i, ln.strip(), ln) for i, ln in enumerate(text.split("\n"), start=1)
                              if ln.strip() and not ln.strip().startswith("#"))
                return WildcardFile(name, path, text, lines)
        return None

    def searched(self) -> str:
        """The folders searched, for an error message; with none, where they can come from. An entry of
        $HARNESS_GRAMMARS that is no folder (a wildcard file named instead of its folder, a typo) is named."""
        where = (", ".join(str(p) for p in self.search_path)
                 or "(no wildcard folder: none of the template's folder, --grammars DIR, $HARNESS_GRAMMARS or "
                    "./grammars exists)")
        for entry in self.left_out:
            what = "a file, not a folder" if entry.exists() else "no such folder"
            where += f"; $HARNESS_GRAMMARS names {entry}: {what}, left out"
        return where

    def folders_named(self, name: str) -> list[Path]:
        """Folders where the wildcard `name`'s file would be (`NAME.txt` made as a folder), for an error."""
        return [d / f"{name}.txt" for d in self.search_path if ".." not in name.split("/")
                and _is_dir(d / f"{name}.txt")]

    def names(self) -> list[str]:
        found: set[str] = set()
        for d in self.search_path:
            for path in d.rglob("*.txt"):
                if not path.is_file():
                    continue
                found.add(unicodedata.normalize("NFC", path.relative_to(d).with_suffix("").as_posix()))
        return sorted(found)


def _is_file(path: Path) -> bool:
    """Whether a wildcard file is there; a name longer than the file system allows names no file (the
    template then gets the usual "unknown wildcard" error, at its line and column)."""
    return _is(path, Path.is_file)


def _is_dir(path: Path) -> bool:
    return _is(path, Path.is_dir)


def _is(path: Path, test) -> bool:
    try:
        return test(path)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return False
        raise


def read_text(path: Path) -> str:
    """A template or wildcard file as text: UTF-8, a leading byte-order mark dropped, Windows ("\\r\\n")
    and old Mac ("\\r") line ends read as "\\n" (a "\\r" left in would end up in every prompt). A byte
    that is not UTF-8 is a GrammarError at its line and column."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        bad = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)  # the decoder counts after the mark
        good = data[:bad].decode("utf-8-sig", errors="replace")
        raise GrammarError(f"not UTF-8 text (byte 0x{data[bad]:02x}); save the file as UTF-8",
                           Loc(str(path), good, len(good))) from None


def default_search_path(template_dir: Path | None = None, extra: Iterable[Path | str] = ()) -> list[Path]:
    dirs: list[Path] = []
    if template_dir is not None:
        dirs.append(Path(template_dir))
    dirs.extend(Path(d) for d in extra)
    dirs.extend(_env_entries())
    dirs.append(Path.cwd() / "grammars")
    return dirs


def _env_entries() -> list[Path]:
    return [Path(d) for d in os.environ.get("HARNESS_GRAMMARS", "").split(os.pathsep) if d]
