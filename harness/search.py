"""Prompt search: evolve a population of prompts against image metrics.

`harness evolve EXP.toml` reads an experiment and its `[search]` table:

```toml
[search]
population = 6            # candidates per generation (>= 2)
generations = 3           # rounds of select -> mutate -> score after generation 0
metrics = ["clip_score:model=tiny"]   # fitness metrics (default: the experiment's, minus health/watermark)
weights = [1.0]           # one per metric (default 1 each)
selection = "tournament"  # or "top_k"
tournament_size = 3       # with tournament: best of this many drawn at random
top_k = 3                 # with top_k: parents drawn uniformly from the best k
elitism = 1               # best candidates copied unchanged into the next generation
operators = { swap = 1, insert = 1, delete = 1, reorder = 0.5, crossover = 1, reweight = 0.5 }  # relative rates
modifiers = ["styles", "mediums", "artists", "lighting", "quality", "colours"]  # lists insert/swap draw from
budget = 60               # most distinct images the search may use
seed = 0                  # search RNG, separate from image seeds and prompt_seed
```

Generation 0 is the experiment's prompt expanded (or sampled, as `expand`
says); when that gives more prompts than `population` a seeded sample is kept,
when fewer the rest are mutants of them. Every candidate is rendered on the
experiment's `seeds` (the same seeds for all, so candidates are compared on the
same noise), with every checkpoint, mode and negative prompt the experiment
lists. Fitness of an image is `sum(weight * value)` over the metrics, with the
value negated for a metric whose `higher_is_better` is false; a candidate's
fitness is the mean over seeds of its images' fitness (images averaged within a
seed first), with a 95% t-interval over seeds. Images with a NaN metric are left
out; a candidate without any scored image ranks last. A fitness metric that
scores none of generation 0's images (`watermark` on images under 256x256 pixels in area, a
metric of an init image) stops the search there with an error naming it and its
reason; nothing is recorded, so `evolve` run again after the fix starts afresh
on the images already made.

Each later generation keeps the `elitism` best unchanged and fills the rest with
mutants (`mutate.mutate`, operators drawn with the given rates, crossover
partners chosen by the same selection) of selected parents; children equal to a
candidate already in the generation are redrawn (up to 50 draws per slot, after
which the generation stays smaller). The budget counts distinct images: a
generation whose new images would pass it is not started.

The search shares the run folder and ledger of `harness run`: images already
made are never made again. After each generation its candidates, their fitness
and lineage are stored in the ledger meta under `search/<id>/gen/<g>`, where
`<id>` is a key of everything that decides the search (the experiment as read
without `search.generations` and `search.budget`, the wildcard lists, the
checkpoints' fingerprints). All randomness comes from `random.Random` seeded by
(search seed, generation), never wall time or dict order, so a killed `evolve`,
run again, replays the recorded generations and ends with the same final
population as an uninterrupted run; raising `generations` or `budget` continues
a finished search, and lowering either stops the replay where a fresh run would. Fitness is computed from the pixels: an image regenerated in
another batch may differ by one level (see the README), so bitwise-equal
replays of image metrics need `exact = true`.

Outputs (rebuilt at the end of every `evolve`): `tables/search_generations.*`
(the best prompts of each generation with fitness and 95% CI),
`tables/search_trajectory.*` (best and mean fitness per generation, the mean's
95% CI over candidates kept in the range the fitness can take, as each candidate's),
`tables/search_lineage.*` (the winners' ancestry: prompt, operator, arguments,
parents, fitness, image keys) and `plots/search_trajectory.png`.
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

from .core import Variant, canonical_json, content_key
from .experiment import Experiment, ExperimentError, load_experiment
from .grammar import escape_text
from .mutate import Resources, literal, mutate, normalise, prompt_key, split_clauses
from .mutate.resources import missing_lists_note
from .search_config import NOT_IDENTITY, SearchConfig, search_config
from .wildcards import WildcardLibrary


class SearchError(RuntimeError):
    """The search cannot go on; the message says why and what to change."""


# ----------------------------------------------------------------------------- population


@dataclass(frozen=True)
class Candidate:
    """One prompt of a generation: template text, lineage, and (once scored) fitness."""

    prompt: str                           # template text of a concrete prompt
    operator: str                         # "initial" or the operator that made it
    args: Mapping[str, Any]
    parents: tuple[str, ...]
    born: int                             # the generation that made it
    fitness: float | None = None          # None: not scored (or nothing scorable)
    ci: tuple[float | None, float | None] = (None, None)
    n_seeds: int = 0
    image_keys: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return prompt_key(self.prompt)

    @property
    def text(self) -> str:
        """The concrete prompt the images were made from."""
        return literal(self.prompt)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "key": self.key, "operator": self.operator, "args": dict(self.args),
                "parents": list(self.parents), "born": self.born, "fitness": self.fitness, "ci": list(self.ci),
                "n_seeds": self.n_seeds, "image_keys": list(self.image_keys)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Candidate":
        return cls(d["prompt"], d["operator"], dict(d["args"]), tuple(d["parents"]), d["born"], d["fitness"],
                   tuple(d["ci"]), d["n_seeds"], tuple(d["image_keys"]))


@dataclass(frozen=True)
class Generation:
    index: int
    candidates: tuple[Candidate, ...]     # best first
    images_used: int                      # distinct images of the search up to and including this generation

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    def to_dict(self) -> dict:
        return {"index": self.index, "images_used": self.images_used,
                "candidates": [c.to_dict() for c in self.candidates]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Generation":
        return cls(d["index"], tuple(Candidate.from_dict(c) for c in d["candidates"]), d["images_used"])


def _rank_value(c: Candidate) -> float:
    return -math.inf if c.fitness is None else c.fitness


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first; ties keep their order (sorting is stable)."""
    return sorted(candidates, key=lambda c: -_rank_value(c))


def select(ranked: Sequence[Candidate], rng: random.Random, cfg: SearchConfig) -> Candidate:
    """A parent from a best-first list: tournament (best of `tournament_size`) or uniform among the top k."""
    if cfg.selection == "top_k":
        return ranked[rng.randrange(min(cfg.top_k, len(ranked)))]
    drawn = rng.sample(range(len(ranked)), min(cfg.tournament_size, len(ranked)))
    return ranked[min(drawn)]


def generation_rng(cfg: SearchConfig, g: int) -> random.Random:
    return random.Random(content_key(["harness.search", cfg.seed, g]))


def initial_population(variants: Sequence[Variant], cfg: SearchConfig, resources: Resources) -> list[Candidate]:
    """Generation 0: the experiment's prompts (a seeded sample if too many), topped up with their mutants."""
    rng = generation_rng(cfg, 0)
    # one prompt per set of clauses, the first spelling kept: "red car, " (a template's empty option) is "red car"
    firsts = {normalise(escape_text(v.prompt)): escape_text(v.prompt) for v in reversed(variants)}
    base = list(dict.fromkeys(firsts[normalise(escape_text(v.prompt))] for v in variants))
    factors = {escape_text(v.prompt): dict(v.factors) for v in reversed(variants)}
    if len(base) > cfg.population:
        base = [base[i] for i in sorted(rng.sample(range(len(base)), cfg.population))]
    out = [Candidate(p, "initial", {"factors": factors[p]}, (), 0) for p in base]
    return _fill(out, base, rng, cfg, resources, born=0, pick=lambda: rng.choice(base))


def breed(previous: Generation, cfg: SearchConfig, resources: Resources) -> list[Candidate]:
    """The next generation's candidates (unscored): elites, then mutants of selected parents."""
    g = previous.index + 1
    rng = generation_rng(cfg, g)
    ranked = rank(previous.candidates)
    elites = [replace(c, fitness=None, ci=(None, None), n_seeds=0, image_keys=()) for c in ranked[:cfg.elitism]]
    return _fill(elites, None, rng, cfg, resources, born=g, pick=lambda: select(ranked, rng, cfg).prompt,
                 partner=lambda: select(ranked, rng, cfg).prompt)


def _fill(out: list[Candidate], partners: Sequence[str] | None, rng: random.Random, cfg: SearchConfig,
          resources: Resources, *, born: int, pick: Callable[[], str],
          partner: Callable[[], str] | None = None) -> list[Candidate]:
    seen = {normalise(c.prompt) for c in out}  # as clauses: "red car, " (a template's empty option) is "red car"
    crossing = cfg.operators.get("crossover", 0) > 0
    for _ in range(50 * cfg.population):
        if len(out) >= cfg.population:
            break
        parent = pick()
        mates = list(partners or ()) if partner is None else ([partner()] if crossing else [])
        m = mutate(parent, rng, resources, operators=cfg.operators, partners=mates)
        if m is None or normalise(m.prompt) in seen:
            continue
        seen.add(normalise(m.prompt))
        out.append(Candidate(m.prompt, m.operator, dict(m.args), tuple(m.parents), born))
    return out


def candidate_fitness(frame, cfg: SearchConfig, jobs: Sequence,
                      unhealthy: Collection[str] = ()) -> tuple[float | None, tuple, int]:
    """(fitness, 95% CI, seeds) of one candidate from its jobs and a key x metric-id score table; images in
    `unhealthy` (black, uniform, NaN) are left out, as every statistic leaves them out. The interval stays in
    the range the fitness can take (`fitness_bounds`), as the report's do."""
    from .stats import mean_interval

    per_seed: dict[int, list[float]] = {}
    for job in jobs:
        if job.key in unhealthy:
            continue
        total = 0.0
        for f in cfg.weighted:
            v = frame.get((job.key, f.id), math.nan)
            total += f.weight * (v if f.higher_is_better else -v)
        if not math.isnan(total):
            per_seed.setdefault(job.seed, []).append(total)
    values = [sum(v) / len(v) for _, v in sorted(per_seed.items())]
    if not values:
        return None, (None, None), 0
    lo, hi = mean_interval(values, bounds=fitness_bounds(cfg))
    clean = [None if math.isnan(x) else float(x) for x in (lo, hi)]
    return float(sum(values) / len(values)), tuple(clean), len(values)


def unscored_fitness(scores, cfg: SearchConfig, keys: Collection[str]) -> list[tuple[str, list[str]]]:
    """The fitness metrics (spec, reasons) that gave no finite score to any image of `keys`, from a ledger's
    `scores_frame`: the reasons their scores' details give, most common first ("not scored" where a metric
    stored nothing: it could not run). A candidate's fitness needs every fitness metric, so one such metric
    leaves every candidate without a fitness and selection at random."""
    from collections import Counter

    from .evaluate import _reason

    keys = set(keys)
    if not keys:
        return []
    rows = scores[scores["key"].isin(keys)]
    out = []
    for f in cfg.weighted:
        mine = rows[rows["metric"] == f.id]
        if any(math.isfinite(v) for v in mine["value"]):
            continue
        reasons = Counter(_reason(d) for d in mine["detail"])
        if len(keys) > len(mine):
            reasons["not scored (the metric could not run; see its log lines)"] += len(keys) - len(mine)
        out.append((f.spec, [r for r, _ in reasons.most_common()]))
    return out


def fitness_bounds(cfg: SearchConfig) -> tuple[float, float] | None:
    """The range of the weighted sum `candidate_fitness` takes: each term's metric range, negated where lower
    is better, times its weight; None when some metric's range is not known."""
    from .stats.table import metric_bounds

    lo = hi = 0.0
    for f in cfg.weighted:
        bounds = metric_bounds(f.id)
        if bounds is None:
            return None
        ends = [f.weight * (v if f.higher_is_better else -v) for v in bounds]
        lo, hi = lo + min(ends), hi + max(ends)
    return lo, hi


# ----------------------------------------------------------------------------- the loop


@dataclass
class SearchResult:
    run_dir: Path
    search_id: str
    generations: list[Generation]
    stopped: str                      # "generations" or "budget"
    generated: int = 0                # images made by this call
    budget: int | None = None
    outputs: list[Path] = field(default_factory=list)

    @property
    def final(self) -> Generation:
        return self.generations[-1]

    @property
    def best(self) -> Candidate:
        """The best candidate of the whole search (the earliest of equals): with `elitism = 0` a later
        generation may lose the best prompt found, and fitness is comparable across generations (the same
        seeds, metrics and settings)."""
        return best_of(self.generations)[0]


def best_of(generations: Sequence[Generation], n: int = 1) -> list[Candidate]:
    """The `n` best distinct prompts over all `generations`, each as first scored at its best fitness."""
    found: dict[str, Candidate] = {}
    for gen in generations:
        for c in gen.candidates:
            if c.key not in found or _rank_value(c) > _rank_value(found[c.key]):
                found[c.key] = c
    return rank(list(found.values()))[:n]


def search_identity(exp: Experiment, resources: Resources, refs: Mapping, first_images: Iterable[str]) -> str:
    """The search's id: its settings, modifier lists and checkpoints, and the keys of generation 0's images,
    which spell out what the settings leave to files (the prompts and negative prompts the wildcards
    give, the init images' pixels): an edit of any of them is another search, never a resumed one."""
    raw = json.loads(canonical_json(exp.settings))
    if "name" in exp.raw:  # as recorded before the settings left the name out
        raw["name"] = exp.raw["name"]
    for k in NOT_IDENTITY:
        raw.get("search", {}).pop(k, None)
    return content_key({"experiment": raw, "prompt": exp.prompt, "negative_prompt": exp.negative_prompt,
                        "resources": resources.digest(),
                        "checkpoints": {n: r.fingerprint for n, r in refs.items()},
                        "first_images": sorted(first_images)})[:16]


def recorded_generations(ledger, search_id: str) -> dict[int, Generation]:
    out, g = {}, 0
    while (raw := ledger.get_meta(f"search/{search_id}/gen/{g}")) is not None:
        out[g] = Generation.from_dict(json.loads(raw))
        g += 1
    return out


def evolve(path: Path | str, *, out: Path | str | None = None, device: str | None = None,
           log: Callable[[str], None] | None = None,
           on_generation: Callable[[Generation], None] | None = None) -> SearchResult:
    """Run (or resume) the search of an experiment; see the module doc."""
    from .evaluate import evaluate
    from .plan import Plan, jobs_for, resolve_checkpoints, variants_of
    from .run import RunResult, default_run_dir, generate_jobs, prepare_run
    from .search_report import write_search_report

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    exp = load_experiment(path)
    library = WildcardLibrary(exp.wildcard_path())
    cfg = search_config(exp, library)
    resources = Resources.load(library, cfg.modifiers, template=exp.prompt)
    if cfg.modifiers is None and (note := missing_lists_note(resources, library)):
        log(note)
    variants, negatives = variants_of(exp, library)
    refs = resolve_checkpoints(exp)
    for v in variants:  # every prompt must split into clauses that each read alone, before anything is made
        try:
            split_clauses(escape_text(v.prompt))
        except ValueError as e:
            raise ExperimentError(exp.path, [f"key 'prompt': {e}"]) from None
    first = initial_population(variants, cfg, resources)
    sid = search_identity(exp, resources, refs, [j.key for c in first for j in jobs_for(
        exp, refs, [Variant(c.text, {})], negatives, stage="gen0")])
    run_dir = Path(out) if out else default_run_dir(exp)
    ledger, _ = prepare_run(exp, Plan(exp, (), (), refs), run_dir, jobs=[], part=f"search:{sid}",
                            plans_part=False, log=log)
    result = SearchResult(run_dir, sid, [], "generations", budget=cfg.budget)
    used: set[str] = set()  # the images of the generations gone through
    maker = None  # one BatchMaker for every generation: each checkpoint is loaded once

    def jobs_of(candidates: Sequence[Candidate], g: int) -> dict[str, list]:
        """Candidate key -> the jobs of its images in generation `g`."""
        return {c.key: jobs_for(exp, refs, [Variant(c.text, {})], negatives, stage=f"gen{g}",
                                meta={"generation": g, "search": sid,
                                      "lineage": {"key": c.key, "operator": c.operator, "args": dict(c.args),
                                                  "parents": list(c.parents), "born": c.born}})
                for c in candidates}

    def make(wanted: list) -> RunResult:
        """Generate the `wanted` jobs not done yet and score them."""
        nonlocal maker
        done = ledger.done_keys() - ledger.stale_keys()  # stale: found missing or damaged, made again
        pending = [j for j in wanted if j.key not in done]
        run = RunResult(run_dir, len(wanted), len(wanted) - len(pending))
        if pending and maker is None:
            from .worker import BatchMaker, Tuning
            maker = BatchMaker(refs, ledger.images_dir, device=device or exp.device, memory=exp.memory,
                               tuning=Tuning(speedups=exp.speedups, streams=exp.streams), exact=exp.exact,
                               batch_size=exp.batch_size)
        generate_jobs(exp, Plan(exp, tuple(wanted), (), refs), ledger, pending, run, exact=exp.exact,
                      device=device or exp.device, batch_size=None, log=log, progress=False, maker=maker)
        result.generated += run.generated
        evaluate(ledger, specs, log=log)
        return run

    def settle() -> None:
        """The search's plan: the images of the generations this run went through, within today's limits."""
        ledger.set_plan(f"search:{sid}", used)

    def adopt() -> None:
        """This search is the folder's from its generation 0 on: another (an edited [search] table) leaves the
        plan, its images staying in the ledger (undoing the edit replays it without making them)."""
        ledger.set_meta("search/current", sid)
        ledger.drop_plan([p for p in ledger.plan_parts() if p.startswith("search:") and p != f"search:{sid}"])

    try:
        ledger.set_meta(f"search/{sid}/config", canonical_json(exp.raw.get("search", {})))
        recorded = recorded_generations(ledger, sid)
        if recorded:
            log(f"search {sid}: resuming; {len(recorded)} generation(s) recorded in {run_dir}")
        specs = list(dict.fromkeys([f.spec for f in cfg.fitness] + list(exp.metrics)))
        # The plan is replaced by the images of the generations this run affords once it ends (`settle`); until
        # then a generation's images are added before they are made, so an interrupted rerun of a finished
        # search leaves its plan whole.
        for g in range(cfg.generations + 1):
            gen = recorded.get(g)
            if gen is not None:  # replayed, under the same budget as a fresh run
                n_candidates, keys = len(gen.candidates), {k for c in gen.candidates for k in c.image_keys}
            else:
                candidates = first if g == 0 else breed(result.generations[-1], cfg, resources)
                if not candidates:
                    settle()  # what the search found
                    result.outputs = write_search_report(run_dir, result.generations, fitness_bounds(cfg))
                    raise SearchError(f"{exp.path}: generation {g} has no candidates: no operator changed any "
                                      f"parent into a new prompt" + (", and elitism = 0 keeps none" if g else "")
                                      + "; add operators (insert, swap draw from modifier lists), modifiers, or "
                                      "raise elitism")
                if len(candidates) < cfg.population:
                    log(f"generation {g}: only {len(candidates)} distinct candidates of {cfg.population} "
                        "(the operators found no other new prompts; more modifiers or operators widen the search)")
                jobs = jobs_of(candidates, g)
                wanted = [j for js in jobs.values() for j in js]
                n_candidates, keys = len(candidates), {j.key for j in wanted}
            new_used = used | keys
            if cfg.budget is not None and len(new_used) > cfg.budget:
                if g == 0:
                    raise SearchError(f"{exp.path}: search.budget = {cfg.budget} images is less than generation 0 "
                                      f"needs ({len(new_used)}: {n_candidates} candidates x "
                                      f"{len(keys) // max(1, n_candidates)} images); raise the budget or "
                                      "lower population or seeds")
                log(f"generation {g}: would use {len(new_used)} images, over the budget of {cfg.budget}; stopping")
                result.stopped = "budget"
                break
            used = new_used
            if gen is not None:
                ledger.set_plan(f"search:{sid}", keys, add=True)
                # an image of a recorded generation found missing or damaged is made again (its fitness stays
                # the recorded one: the search's course does not change)
                done = ledger.done_keys() - ledger.stale_keys()
                lost = [j for js in jobs_of(gen.candidates, g).values() for j in js if j.key not in done]
                if lost:
                    ledger.add_jobs(lost)
                    run = make(lost)
                    log(f"generation {g}: {run.generated} image(s) of the recorded generation made again")
                if g == 0:
                    adopt()
                result.generations.append(gen)
                continue
            ledger.drop_pending({j.key for j in wanted} | (ledger.planned_keys() or set()))
            ledger.add_jobs(wanted)
            ledger.set_plan(f"search:{sid}", [j.key for j in wanted], add=True)
            run = make(wanted)
            scores = ledger.scores_frame()
            if g == 0 and (unscored := unscored_fitness(scores, cfg, keys)):
                # nothing recorded and the folder's search unchanged: a rerun after the fix starts the search
                # afresh on the images made here
                ledger.drop_plan([f"search:{sid}"])
                raise SearchError(_unscored_message(exp, unscored, len(keys)))
            if g == 0:
                adopt()
            frame = {(k, m): v for k, m, v in zip(scores["key"], scores["metric"], scores["value"])}
            from .tables import image_table

            table = image_table(ledger)
            unhealthy = set(table.loc[~table["healthy"].astype(bool), "key"]) if len(table) else set()
            scored = []
            for c in candidates:
                fit, ci, n = candidate_fitness(frame, cfg, jobs[c.key], unhealthy)
                scored.append(replace(c, fitness=fit, ci=ci, n_seeds=n,
                                      image_keys=tuple(j.key for j in jobs[c.key])))
            gen = Generation(g, tuple(rank(scored)), len(used))
            ledger.set_meta(f"search/{sid}/gen/{g}", canonical_json(gen.to_dict()))
            result.generations.append(gen)
            best = gen.best
            log(f"generation {g}: best {_fmt(best.fitness)} {best.text!r} ({run.generated} images made, "
                f"{len(used)} used{'' if cfg.budget is None else f' of {cfg.budget}'})")
            if on_generation is not None:
                on_generation(gen)
        settle()
        result.outputs = write_search_report(run_dir, result.generations, fitness_bounds(cfg))
    finally:
        if maker is not None:
            maker.close()
        ledger.close()
    return result


def _unscored_message(exp: Experiment, unscored: list[tuple[str, list[str]]], images: int) -> str:
    what = "; ".join(f"{spec!r} ({', '.join(reasons[:3])})" for spec, reasons in unscored)
    it = "it" if len(unscored) == 1 else "them"
    set_them = (f"drop {it} from [search] metrics" if "metrics" in exp.raw.get("search", {})
                else f"set [search] metrics without {it} (they default to the experiment's metrics)")
    return (f"{exp.path}: key 'search.metrics': no finite score from {what} for any of generation 0's "
            f"{images} images, so no candidate has a fitness and selection would be at random; {set_them}, "
            "or change the settings that keep it from scoring (the images made are kept for the next evolve)")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"
