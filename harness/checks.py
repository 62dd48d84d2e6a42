"""Checks for values read from TOML tables, collecting every problem instead of stopping at the first.

Each problem names the key (with its table prefix, e.g. `search.population`), the value found and
what was expected; an unknown key gets the closest valid one as a "did you mean". The caller raises
one error listing them all (see `ExperimentError`).
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping


def path_kind(path: Path, refused: Callable[[str], Exception], what: str) -> tuple[bool, bool]:
    """(is a folder, is a file) for a path a user gave; a path the file system refuses (a name longer than it
    allows, a folder that cannot be searched) raises `refused` with a message that starts with `what`."""
    try:
        return path.is_dir(), path.is_file()
    except OSError as exc:
        raise refused(f"{what}: the file system refused {path}: {exc.strerror or exc}; give a path it can "
                      "open") from None


class Checker:
    def __init__(self, path: Path):
        self.path, self.problems = path, []

    def bad(self, key: str, value: Any, expected: str) -> None:
        self.problems.append(f"key '{key}': got {value!r}, expected {expected}")

    @contextlib.contextmanager
    def reading(self, key: str, value: Any, expected: str) -> Iterator[None]:
        """File system calls for a path-valued key: one that fails (a name longer than the file system
        allows, a folder that cannot be listed) becomes a problem of the key, the checks go on."""
        try:
            yield
        except OSError as exc:
            self.refused(key, value, expected, exc)

    def refused(self, key: str, value: Any, expected: str, exc: OSError) -> None:
        code = errno.errorcode.get(exc.errno or 0)
        named = f" ({code})" if code else ""
        self.bad(key, value, f"{expected}; the file system refused it: {exc.strerror or exc}{named}")

    def distinct(self, key: str, values: list, shown: list | None = None) -> None:
        """A list whose entries must differ (a repeated strength or metric would make or score twice);
        `shown`, where given, is the list as the file holds it (`values` less entries named otherwise)."""
        repeated: list = []  # by equality, so entries that cannot be hashed (a list, a table) are named too
        for i, v in enumerate(values):
            if v in values[:i] and v not in repeated:
                repeated.append(v)
        if repeated:
            self.bad(key, values if shown is None else shown,
                     f"each entry once (repeated: {', '.join(map(repr, repeated))})")

    def unknown(self, table: Mapping, allowed: set[str], prefix: str = "") -> None:
        for k in table:
            if k not in allowed:
                close = difflib.get_close_matches(k, sorted(allowed), n=1, cutoff=0.6)
                hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(allowed))}"
                self.problems.append(f"unknown key '{prefix}{k}'{hint}")

    def int_(self, d, key, default=None, lo=None, hi=None, prefix=""):
        v = d.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
            self.bad(prefix + key, v, f"an integer{rng}")
            return default
        return v

    def num(self, d, key, default=None, lo=None, hi=None, prefix=""):
        v = d.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
            self.bad(prefix + key, v, f"a number{rng}")
            return default
        return float(v)

    def scheduler(self, d, default, prefix=""):
        """A scheduler name the runner knows (`schedulers.SCHEDULERS`)."""
        from .schedulers import SCHEDULERS

        v = self.str_(d, "scheduler", default, prefix=prefix, nonempty=True)
        if v is not None and v not in SCHEDULERS:
            close = difflib.get_close_matches(v, list(SCHEDULERS), n=1)
            self.bad(prefix + "scheduler", v, "one of " + ", ".join(SCHEDULERS)
                     + (f" (did you mean {close[0]!r}?)" if close else ""))
            return default
        return v

    def metric(self, key: str, spec: str):
        """The metric a spec names, if it names a registered metric with valid options (checked now,
        not after generating); else None and a problem."""
        from .metrics import metric_from_spec

        try:
            metric = metric_from_spec(spec)
            metric.check()
            return metric
        except (KeyError, ValueError) as exc:
            self.problems.append(f"key '{key}': {spec!r}: {exc.args[0] if exc.args else exc}")
            return None

    def choice(self, d, key, default, choices, prefix=""):
        v = d.get(key, default)
        if v not in choices:
            self.bad(prefix + key, v, "one of " + ", ".join(repr(c) for c in choices))
            return default
        return v

    def str_(self, d, key, default=None, prefix="", nonempty=False):
        v = d.get(key, default)
        if v is None:
            return None
        if not isinstance(v, str) or (nonempty and not v.strip()):
            self.bad(prefix + key, v, "a non-empty string" if nonempty else "a string")
            return default
        return v

    def range_(self, d, key, kind, lo, hi, prefix=""):
        v = d.get(key)
        if v is None:
            return None
        ok = (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          for x in v))
        if ok and kind is int:
            ok = all(isinstance(x, int) for x in v)
        if not ok or not (lo <= v[0] <= v[1] <= hi):
            self.bad(prefix + key, v, f"[low, high] with {lo} <= low <= high <= {hi}"
                     + (" (integers)" if kind is int else ""))
            return None
        return (kind(v[0]), kind(v[1]))
