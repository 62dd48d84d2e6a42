"""Random sampling: prompts drawn with the option weights, with or without
replacement, each carrying the factors exhaustive expansion gives it."""

from __future__ import annotations

import random

from ..core import Variant
from ..grammar import Seq, Text
from .counting import _ENUMERATE_FALLBACK, _lang, count_info
from .paths import DEFAULT_JOINER, _iter, _weights, raw_count
from .spelling import first_spelling

_WALK_PER_SEARCH = 20  # one search for a prompt's first spelling costs about as much as walking 20 paths


def _draw(node, rng: random.Random) -> tuple[str, tuple]:
    if isinstance(node, Text):
        return node.value, ()
    if isinstance(node, Seq):
        texts, factors = [], ()
        for p in node.parts:
            t, f = _draw(p, rng)
            texts.append(t)
            factors += f
        return "".join(texts), factors
    w = _weights(node)
    if node.k is None:
        i = rng.choices(range(len(w)), weights=w)[0] if any(x != 1.0 for x in w) else rng.randrange(len(w))
        text, f = _draw(node.options[i].body, rng)
        return text, ((node.name, text),) + f
    for _ in range(100):  # a selection never repeats a text; restart if it cannot finish
        k = rng.randint(*node.k)
        pool = [i for i, wi in enumerate(w) if wi > 0]  # a zero-weight option is never drawn
        texts, factors = [], ()
        while len(texts) < k and pool:
            j = rng.choices(range(len(pool)), weights=[w[i] for i in pool])[0]
            t, f = _draw(node.options[pool.pop(j)].body, rng)
            if t not in texts:
                texts.append(t)
                factors += f
        if len(texts) == k:
            break
    else:
        raise ValueError(f"alternation '{node.name}' cannot choose {k} different texts from its options "
                         "of non-zero weight")
    text = (DEFAULT_JOINER if node.joiner is None else node.joiner).join(texts)
    return text, ((node.name, text),) + factors


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
    lang = _lang(tree)
    if lang.exact and lang.n == raw_count(tree):
        return drawn  # every prompt has one spelling
    wanted = {v.prompt for v in drawn}
    first: dict[str, tuple | None] = {}
    if raw_count(tree) <= _WALK_PER_SEARCH * len(wanted):  # walking the paths once is cheaper
        for text, factors, _ in _iter(tree):
            if text in wanted and text not in first:
                first[text] = factors
                if len(first) == len(wanted):
                    break
    else:
        first = {text: first_spelling(tree, text) for text in wanted}
    return [v if first.get(v.prompt) is None else Variant(v.prompt, dict(first[v.prompt])) for v in drawn]


def _sample(tree, n: int, rng: random.Random, replace: bool) -> list[Variant]:
    if replace:
        return [Variant(t, dict(f)) for t, f in (_draw(tree, rng) for _ in range(n))]
    total, exact = count_info(tree)
    if total == 0:
        raise ValueError("the template has no expansions (a choose-k cannot pick distinct texts)")
    if exact and n > total:
        raise ValueError(f"cannot sample {n} distinct prompts: the template has only {total}; "
                         "sample fewer, or with replacement")
    out: list[Variant] = []
    seen: set[str] = set()
    attempts, budget = 0, 200 * n + 1000
    while len(out) < n and attempts < budget:
        attempts += 1
        text, f = _draw(tree, rng)
        if text not in seen:
            seen.add(text)
            out.append(Variant(text, dict(f)))
    if len(out) < n:
        if raw_count(tree) > _ENUMERATE_FALLBACK:
            raise ValueError(f"could only draw {len(out)} distinct prompts of {n} requested "
                             "(the weights concentrate on few prompts)")
        remaining: dict[str, tuple[tuple, float]] = {}
        for text, f, p in _iter(tree):
            if text not in seen and p > 0:
                prev = remaining.get(text)
                remaining[text] = (prev[0] if prev else f, (prev[1] if prev else 0.0) + p)
        while len(out) < n and remaining:
            keys = list(remaining)
            text = rng.choices(keys, weights=[remaining[k][1] for k in keys])[0]
            f, _ = remaining.pop(text)
            out.append(Variant(text, dict(f)))
        if len(out) < n:
            raise ValueError(f"only {len(out)} distinct prompts have non-zero weight; {n} were requested")
    return out
