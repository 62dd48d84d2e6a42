"""Random sampling: prompts drawn with the option weights, with or without
replacement, each carrying the factors exhaustive expansion gives it."""

from __future__ import annotations

import random
from functools import lru_cache

from ..core import Variant
from ..grammar import Seq, Text
from .counting import _ENUMERATE_FALLBACK, count_info, tree_lang
from .distribution import text_probabilities
from .paths import DEFAULT_JOINER, _iter, _weights, raw_count, walk
from .spelling import first_spelling


class TooFewPrompts(ValueError):
    """A sample without replacement asked for more distinct prompts than the template gives (or than its
    weights let be drawn): the caller can suggest a smaller sample or drawing with replacement."""


_WALK_PER_SEARCH = 20  # one search for a prompt's first spelling costs about as much as walking 20 paths
_CHOOSE_TRIES = 1000   # draws of one choose-k selection before its paths are enumerated instead
_CHOOSE_ENUMERATE = 500_000  # the most paths of one choose-k enumerated (and kept) for that


class _Draws:
    """What the draws of one sample keep between draws, by node id (the tree outlives the sample): each
    alternation's weights and whether they are all 1, read once rather than at every draw (a wildcard of
    20,000 lines has that many), and the ids of the choose-ks whose redrawing stalled: they are drawn from
    their paths at once."""

    def __init__(self) -> None:
        self.stalled: set[int] = set()
        self._weights: dict[int, tuple[list[float], bool]] = {}

    def weights(self, alt) -> tuple[list[float], bool]:
        found = self._weights.get(id(alt))
        if found is None:
            w = _weights(alt)
            found = self._weights[id(alt)] = (w, all(x == 1.0 for x in w))
        return found


def _draw(node, rng: random.Random, draws: _Draws) -> tuple[str, tuple]:
    """One path's text and factors."""
    if isinstance(node, Text):
        return node.value, ()
    if isinstance(node, Seq):
        texts, factors = [], ()
        for p in node.parts:
            t, f = _draw(p, rng, draws)
            texts.append(t)
            factors += f
        return "".join(texts), factors
    w, uniform = draws.weights(node)
    if node.k is None:
        i = rng.randrange(len(w)) if uniform else rng.choices(range(len(w)), weights=w)[0]
        text, f = _draw(node.options[i].body, rng, draws)
        return text, ((node.name, text),) + f
    for _ in range(0 if id(node) in draws.stalled else _CHOOSE_TRIES):  # a selection repeating a text is redrawn
        k = rng.randint(*node.k)
        pool = [i for i, wi in enumerate(w) if wi > 0]  # a zero-weight option is never drawn
        if k > len(pool):
            continue
        texts, factors = [], ()
        for _ in range(k):
            j = rng.choices(range(len(pool)), weights=[w[i] for i in pool])[0]
            t, f = _draw(node.options[pool.pop(j)].body, rng, draws)
            texts.append(t)
            factors += f
        if len(set(texts)) == k:
            text = (DEFAULT_JOINER if node.joiner is None else node.joiner).join(texts)
            return text, ((node.name, text),) + factors
    draws.stalled.add(id(node))  # redrawing stalls: draw from the paths, same probabilities
    paths, weights = _choose_k_table(node)
    return rng.choices(paths, weights=weights)[0]


@lru_cache(maxsize=4)
def _choose_k_table(alt) -> tuple[list, list[float]]:
    """(text, factors) of each selection of a choose-k whose options often spell the same text, and its
    probability (`_iter`); from the distinct texts when the paths are too many."""
    if raw_count(alt) <= _CHOOSE_ENUMERATE:
        paths = [(text, f, p) for text, f, p in _iter(alt) if p > 0]
    elif (probs := text_probabilities(alt)) is not None:  # its options' own factors come from `_as_expanded`
        paths = [(text, ((alt.name, text),), p) for text, p in probs.items() if p > 0]
    else:
        raise ValueError(f"alternation '{alt.name}': {_CHOOSE_TRIES} draws in a row repeated a text, and its "
                         f"{raw_count(alt):,} choice paths and the texts they spell are too many to "
                         "enumerate; give its options texts that differ")
    if not paths:
        raise ValueError(f"alternation '{alt.name}' cannot choose different texts from its options of "
                         "non-zero weight")
    return [(text, f) for text, f, _ in paths], [p for *_, p in paths]


def sample(tree, n: int, rng: random.Random, *, replace: bool = False) -> list[Variant]:
    """`n` prompts drawn with the option weights. Without replacement the
    prompts are distinct: each draw is from the weighted distribution restricted
    to prompts not drawn yet (rejection first; exact enumeration if that stalls).
    A prompt that several choices spell the same way carries the factors `expand`
    gives it (its first spelling in template order), whichever was drawn.
    """
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    return _as_expanded(tree, _sample(tree, n, rng, replace))


def _as_expanded(tree, drawn: list[Variant]) -> list[Variant]:
    lang = tree_lang(tree)
    if lang.exact and lang.n == raw_count(tree):
        return drawn  # every prompt has one spelling
    wanted = {v.prompt for v in drawn}
    first: dict[str, tuple | None] = {}
    if raw_count(tree) <= _WALK_PER_SEARCH * len(wanted):  # walking the paths once is cheaper
        for text, factors in walk(tree):
            if text in wanted and text not in first:
                first[text] = factors
                if len(first) == len(wanted):
                    break
    else:
        first = {text: first_spelling(tree, text) for text in wanted}
    return [v if first.get(v.prompt) is None else Variant(v.prompt, dict(first[v.prompt])) for v in drawn]


def _sample(tree, n: int, rng: random.Random, replace: bool) -> list[Variant]:
    draws = _Draws()
    if replace:
        return [Variant(t, dict(f)) for t, f in (_draw(tree, rng, draws) for _ in range(n))]
    total, exact = count_info(tree)
    if total == 0:
        raise ValueError("the template has no expansions (a choose-k cannot pick distinct texts)")
    if exact and n > total:
        raise TooFewPrompts(f"cannot sample {n} distinct prompts: the template has only {total}")
    out: list[Variant] = []
    seen: set[str] = set()
    attempts, budget = 0, 200 * n + 1000
    while len(out) < n and attempts < budget:
        attempts += 1
        text, f = _draw(tree, rng, draws)
        if text not in seen:
            seen.add(text)
            out.append(Variant(text, dict(f)))
    if len(out) < n:
        remaining = _undrawn(tree, seen)
        if remaining is None:
            why = "the weights make the others too unlikely to draw" if exact else (
                f"the template may have fewer: {total:,} is an upper bound on its distinct prompts, or the "
                "weights make the others too unlikely to draw")
            raise TooFewPrompts(f"could only draw {len(out)} distinct prompts of {n} requested in {budget:,} draws "
                             f"({why})")
        while len(out) < n and remaining:
            keys = list(remaining)
            text = rng.choices(keys, weights=[remaining[k][1] for k in keys])[0]
            f, _ = remaining.pop(text)
            out.append(Variant(text, dict(f)))
        if len(out) < n:
            raise TooFewPrompts(f"only {len(out)} distinct {'prompt has' if len(out) == 1 else 'prompts have'} "
                             f"non-zero weight; {n} were requested")
    return out


def _undrawn(tree, seen: set[str]) -> dict[str, tuple[tuple, float]] | None:
    """Each prompt not drawn yet with its factors and probability: from the paths when there are at most
    2 million, else from the distinct texts (factors filled in later by `_as_expanded`); None when
    neither is small enough."""
    remaining: dict[str, tuple[tuple, float]] = {}
    if raw_count(tree) > _ENUMERATE_FALLBACK:
        probs = text_probabilities(tree)
        return None if probs is None else {t: ((), p) for t, p in probs.items() if t not in seen and p > 0}
    for text, f, p in _iter(tree):
        if text not in seen and p > 0:
            prev = remaining.get(text)
            remaining[text] = (prev[0] if prev else f, (prev[1] if prev else 0.0) + p)
    return remaining
