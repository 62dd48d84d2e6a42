"""Counting distinct prompts: the language each node spells (`_Lang`), exact
when it is small or concatenates unambiguously, with enumeration as the
fallback (`count_info`, `count`)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..grammar import Alt, Seq, Text
from .paths import _MATERIALISE, DEFAULT_JOINER, _iter, _perm_raw, raw_count

_ENUMERATE_FALLBACK = 2_000_000


@dataclass
class _Lang:
    n: int                      # distinct strings (exact when `exact`), else an upper bound
    exact: bool
    strings: frozenset | None   # the language itself when small
    pf: bool                    # prefix-free (no string is a proper prefix of another)
    sf: bool                    # suffix-free
    prefix: str                 # a literal prefix every string shares


def _pf(strings) -> bool:
    s = sorted(strings)
    return not any(b.startswith(a) for a, b in zip(s, s[1:]))


def _from_set(strings) -> _Lang:
    strings = frozenset(strings)
    prefix = strings and min(strings, key=len) or ""
    for s in strings:
        while not s.startswith(prefix):
            prefix = prefix[:-1]
    return _Lang(len(strings), True, strings, _pf(strings), _pf(s[::-1] for s in strings), prefix)


def _lang(node) -> _Lang:
    if isinstance(node, Text):
        return _from_set({node.value})
    if isinstance(node, Seq):
        acc = _from_set({""})
        for part in node.parts:
            acc = _concat(acc, _lang(part))
        return acc
    return _alt_lang(node)


def _concat(a: _Lang, b: _Lang) -> _Lang:
    if a.strings is not None and b.strings is not None and a.n * b.n <= _MATERIALISE:
        return _from_set({x + y for x in a.strings for y in b.strings})
    exact = a.exact and b.exact and (a.pf or b.sf)
    prefix = a.prefix + b.prefix if a.strings is not None and len(a.strings) == 1 else a.prefix
    return _Lang(a.n * b.n, exact, None, a.pf and b.pf, a.sf and b.sf, prefix)


def _alt_lang(alt: Alt) -> _Lang:
    opts = [_lang(o.body) for o in alt.options]
    if alt.k is None:
        if all(o.strings is not None for o in opts) and sum(o.n for o in opts) <= _MATERIALISE:
            return _from_set(frozenset().union(*(o.strings for o in opts)))
        return _union(opts)
    joiner = DEFAULT_JOINER if alt.joiner is None else alt.joiner
    lo, hi = alt.k
    raw = sum(_perm_raw([o.n for o in opts], k) for k in range(lo, hi + 1))
    if raw <= _MATERIALISE and all(o.strings is not None for o in opts):
        return _from_set({joiner.join(t) for t in _choose_texts([sorted(o.strings) for o in opts], lo, hi)})
    # Single distinct literal options split back unambiguously when the joiner occurs in a joined
    # text only as the joiner: not inside an option, and not across one with its neighbours' joiners.
    simple = all(o.strings is not None and o.n == 1 for o in opts)
    texts = {next(iter(o.strings)) for o in opts} if simple else set()
    exact = simple and bool(joiner) and all(t and _joiner_only_at_ends(joiner, t) for t in texts)
    n = sum(math.perm(len(texts), k) for k in range(lo, hi + 1)) if exact else raw
    return _Lang(n, exact, None, False, False, "")


def _joiner_only_at_ends(joiner: str, text: str) -> bool:
    """Whether `joiner` occurs in `joiner + text + joiner` only as those two joiners. Every occurrence of
    the joiner in a joined selection other than the joiners themselves lies inside one such window (an
    occurrence is as long as a joiner, so it cannot reach past a whole option and a joiner), so when
    this holds for every option, a joined text splits back into its options one way only
    (` and ` with the options `x and` and `and y` does not: `x and and y` splits two ways)."""
    window = joiner + text + joiner
    hits = [i for i in range(len(window) - len(joiner) + 1) if window.startswith(joiner, i)]
    return hits == [0, len(joiner) + len(text)]


def _union(opts: list[_Lang]) -> _Lang:
    small = frozenset().union(*(o.strings for o in opts if o.strings is not None))
    large = [o for o in opts if o.strings is None]
    disjoint = all(not any(p.prefix.startswith(q.prefix) or q.prefix.startswith(p.prefix)
                           for q in large if q is not p) for p in large)
    disjoint = disjoint and not any(s.startswith(p.prefix) for p in large for s in small)
    n = len(small) + sum(o.n for o in large)
    return _Lang(n, disjoint and all(o.exact for o in large), None, False, False, "")


def _choose_texts(option_texts: list[list[str]], lo: int, hi: int):
    """Ordered selections of k options; one selection never repeats a text."""
    for k in range(lo, hi + 1):
        for perm in itertools.permutations(range(len(option_texts)), k):
            for combo in itertools.product(*(option_texts[i] for i in perm)):
                if len(set(combo)) == len(combo):
                    yield combo


def count_info(tree) -> tuple[int, bool]:
    """(number of distinct prompts, exact?). Exact for every template whose
    language is small or whose parts concatenate unambiguously; otherwise it
    enumerates up to 2 million combinations, and past that returns an upper
    bound flagged inexact."""
    lang = _lang(tree)
    if lang.exact:
        return lang.n, True
    if raw_count(tree) <= _ENUMERATE_FALLBACK:
        return len({text for text, _, _ in _iter(tree)}), True
    return lang.n, False


def count(tree) -> int:
    return count_info(tree)[0]
