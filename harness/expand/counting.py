"""Counting distinct prompts: the language each node spells (`_Lang`), exact
when it is small or concatenates unambiguously, with enumeration as the
fallback (`count_info`, `count`).

A concatenation A+B is unambiguous (each text splits one way, so it has |A|*|B| texts) exactly when no
u != "" is both a dangling suffix of A (x and x+u in A) and a dangling prefix of B (y and u+y in B). The
dangling suffixes and prefixes are found from the explicit sets of small parts and carried through
concatenations while they stay few; an empty set is a prefix-free (or suffix-free) language."""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass

from ..grammar import Alt, Seq, Text
from .paths import _MATERIALISE, DEFAULT_JOINER, _perm_raw, raw_count, walk

_ENUMERATE_FALLBACK = 2_000_000
_DANGLING_MAX = 10_000      # the most dangling suffixes (or prefixes) of one language kept; past it: unknown
_DANGLING_WORK = 1_000_000  # the most (suffix, string) pairs one concatenation's suffixes are derived from
_TREES_REMEMBERED = 8       # whole trees whose language and count `per_tree` keeps

_Dangling = frozenset  # strings u != "" (see `_Lang.q`), or None where they are not known


@dataclass
class _Lang:
    n: int                      # distinct strings (exact when `exact`), else an upper bound
    exact: bool
    strings: frozenset | None   # the language itself when small
    q: _Dangling | None         # dangling suffixes: each u != "" with x and x+u both in it (none: prefix-free)
    r: _Dangling | None         # dangling prefixes: each u != "" with y and u+y both in it (none: suffix-free)
    prefix: str                 # a literal prefix every string shares


def _dangling(strings) -> _Dangling | None:
    """Every u != "" such that some x and x+u are both in `strings`. Sorted, the strings that begin
    with x follow x at once, so a stack of the strings that begin the current one finds them all."""
    ordered = sorted(strings)
    if not any(map(str.startswith, ordered[1:], ordered)):  # prefix-free, as most are: said quickly
        return frozenset()
    out: set[str] = set()
    stack: list[str] = []
    for s in ordered:
        while stack and not s.startswith(stack[-1]):
            stack.pop()
        out.update(s[len(x):] for x in stack)
        if len(out) > _DANGLING_MAX:
            return None
        stack.append(s)
    return frozenset(out)


def _flip(strings):
    """Each string reversed (None stays None): prefixes of a language are suffixes of its reversal."""
    return None if strings is None else frozenset(s[::-1] for s in strings)


def _one(text: str) -> _Lang:
    """The language of one text (what `_from_set({text})` gives, without its passes)."""
    return _Lang(1, True, frozenset((text,)), frozenset(), frozenset(), text)


def _from_set(strings) -> _Lang:
    strings = frozenset(strings)
    prefix = strings and min(strings, key=len) or ""
    for s in strings:
        while not s.startswith(prefix):
            prefix = prefix[:-1]
    if len(strings) <= 1:
        return _Lang(len(strings), True, strings, frozenset(), frozenset(), prefix)
    backwards = _dangling([s[::-1] for s in strings])
    return _Lang(len(strings), True, strings, _dangling(strings), _flip(backwards), prefix)


def _lang(node) -> _Lang:
    if isinstance(node, Text):
        return _one(node.value)
    if isinstance(node, Seq):
        if len(node.parts) == 1 and isinstance(node.parts[0], Text):  # a plain option, as a wildcard's lines are
            return _one(node.parts[0].value)
        return _seq_lang(node.parts)
    return _alt_lang(node)


def _seq_lang(parts) -> _Lang:
    """Parts joined left to right; small parts that follow a large language are first joined with each
    other (as one set), so `{|a}{|a}` after it is the three texts "", "a", "aa", not two ambiguous steps."""
    if len(parts) == 1:
        return _lang(parts[0])
    acc, run = _from_set({""}), None
    for part in parts:
        lang = _lang(part)
        if acc.strings is None and lang.strings is not None:
            joined = lang if run is None else _concat(run, lang)
            if joined.strings is None:  # too many to hold: the run so far goes on, this part starts the next
                acc, joined = _concat(acc, run), lang
            run = joined
            continue
        if run is not None:
            acc, run = _concat(acc, run), None
        acc = _concat(acc, lang)
    return acc if run is None else _concat(acc, run)


def _concat(a: _Lang, b: _Lang) -> _Lang:
    if a.strings is not None and b.strings is not None and a.n * b.n <= _MATERIALISE:
        return _from_set({x + y for x in a.strings for y in b.strings})
    exact = a.exact and b.exact and _unambiguous(a.q, b.r)
    prefix = a.prefix + b.prefix if a.strings is not None and len(a.strings) == 1 else a.prefix
    q = _concat_dangling(a.q, b.q, b.strings)
    r = _flip(_concat_dangling(_flip(b.r), _flip(a.r), _flip(a.strings)))  # the same, read backwards
    return _Lang(a.n * b.n, exact, None, q, r, prefix)


def _unambiguous(q: _Dangling | None, r: _Dangling | None) -> bool:
    """Whether every string of A+B splits into A's part and B's part one way only, from A's dangling
    suffixes `q` and B's dangling prefixes `r`: x+y = x'+y' with x' = x+u (u != "") holds exactly when
    x, x+u are in A and y = u+y', y' in B, so A+B is ambiguous exactly when some u is in both."""
    if q is not None and r is not None:
        return q.isdisjoint(r)
    return q == frozenset() or r == frozenset()  # A prefix-free, or B suffix-free


def _concat_dangling(qa: _Dangling | None, qb: _Dangling | None, b_strings) -> _Dangling | None:
    """The dangling suffixes of A+B from A's (`qa`), B's (`qb`) and B's strings; None when not known.
    Two strings x = a+b and x+u = a'+b' of A+B: either a' = a (u is one of B's), or a' and a differ by one
    of A's, v (`_dangling_through`)."""
    if qa is None or qb is None or (qa and b_strings is None):
        return None
    if not qa:
        return qb
    if len(qa) * len(b_strings) > _DANGLING_WORK:
        return None
    ordered = sorted(b_strings)
    out = set(qb)
    for v in qa:
        for u in _dangling_through(v, b_strings, ordered):
            out.add(u)
            if len(out) > _DANGLING_MAX:
                return None
    return frozenset(out)


def _dangling_through(v: str, b_strings: frozenset, ordered: list[str]):
    """Each u != "" with a+b+u = a'+b' (b, b' of B) where a' = a+v or a = a'+v."""
    for i in range(len(v) + 1):  # a' = a+v, b a prefix of v (v = b+t): b+u = v+b', so u = t+b'
        if v[:i] in b_strings:
            yield from (v[i:] + b2 for b2 in b_strings if v[i:] + b2)
    for b in _beginning_with(ordered, v):  # a' = a+v, b = v+w longer than v: w+u = b'
        w = b[len(v):]
        if w:
            yield from (b2[len(w):] for b2 in _beginning_with(ordered, w) if len(b2) > len(w))
    for b in b_strings:  # a = a'+v: b' = v+b+u
        yield from (b2[len(v + b):] for b2 in _beginning_with(ordered, v + b) if len(b2) > len(v + b))


def _beginning_with(ordered: list[str], head: str) -> list[str]:
    """The strings of sorted `ordered` that begin with `head`."""
    lo = bisect.bisect_left(ordered, head)
    hi = lo
    while hi < len(ordered) and ordered[hi].startswith(head):
        hi += 1
    return ordered[lo:hi]


def _alt_lang(alt: Alt) -> _Lang:
    opts = [_lang(o.body) for o in alt.options]
    if alt.k is None and len(opts) == 1:
        return opts[0]
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
    return _Lang(n, exact, None, None, None, "")


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
    return _Lang(n, disjoint and all(o.exact for o in large), None, None, None, "")


def _choose_texts(option_texts: list[list[str]], lo: int, hi: int):
    """Ordered selections of k options; one selection never repeats a text."""
    for k in range(lo, hi + 1):
        for perm in itertools.permutations(range(len(option_texts)), k):
            for combo in itertools.product(*(option_texts[i] for i in perm)):
                if len(set(combo)) == len(combo):
                    yield combo


def per_tree(fn):
    """`fn(tree)` remembered for the few trees read last, by identity: a template's language and count are
    read by counting, expansion and sampling alike, and over a wildcard of 20,000 lines each costs a pass
    over its options. The tree is kept with its value, so its id cannot name another tree meanwhile (trees
    are immutable)."""
    memo: OrderedDict[int, tuple[object, object]] = OrderedDict()

    @functools.wraps(fn)
    def wrapper(tree):
        hit = memo.get(id(tree))
        if hit is not None and hit[0] is tree:
            memo.move_to_end(id(tree))
            return hit[1]
        value = fn(tree)
        memo[id(tree)] = (tree, value)
        while len(memo) > _TREES_REMEMBERED:
            memo.popitem(last=False)
        return value

    return wrapper


@per_tree
def tree_lang(tree) -> _Lang:
    """The language of a whole template's tree (`_lang`), remembered (`per_tree`)."""
    return _lang(tree)


@per_tree
def count_info(tree) -> tuple[int, bool]:
    """(number of distinct prompts, exact?). Exact for every template whose
    language is small or whose parts concatenate unambiguously; otherwise it
    enumerates up to 2 million combinations, past that merges the distinct texts
    part by part (`exhaustive.distinct`, up to 2 million pairs a step), and else
    returns an upper bound flagged inexact."""
    from .exhaustive import distinct

    lang = tree_lang(tree)
    if lang.exact:
        return lang.n, True
    if raw_count(tree) <= _ENUMERATE_FALLBACK:
        return len({text for text, _ in walk(tree)}), True
    texts = distinct(tree)
    return (len(texts), True) if texts is not None else (lang.n, False)


def count(tree) -> int:
    return count_info(tree)[0]
