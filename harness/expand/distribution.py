"""The probability of each distinct prompt a template spells (`text_probabilities`), computed over
distinct texts rather than choice paths: exact for a template of 2^40 paths when it spells few
prompts, so sampling can reach prompts far too unlikely to be drawn by chance."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from functools import lru_cache

from ..grammar import Seq, Text
from .paths import _MATERIALISE, DEFAULT_JOINER, _perm_raw, _weights

_Probs = dict  # text -> probability


@lru_cache(maxsize=4)
def text_probabilities(tree) -> _Probs | None:
    """Each text `tree` spells and the probability that a draw spells it, the sum over its choice paths
    of `paths._iter`'s probabilities; None when some node spells more than 50,000 texts."""
    return _probs(tree)


def _probs(node) -> _Probs | None:
    if isinstance(node, Text):
        return {node.value: 1.0}
    if isinstance(node, Seq):
        acc: _Probs = {"": 1.0}
        for part in node.parts:
            sub = _probs(part)
            if sub is None or len(acc) * len(sub) > _MATERIALISE:
                return None
            nxt: _Probs = defaultdict(float)
            for a, pa in acc.items():
                for b, pb in sub.items():
                    nxt[a + b] += pa * pb
            acc = nxt
        return acc
    options = [_probs(o.body) for o in node.options]
    if any(o is None for o in options):
        return None
    w = _weights(node)
    return _choose_probs(node, options, w) if node.k is not None else _one_of(options, w)


def _one_of(options: list[_Probs], w: list[float]) -> _Probs | None:
    if sum(len(o) for o in options) > _MATERIALISE:
        return None
    total, out = sum(w), defaultdict(float)
    for o, wi in zip(options, w):
        share = wi / total if total else 1 / len(w)
        for text, p in o.items():
            out[text] += p * share
    return out


def _choose_probs(alt, options: list[_Probs], w: list[float]) -> _Probs | None:
    """A choose-k as `paths._choose_k_paths` draws it: k uniformly, then options one by one with their
    weights, then each option's text; selections that repeat a text are drawn again, so the rest are
    scaled to sum to 1."""
    lo, hi = alt.k
    if sum(_perm_raw([len(o) for o in options], k) for k in range(lo, hi + 1)) > _MATERIALISE:
        return None
    joiner = DEFAULT_JOINER if alt.joiner is None else alt.joiner
    out: _Probs = defaultdict(float)
    for k in range(lo, hi + 1):
        for perm in itertools.permutations(range(len(options)), k):
            p_perm, left = 1.0 / (hi - lo + 1), sum(w)
            for i in perm:
                p_perm *= w[i] / left if left else 0.0
                left -= w[i]
            for combo in itertools.product(*(options[i].items() for i in perm)):
                texts = [t for t, _ in combo]
                if len(set(texts)) == k:
                    out[joiner.join(texts)] += math.prod((p for _, p in combo), start=p_perm)
    accepted = sum(out.values())
    return {text: (p / accepted if accepted else 0.0) for text, p in out.items()}
