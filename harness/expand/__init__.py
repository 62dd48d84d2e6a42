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
- `sampling`: weighted random draws (`sample`), labelled with their first spelling's factors;
- here: `Template` and `compile_template`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Iterator

from ..core import Variant
from ..grammar import GrammarError, Seq, parse
from ..wildcards import WildcardLibrary, default_search_path
from .counting import _lang, count, count_info
from .exhaustive import expand
from .names import alternations, assign_names, auto_name, factor_names, nested_pairs
from .paths import DEFAULT_JOINER, raw_count
from .resolving import resolve
from .sampling import sample

__all__ = [
    "DEFAULT_JOINER", "Template", "alternations", "assign_names", "auto_name", "compile_template", "count",
    "count_info", "expand", "factor_names", "nested_pairs", "raw_count", "resolve", "sample",
]


@dataclass(frozen=True)
class Template:
    source: str
    tree: Seq

    @property
    def factors(self) -> list[str]:
        return factor_names(self.tree)

    @property
    def nested(self) -> list[tuple[str, str]]:
        """(outer, inner) factor pairs: `inner` sits inside an option of `outer`."""
        return nested_pairs(self.tree)

    def count(self) -> int:
        return count(self.tree)

    def count_info(self) -> tuple[int, bool]:
        """(distinct prompts, exact?): an upper bound when not exact (see `count_info`)."""
        return count_info(self.tree)

    def expand(self, limit: int | None = None) -> Iterator[Variant]:
        return expand(self.tree, limit=limit)

    def sample(self, n: int, rng: random.Random, *, replace: bool = False) -> list[Variant]:
        return sample(self.tree, n, rng, replace=replace)


def compile_template(text: str, *, library: WildcardLibrary | None = None, origin: str = "<template>",
                     allow_empty: bool = False) -> Template:
    """Parse, resolve wildcards and name factors. Without `library`, wildcards are looked up where
    `harness expand` looks for a template given as text: `$HARNESS_GRAMMARS`, then `./grammars`."""
    tree = parse(text, origin=origin, allow_empty=allow_empty)
    tree = resolve(tree, library if library is not None else WildcardLibrary(default_search_path()))
    for alt in alternations(tree):
        if alt.k is not None:
            _check_choose_k(alt)
    return Template(text, assign_names(tree))


def _check_choose_k(alt) -> None:
    """A choose-k can spell its count's different texts, and sampling can with its non-zero options."""
    if alt.k[0] > 0 and _lang(alt).n == 0:
        raise GrammarError(f"choose-k cannot pick {alt.k[0]} different texts from these options", alt.loc)
    if alt.k[1] == 0 or all(o.weight != 0 for o in alt.options):
        return
    live = replace(alt, options=tuple(o for o in alt.options if o.weight != 0), k=(alt.k[1], alt.k[1]))
    if _lang(live).n == 0:
        raise GrammarError(f"choose-k cannot pick {alt.k[1]} different texts from its options of non-zero weight "
                           "(zero-weight options are never sampled)", alt.loc)
