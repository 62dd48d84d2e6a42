"""Interpreters of the template AST: resolve + name, count, expand, sample.

`compile_template` resolves wildcards into alternations (one option per file
line), checks for cycles and gives every alternation a factor name. The other
functions read that tree and never parse.

Identity of an expansion is its prompt text: two choice paths that render the
same text are one expansion (the first in expansion order keeps its factors),
because they would make the same image.
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
import re
from dataclasses import dataclass, replace
from typing import Iterator

from .core import Variant
from .grammar import Alt, GrammarError, Option, Seq, Text, Wildcard, parse
from .wildcards import WildcardLibrary

DEFAULT_JOINER = ","
_MATERIALISE = 50_000       # languages up to this size are handled as explicit sets
_ENUMERATE_FALLBACK = 2_000_000
_NAME_MAX = 48


@dataclass(frozen=True)
class Template:
    source: str
    tree: Seq

    @property
    def factors(self) -> list[str]:
        return factor_names(self.tree)

    def count(self) -> int:
        return count(self.tree)

    def expand(self, limit: int | None = None) -> Iterator[Variant]:
        return expand(self.tree, limit=limit)

    def sample(self, n: int, rng: random.Random, *, replace: bool = False) -> list[Variant]:
        return sample(self.tree, n, rng, replace=replace)


def compile_template(text: str, *, library: WildcardLibrary | None = None, origin: str = "<template>",
                     allow_empty: bool = False) -> Template:
    tree = parse(text, origin=origin, allow_empty=allow_empty)
    tree = resolve(tree, library or WildcardLibrary())
    for alt in alternations(tree):
        if alt.k is not None and alt.k[0] > 0 and _lang(alt).n == 0:
            raise GrammarError(f"choose-k cannot pick {alt.k[0]} different texts from these options", alt.loc)
    return Template(text, assign_names(tree))


# ----------------------------------------------------------------------------- resolve


def resolve(node, library: WildcardLibrary, stack: tuple[str, ...] = ()):
    """Replace wildcards by alternations over their file's lines."""
    if isinstance(node, Seq):
        return Seq(tuple(resolve(p, library, stack) for p in node.parts))
    if isinstance(node, Text):
        return node
    if isinstance(node, Alt):
        return replace(node, options=tuple(Option(resolve(o.body, library, stack), o.weight)
                                           for o in node.options))
    # Wildcard
    if node.path in stack:
        chain = " -> ".join((*stack[stack.index(node.path):], node.path))
        raise GrammarError(f"wildcard cycle: {chain}", node.loc, length=len(node.path) + 4)
    wf = library.get(node.path)
    if wf is None:
        names = library.names()
        close = difflib.get_close_matches(node.path, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join('__' + c + '__' for c in close)}?" if close else ""
        where = ", ".join(str(p) for p in library.search_path) or "(no wildcard folders found)"
        raise GrammarError(f"unknown wildcard __{node.path}__: no {node.path}.txt in {where}{hint}",
                           node.loc, length=len(node.path) + 4)
    if not wf.lines:
        raise GrammarError(f"wildcard __{node.path}__ has no options: {wf.path} holds only blank or # lines",
                           node.loc, length=len(node.path) + 4)
    options = []
    for lineno, line in wf.lines:
        body = parse(line, origin=str(wf.path), allow_empty=True, first_line=lineno)
        options.append(Option(resolve(body, library, (*stack, node.path))))
    return Alt(tuple(options), name=node.name, wildcard=node.path, loc=node.loc)


# ----------------------------------------------------------------------------- names


def auto_name(alt: Alt) -> str:
    """A readable name from the alternation's own content as written, so it stays the same
    when unrelated parts of the template change: `red|green`, `artists`, `, by __artists__|`.
    Literal text appears unescaped and a wildcard as `__path__`, never its file's lines."""
    if alt.wildcard:
        return alt.wildcard
    name = "|".join(re.sub(r"\s+", " ", _name_text(o.body)).strip() for o in alt.options)
    if len(name) > _NAME_MAX:
        import hashlib
        name = name[: _NAME_MAX - 9] + "~" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def _name_text(node) -> str:
    if isinstance(node, Seq):
        return "".join(_name_text(p) for p in node.parts)
    if isinstance(node, Text):
        return node.value
    if isinstance(node, Wildcard) or node.wildcard:
        return f"__{node.path if isinstance(node, Wildcard) else node.wildcard}__"
    if node.slash:
        return "/".join(_name_text(o.body) for o in node.options)
    return "{" + "|".join(_name_text(o.body) for o in node.options) + "}"


def assign_names(tree: Seq) -> Seq:
    explicit: dict[str, Alt] = {}
    for alt in alternations(tree):
        if alt.name:
            if alt.name in explicit and explicit[alt.name] is not alt:
                raise GrammarError(f"factor name '{alt.name}' is used twice; each named factor must be unique",
                                   alt.loc)
            explicit[alt.name] = alt
    taken = set(explicit)

    def visit(node):
        if isinstance(node, Seq):
            return Seq(tuple(visit(p) for p in node.parts))
        if isinstance(node, Alt):
            name = node.name
            if not name:
                base = name = auto_name(node)
                i = 2
                while name in taken:
                    name, i = f"{base}#{i}", i + 1
                taken.add(name)
            return replace(node, name=name, options=tuple(Option(visit(o.body), o.weight) for o in node.options))
        return node

    return visit(tree)


def alternations(node) -> Iterator[Alt]:
    """Every alternation of a tree, outer before inner, in template order."""
    if isinstance(node, Seq):
        for p in node.parts:
            yield from alternations(p)
    elif isinstance(node, Alt):
        yield node
        for o in node.options:
            yield from alternations(o.body)


def factor_names(tree: Seq) -> list[str]:
    return [a.name for a in alternations(tree) if a.name]


# ----------------------------------------------------------------------------- count


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
    # Single distinct literal options without the joiner split back unambiguously.
    simple = all(o.strings is not None and o.n == 1 for o in opts)
    texts = {next(iter(o.strings)) for o in opts} if simple else set()
    exact = simple and bool(joiner) and all(t and joiner not in t for t in texts)
    n = sum(math.perm(len(texts), k) for k in range(lo, hi + 1)) if exact else raw
    return _Lang(n, exact, None, False, False, "")


def _union(opts: list[_Lang]) -> _Lang:
    small = frozenset().union(*(o.strings for o in opts if o.strings is not None))
    large = [o for o in opts if o.strings is None]
    disjoint = all(not any(p.prefix.startswith(q.prefix) or q.prefix.startswith(p.prefix)
                           for q in large if q is not p) for p in large)
    disjoint = disjoint and not any(s.startswith(p.prefix) for p in large for s in small)
    n = len(small) + sum(o.n for o in large)
    return _Lang(n, disjoint and all(o.exact for o in large), None, False, False, "")


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


# ----------------------------------------------------------------------------- expand

_Item = tuple  # (text, factors tuple of (name, value) pairs, probability)


def _iter(node) -> Iterator[_Item]:
    if isinstance(node, Text):
        yield node.value, (), 1.0
    elif isinstance(node, Seq):
        parts = node.parts
        if not parts:
            yield "", (), 1.0
        elif len(parts) == 1:
            yield from _iter(parts[0])
        elif all(raw_count(p) <= _MATERIALISE for p in parts):
            lists = [list(_iter(p)) for p in parts]
            for combo in itertools.product(*lists):
                p = 1.0
                factors: tuple = ()
                for _, f, q in combo:
                    factors += f
                    p *= q
                yield "".join(c[0] for c in combo), factors, p
        else:
            for t0, f0, p0 in _iter(parts[0]):
                for t1, f1, p1 in _iter(Seq(parts[1:])):
                    yield t0 + t1, f0 + f1, p0 * p1
    else:
        yield from _iter_alt(node)


def _weights(alt: Alt) -> list[float]:
    return [1.0 if o.weight is None else o.weight for o in alt.options]


def _iter_alt(alt: Alt) -> Iterator[_Item]:
    w = _weights(alt)
    if alt.k is None:
        total = sum(w)
        for o, wi in zip(alt.options, w):
            for text, f, p in _iter(o.body):
                yield text, ((alt.name, text),) + f, p * (wi / total if total else 1 / len(w))
        return
    joiner = DEFAULT_JOINER if alt.joiner is None else alt.joiner
    lo, hi = alt.k
    for k in range(lo, hi + 1):
        for perm in itertools.permutations(range(len(alt.options)), k):
            p_perm, left = 1.0 / (hi - lo + 1), sum(w)
            for i in perm:
                p_perm *= w[i] / left if left else 0.0
                left -= w[i]
            for combo in itertools.product(*(list(_iter(alt.options[i].body)) for i in perm)):
                if len({c[0] for c in combo}) < len(combo):
                    continue
                text = joiner.join(c[0] for c in combo)
                factors: tuple = ((alt.name, text),)
                p = p_perm
                for _, f, q in combo:
                    factors += f
                    p *= q
                yield text, factors, p


def expand(tree, limit: int | None = None) -> Iterator[Variant]:
    """Every distinct prompt, lazily, in template order (the last alternation
    changes fastest, like nested loops). Weights only matter to sampling.
    Duplicates are dropped by prompt text, keeping the first."""
    if limit is not None and limit <= 0:
        return
    n, exact = count_info(tree)
    dedupe = not (exact and n == raw_count(tree))
    seen: set[str] = set()
    produced = 0
    for text, factors, _ in _iter(tree):
        if dedupe:
            if text in seen:
                continue
            seen.add(text)
        yield Variant(text, dict(factors))
        produced += 1
        if limit is not None and produced >= limit:
            return


# ----------------------------------------------------------------------------- sample


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
        pool = list(range(len(node.options)))
        texts, factors = [], ()
        while len(texts) < k and pool:
            weights = [w[i] for i in pool]
            j = rng.choices(range(len(pool)), weights=weights)[0] if sum(weights) > 0 else rng.randrange(len(pool))
            t, f = _draw(node.options[pool.pop(j)].body, rng)
            if t not in texts:
                texts.append(t)
                factors += f
        if len(texts) == k:
            break
    else:
        raise ValueError(f"alternation '{node.name}' cannot choose {node.k} distinct texts")
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
    n, exact = count_info(tree)
    if (exact and n == raw_count(tree)) or raw_count(tree) > _ENUMERATE_FALLBACK:
        return drawn  # every prompt has one spelling (or too many to enumerate)
    wanted = {v.prompt for v in drawn}
    first: dict[str, dict] = {}
    for text, factors, _ in _iter(tree):
        if text in wanted and text not in first:
            first[text] = dict(factors)
            if len(first) == len(wanted):
                break
    return [Variant(v.prompt, first.get(v.prompt, v.factors)) for v in drawn]


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
