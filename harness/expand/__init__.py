"""Interpreters of the template AST: resolve + name, count, expand, sample.

`compile_template` resolves wildcards into alternations (one option per file
line), checks for cycles and gives every alternation a factor name. The other
functions read that tree and never parse.

Identity of an expansion is its prompt text: two choice paths that render the
same text are one expansion (the first in expansion order keeps its factors),
because they would make the same image.

The package's modules, one job each:

- `resolving`: wildcards into alternations over their file's lines (`resolve`);
- `names`: factor names (`auto_name`, `assign_names`, `alternations`,
  `factor_names`) and which sit inside which (`nested_pairs`);
- `paths`: choice paths, counted (`raw_count`) and walked in template order
  with text and factors (`walk`, lazy), or with their probability too; the base of counting, expansion
  and sampling;
- `counting`: distinct prompts (`count_info`, `count`);
- `exhaustive`: every distinct prompt in template order (`expand`);
- `spelling`: the first choice path that spells a given prompt (`first_spelling`), found by a
  search, not by walking the paths;
- `sampling`: weighted random draws (`sample`), labelled with their first spelling's factors; a sample
  without replacement larger than the distinct prompts it can draw raises `TooFewPrompts`;
- here: `Template` and `compile_template`.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator

from ..core import Variant
from ..grammar import TOO_DEEP, Alt, GrammarError, Loc, Option, Seq, parse
from ..wildcards import WildcardLibrary, default_search_path
from .counting import _lang, count, count_info
from .exhaustive import expand
from .names import alternations, assign_names, auto_name, factor_names, nested_pairs
from .paths import DEFAULT_JOINER, raw_count
from .resolving import resolve
from .sampling import TooFewPrompts, sample

__all__ = [
    "DEFAULT_JOINER", "Template", "TooFewPrompts", "alternations", "assign_names", "auto_name", "compile_template",
    "count", "count_info", "expand", "factor_names", "nested_pairs", "raw_count", "resolve", "sample",
]


@dataclass(frozen=True)
class Template:
    source: str
    tree: Seq
    origin: str = field(default="<template>", compare=False)  # names the template in errors

    @property
    def factors(self) -> list[str]:
        return factor_names(self.tree)

    @property
    def nested(self) -> list[tuple[str, str]]:
        """(outer, inner) factor pairs: `inner` sits inside an option of `outer`."""
        return nested_pairs(self.tree)

    # Each walks the tree by recursion: a template whose braces and wildcards nest deeper than Python's
    # stack allows is a GrammarError (TOO_DEEP), as compiling it would be, not a RecursionError.
    def count(self) -> int:
        with self._depth():
            return count(self.tree)

    def count_info(self) -> tuple[int, bool]:
        """(distinct prompts, exact?): an upper bound when not exact (see `count_info`)."""
        with self._depth():
            return count_info(self.tree)

    def expand(self, limit: int | None = None) -> Iterator[Variant]:
        with self._depth():
            yield from expand(self.tree, limit=limit)

    def sample(self, n: int, rng: random.Random, *, replace: bool = False) -> list[Variant]:
        with self._depth():
            return sample(self.tree, n, rng, replace=replace)

    @contextmanager
    def _depth(self):
        try:
            yield
        except RecursionError:
            raise GrammarError(TOO_DEEP, Loc(self.origin, self.source, 0)) from None


def compile_template(text: str, *, library: WildcardLibrary | None = None, origin: str = "<template>",
                     allow_empty: bool = False) -> Template:
    """Parse, resolve wildcards and name factors. Without `library`, wildcards are looked up where
    `harness expand` looks for a template given as text: `$HARNESS_GRAMMARS`, then `./grammars`."""
    try:
        tree = parse(text, origin=origin, allow_empty=allow_empty)
        tree = resolve(tree, library if library is not None else WildcardLibrary(default_search_path()))
        for alt in alternations(tree):
            if alt.k is not None:
                _check_choose_k(alt)
        return Template(text, assign_names(tree), origin)
    except RecursionError:  # braces within wildcards within braces…: each is under its limit, together too deep
        raise GrammarError(TOO_DEEP, Loc(origin, text, 0)) from None


def _check_choose_k(alt) -> None:
    """A choose-k can spell its count's different texts, and sampling can with the texts it can draw:
    zero-weight options are never drawn, also where they sit inside an option (`{2$$a|{1::a|0::b}}`
    samples only `a` from both options), so the check reads the tree without them (`_live`)."""
    if alt.k[0] > 0 and _lang(alt).n == 0:
        raise GrammarError(f"choose-k cannot pick {alt.k[0]} different texts from these options", alt.loc)
    live = _live(alt)
    if alt.k[1] == 0 or live is alt:
        return
    if _lang(replace(live, k=(alt.k[1], alt.k[1]))).n == 0:
        raise GrammarError(f"choose-k cannot pick {alt.k[1]} different texts from its options of non-zero weight "
                           f"(zero-weight options, also those inside an option, are never sampled{_drawable(live)}); "
                           "lower the count or give them a weight", alt.loc)


def _live(node):
    """`node` without its zero-weight options, at every depth: what sampling can draw. The node itself
    when it has none (the parser refuses an alternation whose options all weigh 0, so one stays)."""
    if isinstance(node, Seq):
        parts = tuple(_live(p) for p in node.parts)
        return node if all(a is b for a, b in zip(parts, node.parts)) else Seq(parts)
    if isinstance(node, Alt):
        options = tuple(Option(_live(o.body), o.weight) for o in node.options if o.weight != 0)
        same = len(options) == len(node.options) and all(a.body is b.body for a, b in zip(options, node.options))
        return node if same else replace(node, options=options)
    return node


def _drawable(alt) -> str:
    """What each option of `alt` (zero weights dropped) can be drawn as, for the message, when that is short."""
    shown = []
    for o in alt.options:
        strings = _lang(o.body).strings
        if strings is None or len(strings) > 3 or len(alt.options) > 6:
            return ""
        shown.append(" or ".join(repr(s) for s in sorted(strings)))
    return ", so its options can be drawn only as " + ", ".join(shown)
