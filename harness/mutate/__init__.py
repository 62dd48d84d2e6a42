"""Mutation operators on prompts: the variation step of prompt search, and ablation.

A prompt here is template text; a concrete prompt is a template without
choices (`literal` turns one back into its text, `escape_text` goes the other
way). Operators read the prompt two ways: as the AST (`grammar.parse`), where
alternations and wildcards stay opaque units, and as a list of clauses.

The package's modules, one job each:

- `clauses`: splitting a prompt into clauses, joining and normalising them
  (the precise rules are in its docstring), `literal`, and `emphasis`;
- `resources`: the modifier lists and template factors operators draw from;
- `lineage`: `Mutant` and `prompt_key`;
- `operators`: the operator functions (`swap`, `insert`, `delete`, `reorder`,
  `crossover`, `reweight`);
- `registry`: `OPERATORS` by name, `get_operator`, `apply`;
- here: `operator_weights`, `mutate`, `mutants` and `leave_one_out`.

`leave_one_out` is the ablation: one prompt per clause, each missing that clause.
A mutant records its lineage: the parent's key (`prompt_key`: `content_key` of
the parent's prompt text), all parents' keys (two for crossover), the operator
and its JSON-able arguments.
"""

from __future__ import annotations

import random
from typing import Mapping, Sequence

from ..grammar import parse
from ..wildcards import WildcardLibrary
from .clauses import emphasis, join_clauses, literal, normalise, split_clauses
from .lineage import Mutant, prompt_key
from .operators import (EMPHASIS_WEIGHTS, WEIGHT_RANGE, WEIGHT_STEPS, crossover, delete, insert, reorder,
                        reweight, swap)
from .registry import OPERATORS, Operator, apply, get_operator
from .resources import DEFAULT_LISTS, LIST_FORMS, MAX_ITEMS, WORD_LISTS, Resources, Vocabulary, as_resources

__all__ = [
    "DEFAULT_LISTS", "EMPHASIS_WEIGHTS", "LIST_FORMS", "MAX_ITEMS", "OPERATORS", "WEIGHT_RANGE", "WEIGHT_STEPS",
    "WORD_LISTS", "Mutant", "Operator", "Resources", "Vocabulary", "apply", "as_resources", "crossover", "delete",
    "emphasis", "get_operator", "insert", "join_clauses", "leave_one_out", "literal", "mutants", "mutate",
    "normalise", "operator_weights", "prompt_key", "reorder", "reweight", "split_clauses", "swap",
]


def operator_weights(operators: Mapping[str, float] | Sequence[str] | None, *,
             partnered: bool = True) -> dict[str, float]:
    """The operators that can be drawn, with their rates: names must be known,
    rates finite numbers >= 0 with at least one > 0. Without partners
    (`partnered=False`) operators that need one are left out; at least one
    operator must remain."""
    if operators is None:
        operators = list(OPERATORS)
    weights = dict(operators) if isinstance(operators, Mapping) else {name: 1.0 for name in operators}
    for name, w in weights.items():
        get_operator(name)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
            raise ValueError(f"operator {name!r} has rate {w!r}; rates must be finite numbers >= 0, "
                             "with at least one > 0")
    positive = {n: float(w) for n, w in weights.items() if w > 0}
    if not positive:
        rates = ", ".join(f"{n}={w:g}" for n, w in weights.items()) or "none given"
        raise ValueError(f"no operator has a rate > 0 ({rates}); rates must be finite numbers >= 0, "
                         "with at least one > 0")
    usable = {n: w for n, w in positive.items() if partnered or not OPERATORS[n].needs_partner}
    if not usable:
        raise ValueError(f"operator(s) {', '.join(positive)} need a partner prompt and no partner was given; "
                         "give a partner or add an operator that needs none")
    return usable


def mutate(prompt: str, rng: random.Random, resources: Resources | WildcardLibrary | None = None, *,
           operators: Mapping[str, float] | Sequence[str] | None = None,
           partners: Sequence[str] = ()) -> Mutant | None:
    """One mutant from an operator drawn with the given weights (all equally by
    default). Operators that do not apply are set aside and another is drawn;
    None when none applies. Crossover draws its partner from `partners`.
    Raises ValueError for unknown operators, bad rates, or only operators that
    need a partner and no partners."""
    resources = as_resources(resources)
    weights = operator_weights(operators, partnered=bool(partners))
    while weights:
        names = list(weights)
        name = rng.choices(names, weights=[weights[n] for n in names])[0]
        partner = rng.choice(list(partners)) if OPERATORS[name].needs_partner else None
        m = apply(name, prompt, rng, resources, partner=partner)
        if m is not None:
            return m
        del weights[name]
    return None


def mutants(prompt: str, n: int, rng: random.Random, resources: Resources | WildcardLibrary | None = None, *,
            operators: Mapping[str, float] | Sequence[str] | None = None,
            partners: Sequence[str] = (), attempts: int = 20) -> list[Mutant]:
    """Up to `n` distinct mutants that differ from the (normalised) prompt;
    fewer only when `attempts * n` draws cannot find more, or when the draws since
    the last new one outnumber 1000 plus twice the draws it took (the operators have
    then most likely given every mutant they can: a large `n` does not draw on for
    hours). Operators, rates and partners (each must parse as a template) are
    checked before any work."""
    if n < 0:
        raise ValueError(f"number of mutants must be >= 0, got {n}")
    resources = as_resources(resources)
    operator_weights(operators, partnered=bool(partners))
    for partner in partners:
        parse(partner, origin="<partner>")
    seen = {normalise(prompt)}
    out: list[Mutant] = []
    last_new = 0  # draws it took to find the latest new mutant
    for draw in range(1, attempts * n + 1):
        if len(out) >= n or draw - last_new > 1000 + 2 * last_new:
            break
        m = mutate(prompt, rng, resources, operators=operators, partners=partners)
        if m is None:
            break
        if m.prompt not in seen:
            seen.add(m.prompt)
            out.append(m)
            last_new = draw
    return out


def leave_one_out(prompt: str) -> list[Mutant]:
    """Exactly N prompts for N clauses: the i-th lacks clause i. Needs N >= 2."""
    texts = split_clauses(prompt)
    if len(texts) < 2:
        raise ValueError(f"prompt {prompt!r} has {len(texts)} clause(s); leave-one-out needs two or more "
                         "(clauses are separated by commas outside emphasis brackets)")
    key = prompt_key(prompt)
    return [Mutant(join_clauses(texts[:i] + texts[i + 1:]), key, "leave_one_out", {"clause": i, "text": texts[i]})
            for i in range(len(texts))]
