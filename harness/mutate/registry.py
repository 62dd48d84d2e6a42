"""The operators by name (`OPERATORS`), lookup with a helpful error, and
running one operator by name."""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass
from typing import Callable

from ..wildcards import WildcardLibrary
from .lineage import Mutant
from .operators import crossover, delete, insert, reorder, reweight, swap
from .resources import Resources, as_resources


@dataclass(frozen=True)
class Operator:
    name: str
    fn: Callable
    summary: str
    needs_partner: bool = False


OPERATORS: dict[str, Operator] = {op.name: op for op in (
    Operator("swap", swap, "replace a list line or factor option by another of the same list/factor"),
    Operator("insert", insert, "add a modifier-list line as a new clause"),
    Operator("delete", delete, "drop one clause"),
    Operator("reorder", reorder, "move one clause to another position"),
    Operator("crossover", crossover, "first clauses of the prompt + last clauses of a partner", True),
    Operator("reweight", reweight, "A1111 emphasis (clause:w), or adjust an existing weight"),
)}


def get_operator(name: str) -> Operator:
    try:
        return OPERATORS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(OPERATORS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown mutation operator {name!r}{hint}; valid operators: "
                         f"{', '.join(OPERATORS)}") from None


def apply(name: str, prompt: str, rng: random.Random, resources: Resources | WildcardLibrary | None = None, *,
          partner: str | None = None) -> Mutant | None:
    """Run one operator by name; None when it does not apply to this prompt."""
    op = get_operator(name)
    resources = as_resources(resources)
    if op.needs_partner:
        if partner is None:
            raise ValueError(f"operator {name!r} needs a partner prompt")
        return op.fn(prompt, partner, rng, resources)
    return op.fn(prompt, rng, resources)
