"""The `[search]` table of an experiment, validated into a SearchConfig (see `harness.search`)."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .checks import Checker
from .experiment import Experiment, ExperimentError
from .mutate import OPERATORS
from .wildcards import WildcardLibrary
from .mutate.resources import list_name_problem

SELECTIONS = ("tournament", "top_k")
DEFAULT_OPERATORS = {"swap": 1.0, "insert": 1.0, "delete": 1.0, "reorder": 0.5, "crossover": 1.0, "reweight": 0.5}
NOT_FITNESS = ("health", "watermark")
KEYS = {"population", "generations", "metrics", "weights", "selection", "tournament_size", "top_k", "elitism",
        "operators", "modifiers", "budget", "seed"}
NOT_IDENTITY = ("generations", "budget")  # may change without invalidating recorded generations


@dataclass(frozen=True)
class Fitness:
    spec: str
    id: str
    weight: float
    higher_is_better: bool


@dataclass(frozen=True)
class SearchConfig:
    population: int
    generations: int
    fitness: tuple[Fitness, ...]
    selection: str
    tournament_size: int
    top_k: int
    elitism: int
    operators: Mapping[str, float]
    modifiers: tuple[str, ...] | None
    budget: int | None
    seed: int

    @property
    def weighted(self) -> tuple[Fitness, ...]:
        """The fitness terms that count: a metric of weight 0 is scored (the tables show it) but adds nothing,
        so an image it does not score still has a fitness."""
        return tuple(f for f in self.fitness if f.weight != 0)


def _needs_init(spec: str) -> bool:
    """Whether the metric reads an init or parent image (none for a txt2img image); False if unknown (the
    spec's own check reports that)."""
    from .metrics import metric_from_spec

    try:
        return bool(metric_from_spec(spec).INFO.needs & {"init_image", "parent_image"})
    except (KeyError, ValueError):
        return False


def search_config(exp: Experiment, library: WildcardLibrary | None = None) -> SearchConfig:
    """The experiment's `[search]` table, validated: every problem at once, naming the file."""
    table = exp.raw.get("search")
    if not isinstance(table, dict):
        what = "missing" if table is None else f"got {table!r}, expected a table"
        raise ExperimentError(exp.path, [f"table [search]: {what}; harness evolve needs at least "
                                         "[search] population = N and generations = G (see experiments/search.toml)"])
    c = Checker(exp.path)
    problems = c.problems
    c.unknown(table, KEYS, "search.")

    def bad(key: str, value: Any, expected: str) -> None:
        c.bad("search." + key, value, expected)

    def integer(key: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
        return c.int_(table, key, default, lo=lo, hi=hi, prefix="search.")

    population = integer("population", None, 2)
    if population is None and "population" not in table:
        problems.append("key 'search.population': missing; expected the number of candidates per generation")
    # an unusable population bounds nothing: the keys checked against it get no follow-on errors
    bound = population
    population = population or 2
    generations = integer("generations", None, 0)
    if generations is None and "generations" not in table:
        problems.append("key 'search.generations': missing; expected how many generations follow generation 0")
    generations = generations or 0
    elitism = integer("elitism", 1, 0, None if bound is None else bound - 1)
    selection = c.choice(table, "selection", "tournament", SELECTIONS, prefix="search.")
    for key, used_by in (("tournament_size", "tournament"), ("top_k", "top_k")):
        if key in table and selection != used_by:
            problems.append(f"key 'search.{key}': set but selection is {selection!r}; "
                            f"set selection = {used_by!r} or drop {key}")
    tournament_size = integer("tournament_size", min(3, population), 2, bound)
    top_k = integer("top_k", max(1, population // 2), 1, bound)
    budget = integer("budget", None, 1)
    seed = integer("seed", 0, 0)

    specs = table.get("metrics", [m for m in exp.metrics if m.split(":")[0].split("[")[0] not in NOT_FITNESS
                                  and ("img2img" in exp.modes or not _needs_init(m))])
    if "metrics" not in table and not specs:
        problems.append("key 'search.metrics': missing, and the experiment's metrics hold none to search for "
                        "(health and watermark are not fitness metrics); set [search] metrics = "
                        "[\"clip_score:model=tiny\"] or add one to the experiment's metrics")
    elif not (isinstance(specs, list) and specs and all(isinstance(s, str) and s.strip() for s in specs)):
        bad("metrics", specs, "a non-empty list of metric specs such as \"clip_score:model=tiny\" "
                              "(default: the experiment's metrics other than health and watermark)")
        specs = []
    weights = table.get("weights", [1.0] * len(specs))
    if specs and not (isinstance(weights, list) and len(weights) == len(specs)
            and all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights)
            and any(w != 0 for w in weights)):
        bad("weights", weights, f"a list of {len(specs)} finite number(s), one per metric, not all 0")
        weights = [1.0] * len(specs)
    fitness = []
    for spec, weight in zip(specs, weights):
        metric = c.metric("search.metrics", spec)
        if metric is None:
            continue
        if "img2img" not in exp.modes and _needs_init(spec):
            problems.append(f"key 'search.metrics': {spec!r} compares an image with its init image, but the "
                            "experiment makes txt2img images only, which have none: every candidate would go "
                            "unscored; search on a metric of the image and its prompt (clip_score, an oracle)")
        fitness.append(Fitness(spec, metric.id, float(weight), metric.INFO.higher_is_better))
    c.distinct("search.metrics", [f.id for f in fitness])  # one metric twice would count twice

    operators = table.get("operators", DEFAULT_OPERATORS)
    if isinstance(operators, list) and all(isinstance(n, str) for n in operators):
        c.distinct("search.operators", operators)
        operators = {name: 1.0 for name in operators}
    if not isinstance(operators, dict):
        bad("operators", operators, "a table of operator = rate, or a list of operator names")
        operators = dict(DEFAULT_OPERATORS)
    for name, rate in list(operators.items()):
        if name not in OPERATORS:
            close = difflib.get_close_matches(name, list(OPERATORS), n=1)
            problems.append(f"unknown operator 'search.operators.{name}'" + (
                f"; did you mean '{close[0]}'?" if close else f"; valid operators: {', '.join(OPERATORS)}"))
        elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (math.isfinite(rate) and rate >= 0):
            bad(f"operators.{name}", rate, "a rate >= 0")
    operators = {n: float(r) for n, r in operators.items() if n in OPERATORS and isinstance(r, (int, float))
                 and not isinstance(r, bool) and math.isfinite(r) and r >= 0}
    if not any(r > 0 for r in operators.values()):
        problems.append("key 'search.operators': no operator has a rate > 0; "
                        f"valid operators: {', '.join(OPERATORS)}")

    modifiers = table.get("modifiers")
    if modifiers is not None:
        if not (isinstance(modifiers, list) and all(isinstance(m, str) and m for m in modifiers)):
            bad("modifiers", modifiers, "a list of wildcard list names such as \"mediums\"")
            modifiers = None
        elif not modifiers:  # as --lists "" is refused: the default lists are had by leaving the key out
            bad("modifiers", modifiers, "one or more wildcard list names such as [\"styles\", \"colours\"] (leave "
                "the key out for the default lists)")
            modifiers = None
        else:
            c.distinct("search.modifiers", modifiers)  # as --lists styles,styles is refused
            library = library or WildcardLibrary(exp.wildcard_path())
            for name in dict.fromkeys(modifiers):  # a missing list repeated is reported once
                unreadable = list_name_problem(name)
                if unreadable:
                    problems.append(f"key 'search.modifiers': {name!r} is {unreadable}")
                elif library.get(name) is None:
                    close = difflib.get_close_matches(name, library.names(), n=1, cutoff=0.5)
                    where = library.searched()
                    problems.append(f"key 'search.modifiers': no wildcard list {name!r} ({name}.txt) in {where}"
                                    + (f"; did you mean {close[0]!r}?" if close else ""))
            modifiers = tuple(modifiers)
    if problems:
        raise ExperimentError(exp.path, problems)
    return SearchConfig(population, generations, tuple(fitness), selection, tournament_size, top_k, elitism,
                        operators, modifiers, budget, seed)
