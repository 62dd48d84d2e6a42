"""Exhaustive expansion: every distinct prompt of a tree, in template order."""

from __future__ import annotations

from typing import Iterator

from ..core import Variant
from ..grammar import Seq, Text
from .counting import _lang
from .paths import raw_count, walk

_WALK = 100_000      # choice paths walked one by one; past this, distinct texts are merged part by part
_MERGE = 2_000_000   # (prefix, part) text pairs one merge step may look at before it gives up
_FAR_MORE = 16       # paths per prompt above which walking them costs more than merging (a lazy walk starts at once)


def expand(tree, limit: int | None = None) -> Iterator[Variant]:
    """Every distinct prompt, lazily, in template order (the last alternation
    changes fastest, like nested loops). Weights only matter to sampling.
    Duplicates are dropped by prompt text, keeping the first (its factors are those of the first choice
    path that spells it). Where many paths spell few prompts (`{a|}` forty times: 2^40 paths, 41
    prompts) the distinct texts are built part by part instead of walking every path."""
    if limit is not None and limit <= 0:
        return
    lang = _lang(tree)  # not count_info: it may walk 2 million paths before the first prompt
    dedupe = not (lang.exact and lang.n == raw_count(tree))
    paths = raw_count(tree)  # many times more than the prompts (at most lang.n): merge texts, not walk paths
    merged = distinct(tree) if dedupe and paths > _WALK and paths > _FAR_MORE * lang.n else None
    items = iter(merged) if merged is not None else walk(tree)
    seen: set[str] = set()
    produced = 0
    for text, factors in items:
        if dedupe:
            if text in seen:
                continue
            seen.add(text)
        yield Variant(text, dict(factors))
        produced += 1
        if limit is not None and produced >= limit:
            return


def distinct(node) -> list[tuple[str, tuple]] | None:
    """(text, factors of its first choice path) of each text `node` spells, in the order of their first
    paths, or None when a step would look at more than `_MERGE` pairs. A sequence's first path to a text is
    its parts' first paths to the pieces, for the earliest way of cutting the text (paths are ordered as
    tuples, the first part's path first), so merging the parts' distinct texts in order keeps it."""
    if isinstance(node, Text):
        return [(node.value, ())]
    if isinstance(node, Seq):
        acc: list[tuple[str, tuple]] = [("", ())]
        for part in node.parts:
            sub = distinct(part)
            if sub is None or len(acc) * len(sub) > _MERGE:
                return None
            acc = _first((a + b, fa + fb) for a, fa in acc for b, fb in sub)
        return acc
    if node.k is not None:  # a choose-k's selections are walked as they are
        return _first(walk(node)) if raw_count(node) <= _MERGE else None
    out: list[tuple[str, tuple]] = []
    for option in node.options:
        sub = distinct(option.body)
        if sub is None or len(out) + len(sub) > _MERGE:
            return None
        out += [(text, ((node.name, text),) + factors) for text, factors in sub]
    return _first(out)


def _first(items) -> list[tuple[str, tuple]]:
    first: dict[str, tuple] = {}
    for text, factors in items:
        first.setdefault(text, factors)
    return list(first.items())
