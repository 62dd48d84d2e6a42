"""Exhaustive expansion: every distinct prompt of a tree, in template order."""

from __future__ import annotations

from typing import Iterator

from ..core import Variant
from .counting import _lang
from .paths import raw_count, walk


def expand(tree, limit: int | None = None) -> Iterator[Variant]:
    """Every distinct prompt, lazily, in template order (the last alternation
    changes fastest, like nested loops). Weights only matter to sampling.
    Duplicates are dropped by prompt text, keeping the first."""
    if limit is not None and limit <= 0:
        return
    lang = _lang(tree)  # not count_info: it may walk 2 million paths before the first prompt
    dedupe = not (lang.exact and lang.n == raw_count(tree))
    seen: set[str] = set()
    produced = 0
    for text, factors in walk(tree):
        if dedupe:
            if text in seen:
                continue
            seen.add(text)
        yield Variant(text, dict(factors))
        produced += 1
        if limit is not None and produced >= limit:
            return
