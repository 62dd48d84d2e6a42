"""Choice paths of a tree: how many there are (`raw_count`, duplicates
included) and each one in template order with its text, factors and
probability (`_iter`), or with its text and factors alone (`walk`, which starts
at once: a choose-k's probabilities need a pass over all its selections first).
Counting, expansion and sampling build on these."""

from __future__ import annotations

import itertools
import math
from typing import Iterator

from ..grammar import Alt, Seq, Text

DEFAULT_JOINER = ","
_MATERIALISE = 50_000       # languages up to this size are handled as explicit sets


def _perm_raw(sizes: list[int], k: int) -> int:
    """Number of ordered k-selections of distinct option positions, times their sizes."""
    if k == 0:
        return 1
    # Sum over ordered selections of product of sizes = k! * e_k(sizes).
    e = [1] + [0] * k
    for s in sizes:
        for j in range(k, 0, -1):
            e[j] += e[j - 1] * s
    return math.factorial(k) * e[k]


def raw_count(node) -> int:
    """Number of choice paths, duplicates included."""
    if isinstance(node, Text):
        return 1
    if isinstance(node, Seq):
        return math.prod(raw_count(p) for p in node.parts)
    sizes = [raw_count(o.body) for o in node.options]
    if node.k is None:
        return sum(sizes)
    return sum(_perm_raw(sizes, k) for k in range(node.k[0], node.k[1] + 1))


_Item = tuple  # (text, factors tuple of (name, value) pairs, probability)


def walk(node) -> Iterator[tuple[str, tuple]]:
    """(text, factors) of each choice path, in `_iter`'s order, lazily: the first comes at once however
    many selections a choose-k has (`_iter` first sums the probabilities of all of them)."""
    for text, factors, _ in _iter(node, rescale=False):
        yield text, factors


def _iter(node, rescale: bool = True) -> Iterator[_Item]:
    """(text, factors, probability) of each choice path in template order. With `rescale=False` the
    probabilities of choose-k selections are left unscaled (see `_iter_alt`): only `walk` asks for that."""
    if isinstance(node, Text):
        yield node.value, (), 1.0
    elif isinstance(node, Seq):
        parts = node.parts
        if not parts:
            yield "", (), 1.0
        elif len(parts) == 1:
            yield from _iter(parts[0], rescale)
        elif all(raw_count(p) <= _MATERIALISE for p in parts):
            lists = [list(_iter(p, rescale)) for p in parts]
            for combo in itertools.product(*lists):
                p = 1.0
                factors: tuple = ()
                for _, f, q in combo:
                    factors += f
                    p *= q
                yield "".join(c[0] for c in combo), factors, p
        else:  # small parts' paths held, large ones walked again for each combination before them
            held = [list(_iter(p, rescale)) if raw_count(p) <= _MATERIALISE else None for p in parts]
            for combo in _product(lambda i: iter(held[i]) if held[i] is not None else _iter(parts[i], rescale),
                                  len(parts)):
                factors, p = (), 1.0
                for _, f, q in combo:
                    factors += f
                    p *= q
                yield "".join(c[0] for c in combo), factors, p
    else:
        yield from _iter_alt(node, rescale)


def _product(walk, n: int) -> Iterator[tuple]:
    """`itertools.product` of the n iterables `walk(i)` makes, in its order, each made again for every
    combination of those before it (none is held whole), by a loop rather than a recursion per part."""
    walks, chosen = [walk(0)], []
    while walks:
        item = next(walks[-1], _DONE)
        if item is _DONE:
            walks.pop()
            if chosen:
                chosen.pop()
        elif len(walks) == n:
            yield (*chosen, item)
        else:
            chosen.append(item)
            walks.append(walk(len(walks)))


_DONE = object()


def _weights(alt: Alt) -> list[float]:
    return [1.0 if o.weight is None else o.weight for o in alt.options]


def _iter_alt(alt: Alt, rescale: bool) -> Iterator[_Item]:
    w = _weights(alt)
    if alt.k is None:
        total = sum(w)
        for o, wi in zip(alt.options, w):
            for text, f, p in _iter(o.body, rescale):
                yield text, ((alt.name, text),) + f, p * (wi / total if total else 1 / len(w))
        return
    # A selection is k, then options drawn one by one with their weights, then each option's text; one
    # that repeats a text is drawn again whole, so the selections that do not are scaled to sum to 1.
    # That sum is a walk over every selection, so it is skipped where the probabilities are not read.
    accepted = sum(p for _, p in _choose_k_paths(alt, w, rescale)) if rescale else 1.0
    joiner = DEFAULT_JOINER if alt.joiner is None else alt.joiner
    for combo, p in _choose_k_paths(alt, w, rescale):
        text = joiner.join(c[0] for c in combo)
        factors: tuple = ((alt.name, text),)
        for _, f, _ in combo:
            factors += f
        yield text, factors, p / accepted if accepted else 0.0


def _choose_k_paths(alt: Alt, w: list[float], rescale: bool) -> Iterator[tuple[tuple, float]]:
    """(options' items, probability before rescaling) of each selection that repeats no text."""
    lo, hi = alt.k
    for k in range(lo, hi + 1):
        for perm in itertools.permutations(range(len(alt.options)), k):
            p_perm, left = 1.0 / (hi - lo + 1), sum(w)
            for i in perm:
                p_perm *= w[i] / left if left else 0.0
                left -= w[i]
            for combo in itertools.product(*(list(_iter(alt.options[i].body, rescale)) for i in perm)):
                if len({c[0] for c in combo}) == len(combo):
                    yield combo, math.prod((q for *_, q in combo), start=p_perm)
