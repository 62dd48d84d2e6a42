"""Exhaustive expansion: every distinct prompt of a tree, in template order."""

from __future__ import annotations

from typing import Callable, Iterator

from ..core import Variant
from ..grammar import Alt, Seq, Text
from .counting import _concat, _from_set, _lang, tree_lang
from .paths import raw_count, walk

_WALK = 100_000      # choice paths walked one by one; past this, distinct texts are merged part by part
_MERGE = 2_000_000   # (prefix, part) text pairs one merge step may look at before it gives up
_FAR_MORE = 16       # paths per prompt above which walking them costs more than merging (a lazy walk starts at once)

_Items = Iterator[tuple[str, tuple]]  # (text, factors) pairs
_Plan = Callable[[], _Items]  # starts one pass over a node's items; a later part's is started again per prefix


def expand(tree, limit: int | None = None) -> Iterator[Variant]:
    """Every distinct prompt, lazily, in template order (the last alternation
    changes fastest, like nested loops). Weights only matter to sampling.
    Duplicates are dropped by prompt text, keeping the first (its factors are those of the first choice
    path that spells it). Where many paths spell few prompts (`{a|}` forty times: 2^40 paths, 41
    prompts) the distinct texts are built part by part instead of walking every path (`_plan`)."""
    if limit is not None and limit <= 0:
        return
    lang = tree_lang(tree)  # not count_info: it may walk 2 million paths before the first prompt
    dedupe = not (lang.exact and lang.n == raw_count(tree))
    paths = raw_count(tree)  # many times more than the prompts (at most lang.n): merge texts, not walk paths
    merge = dedupe and paths > _WALK and paths > _FAR_MORE * lang.n
    items = _plan(tree)() if merge else walk(tree)
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
            acc = _join(acc, sub)
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


def _join(acc: list, sub: list) -> list[tuple[str, tuple]]:
    """Two neighbours' distinct texts joined, each text with its first path's factors."""
    return _first((a + b, fa + fb) for a, fa in acc for b, fb in sub)


# ----------------------------------------------------------------------------- lazy merging


def _plan(node) -> _Plan:
    """Every text `node` spells, in the order of their first paths, each with its first path's factors,
    lazily; a text may come again later (the caller drops it). Any run of a sequence's parts may stand for
    its distinct texts (`distinct`) or for all its paths: the earliest path to a text still goes through
    each run's first path to its piece, in the same order. So a sequence's unambiguous runs at either end
    (each path a text of its own: `{w0 |w1 |…}` x 3) are walked, starting at once however many paths
    they have, and only what lies between (`{a|}` x 40: 41 texts) is merged. An alternation that does
    not merge is listed option by option."""
    if isinstance(node, Seq):
        return _plan_seq(node.parts)
    texts = _distinct_if_few(node)
    return _listed(texts) if texts is not None else _unmerged(node)


def _distinct_if_few(node) -> list[tuple[str, tuple]] | None:
    """`distinct(node)`, not tried where counting already knows the texts are too many for it."""
    lang = _lang(node)
    return None if lang.exact and lang.n > _MERGE else distinct(node)


def _unmerged(node) -> _Plan:
    """A part whose distinct texts are too many to merge: its options one by one, or its paths walked."""
    if isinstance(node, Alt) and node.k is None:
        subs = [_plan(o.body) for o in node.options]
        return lambda: ((t, ((node.name, t),) + f) for sub in subs for t, f in sub())
    return lambda: walk(node)


def _plan_seq(parts) -> _Plan:
    """A sequence as chunks whose items are joined in nested-loop order: its unambiguous head and tail
    walked, the parts between merged in runs (`_plan`)."""
    if not parts:
        return _listed([("", ())])
    if len(parts) == 1:
        return _plan(parts[0])
    head = _unambiguous_run(parts)
    tail = len(parts) - _unambiguous_run(parts[head:], backwards=True)
    chunks = [_walker(Seq(parts[:head]))] if head else []
    chunks += _merged_runs(parts[head:tail])
    if tail < len(parts):
        chunks.append(_walker(Seq(parts[tail:])))
    return lambda: _product(chunks)


def _unambiguous_run(parts, backwards: bool = False) -> int:
    """How many of `parts`, from the first (or the last), give every choice path a text of its own, as far
    as `counting` can tell: walking them repeats no text."""
    acc, paths = _from_set({""}), 1
    for i, part in enumerate(reversed(parts) if backwards else parts):
        lang = _lang(part)
        acc = _concat(lang, acc) if backwards else _concat(acc, lang)
        paths *= raw_count(part)
        if not (acc.exact and acc.n == paths):
            return i
    return len(parts)


def _merged_runs(parts) -> list[_Plan]:
    """The parts' distinct texts merged left to right, a new run started where a step would look at more
    than `_MERGE` pairs; a part that does not merge alone is a run of its own (`_unmerged`)."""
    runs: list[_Plan] = []
    acc: list | None = None
    for part in parts:
        sub = _distinct_if_few(part)
        if acc is not None and (sub is None or len(acc) * len(sub) > _MERGE):
            runs.append(_listed(acc))
            acc = None
        if sub is None:
            runs.append(_unmerged(part))
        else:
            acc = sub if acc is None else _join(acc, sub)
    if acc is not None:
        runs.append(_listed(acc))
    return runs


def _listed(items: list) -> _Plan:
    return lambda: iter(items)


def _walker(node) -> _Plan:
    return lambda: walk(node)


def _product(chunks: list[_Plan]) -> _Items:
    """The chunks' items joined in nested-loop order (the last chunk changes fastest), with a stack of
    iterators rather than recursion, so a sequence of many chunks nests no Python frames."""
    stack = [chunks[0]()]
    texts: list[str] = [""]    # texts[d]: what the chunks before d spelled on the current combination
    factors: list[tuple] = [()]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            texts.pop()
            factors.pop()
            continue
        text, f = item
        if len(stack) == len(chunks):
            yield texts[-1] + text, factors[-1] + f
            continue
        texts.append(texts[-1] + text)
        factors.append(factors[-1] + f)
        stack.append(chunks[len(stack)]())
