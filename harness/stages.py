"""Later stages of an experiment: img2img from an earlier stage's outputs.

A stage lists `from` (an earlier stage, "main" for the base experiment), its
own prompt template, strengths, seeds and steps, and optionally `top_k` +
`metric`: keep only the k best images per variant of the source stage (a
variant = same checkpoint, prompt, negative prompt, mode and strength). In a
stage prompt, `__parent__` stands for the parent image's prompt, so
`__parent__, highly detailed` refines it. Every stage job records its parent's
key (provenance and the ledger's parent_key) and the parent prompt as the
source prompt for directional CLIP similarity.

A stage without its own `negative_prompt` gives each child its parent's concrete negative prompt (the
parent's factors carry its levels). Two parents whose images are identical (img2img strengths that run the
same denoising steps, emphasis that gives the same embeddings) give their children one key: such a child
is planned once, in its first parent's row (the parent whose key sorts first, so shards that split the parents
plan it, once merged, as one run does: :func:`join_parents`), and names the other parents in its meta
(`also_parent_keys`, in key order).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace

from .core import Job, Variant, content_key
from .expand import compile_template
from .experiment import PARENT_TOKEN, Experiment, ExperimentError, Stage
from .experiment_tables import negative_origin
from .grammar import escape_text
from .images import init_hash
from .ledger import Ledger
from .plan import NEGATIVE_PREFIX, jobs_for, pixel_alike, variant_of
from .wildcards import WildcardLibrary


def source_images(stage: Stage, ledger: Ledger) -> list[Job]:
    """The done images of the stage's source as the current plan has it (its plan part), by key: not
    images an earlier version of the experiment made, nor an ablation's or a search's in the same folder."""
    part = "main" if stage.source == "main" else f"stage:{stage.source}"
    planned = ledger.plan_keys(part)
    return sorted((j for j in ledger.done_jobs() if j.key in planned), key=lambda j: j.key)


def select_parents(stage: Stage, parents: list[Job], ledger: Ledger) -> list[Job]:
    if stage.top_k is None:
        return parents
    from .metrics import metric_from_spec
    metric = metric_from_spec(stage.metric)
    scores = ledger.scores_frame()
    scores = scores[scores["metric"] == metric.id].set_index("key")["value"] if len(scores) else {}
    higher = metric.info.higher_is_better
    by_variant: dict[tuple, list[tuple[float, Job]]] = defaultdict(list)
    for job in parents:
        value = scores.get(job.key, float("nan")) if len(scores) else float("nan")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        by_variant[variant_of(job)].append((value, job))
    chosen = []
    for ranked in by_variant.values():
        ranked.sort(key=lambda vj: (-vj[0] if higher else vj[0], vj[1].seed, vj[1].key))
        chosen += [j for _, j in ranked[: stage.top_k]]
    return chosen


def stage_sources(stage: Stage, ledger: Ledger, own: set[str] | None = None) -> list[Job]:
    """The images a run ranks and refines for `stage`: :func:`source_images`; when `own` (a shard's main
    image keys) is given, only those whose chain starts from one of them, so a shard run into a folder that
    another shard ran into refines its own images at every stage, not the other's."""
    sources = source_images(stage, ledger)
    if own is None:
        return sources
    if stage.source == "main":
        return [j for j in sources if j.key in own]
    jobs = {j.key: j for j in ledger.all_jobs()}
    memo: dict[str, bool] = {}

    def ours(key: str) -> bool:
        if key in own:
            return True
        if key not in memo:
            job = jobs.get(key)
            memo[key] = False  # a cycle cannot make it ours
            memo[key] = bool(job and job.meta.get("parent_key") and any(ours(p) for p in parent_keys(job)))
        return memo[key]
    return [j for j in sources if ours(j.key)]


def stage_jobs(exp: Experiment, stage: Stage, ledger: Ledger, refs: dict, library: WildcardLibrary | None = None,
               log=None, own: set[str] | None = None) -> list[Job]:
    """Jobs of one stage, from the done images of its source stage (:func:`stage_sources`); `log` hears of
    source variants whose images have no score to rank them by (top_k picks none of them)."""
    sources = stage_sources(stage, ledger, own)
    parents = select_parents(stage, sources, ledger)
    if log is not None and stage.top_k is not None:
        variants = {variant_of(j) for j in sources}
        unranked = len(variants - {variant_of(j) for j in parents})
        if unranked:
            log(f"stage {stage.name}: {unranked} of the {len(variants)} variants of stage {stage.source} have no "
                f"{stage.metric} score, so top_k refines none of their images; "
                + ("give the stage a metric that scores them (see harness eval)" if unranked == len(variants) else
                   "the metric scores only some images (one that compares with an init image scores no txt2img one)"))

    def init_of(parent: Job) -> tuple[str, str]:
        path = ledger.image_path(parent.key).resolve()  # not relative to the folder `harness run` ran in
        return str(path), init_hash(path, parent.width, parent.height)
    jobs = children(exp, stage, parents, refs, init_of, library)
    if log is not None:
        note = shared_images_note(stage, jobs)
        if note:
            log(note)
    return jobs


def children(exp: Experiment, stage: Stage, parents: list[Job], refs: dict, init_of,
             library: WildcardLibrary | None = None) -> list[Job]:
    """The stage's jobs from `parents`; `init_of(parent)` gives the (path, init hash) each starts from.

    Without its own negative prompt a child is made with its parent's. A child that another parent's child
    already is (their parents' images are one image, so their init hashes are equal) is planned once, as
    :func:`join_parents` joins it: the first parent's by key, with the keys of the others under meta
    `also_parent_keys`."""
    library = library or WildcardLibrary(exp.wildcard_path())
    own_negatives = _own_negatives(exp, stage, library)
    templates: dict[str, list[Variant]] = {}
    jobs: dict[str, list[Job]] = defaultdict(list)  # key -> the child as each of its parents plans it
    for parent in parents:
        if parent.prompt not in templates:
            text = stage.prompt.replace(PARENT_TOKEN, escape_text(parent.prompt))
            tpl = compile_template(text, library=library, origin=f"{exp.path} (stage {stage.name})")
            templates[parent.prompt] = list(tpl.expand())
        prompts = [Variant(v.prompt, {**parent.factors, **v.factors}) for v in templates[parent.prompt]]
        negatives = [Variant(parent.negative_prompt, {})] if own_negatives is None else own_negatives
        for job in jobs_for(
                exp, {parent.checkpoint: refs[parent.checkpoint]}, prompts, negatives,
                seeds=stage.seeds if stage.seeds is not None else [parent.seed], modes=["img2img"],
                strengths=stage.strengths, inits=[init_of(parent)],
                steps=stage.steps, stage=stage.name, randomize=False,
                meta={"parent_key": parent.key, "source_prompt": parent.prompt, "source_stage": stage.source,
                      "template": stage.prompt, "negative_template": stage_negative_template(exp, stage),
                      **({"source_emphasis": parent.emphasis} if parent.emphasis else {})}):
            jobs[job.key].append(job)
    return [versions[0] if len(versions) == 1 else join_parents(versions) for versions in jobs.values()]


def parent_keys(job: Job) -> list[str]:
    """The keys of a stage image's parents: the one of its row (meta `parent_key`), then `also_parent_keys`."""
    return [job.meta["parent_key"], *job.meta.get("also_parent_keys", ())]


def join_parents(versions: list[Job]) -> Job:
    """One child of several parents (whose images are identical), from the versions of it that some of
    them planned: in the row of the parent whose key sorts first, with that parent's factors, source
    prompt and init image, and every other parent's key under meta `also_parent_keys`, sorted. The rule a single run
    (:func:`children`) and a merge of shards that split the parents (`ledger.merge`) both follow, so the
    child reads the same whichever shard made it and in whichever order they are merged."""
    row = min(versions, key=lambda job: job.meta["parent_key"])
    first = row.meta["parent_key"]
    others = sorted({key for job in versions for key in parent_keys(job)} - {first})
    meta = {k: v for k, v in row.meta.items() if k != "also_parent_keys"}
    return replace(row, meta={**meta, "also_parent_keys": others} if others else meta)


def stage_prompts_digest(exp: Experiment, stage: Stage, library: WildcardLibrary | None = None) -> str:
    """A digest of the prompts and negative prompts the stage's templates give any parent, so of the text of
    the wildcard files they read: runs of one version of the experiment whose digests differ made the
    stage's images from other lines (a wildcard file edited between shards)."""
    library = library or WildcardLibrary(exp.wildcard_path())
    text = stage.prompt.replace(PARENT_TOKEN, "x" * len(PARENT_TOKEN))  # the parent's prompt is literal text
    tpl = compile_template(text, library=library, origin=f"{exp.path} (stage {stage.name})")
    negatives = _own_negatives(exp, stage, library)
    return content_key({"prompts": [v.to_dict() for v in tpl.expand()],
                        "negatives": None if negatives is None else [v.to_dict() for v in negatives]})


def _own_negatives(exp: Experiment, stage: Stage, library: WildcardLibrary) -> list[Variant] | None:
    """The variants of the stage's own negative prompt, their factors named `negative:<name>`; None for a
    stage without one (each child takes its parent's)."""
    if stage.negative_prompt is None:
        return None
    if not stage.negative_prompt.strip():
        return [Variant("", {})]
    tpl = compile_template(stage.negative_prompt, library=library, origin=f"{exp.path} ({stage.name})")
    return [Variant(v.prompt, {NEGATIVE_PREFIX + k: val for k, val in v.factors.items()}) for v in tpl.expand()]


def stage_negative_template(exp: Experiment, stage: Stage) -> str:
    """The negative template the stage's images were expanded from: its own, else its source's, up to the
    experiment's (what its PNG provenance records as `negative_template`)."""
    origin = negative_origin(stage, exp.stages)
    return exp.negative_prompt if origin is None else origin.negative_prompt


def shared_images_note(stage: Stage, jobs: list[Job], shown: int = 3) -> str | None:
    """A line on the stage's children that several parents share (their parents' images are identical),
    naming each image and its parents; None when there are none."""
    shared = [j for j in jobs if j.meta.get("also_parent_keys")]
    if not shared:
        return None
    n = sum(len(j.meta["also_parent_keys"]) for j in shared)
    which = "; ".join(
        f"{j.prompt!r} seed {j.seed} strength {j.strength:g} ({j.key[:12]}) in the row of parent "
        f"{j.meta['parent_key'][:12]}, also the child of "
        + ", ".join(k[:12] for k in j.meta["also_parent_keys"]) for j in shared[:shown])
    more = f"; and {len(shared) - shown} more" if len(shared) > shown else ""
    return (f"stage {stage.name}: {n} {'child duplicates' if n == 1 else 'children duplicate'} another's "
            "image, as their parents' images are "
            "identical (e.g. [randomize] strengths that run the same int(strength * steps) denoising steps, or "
            "emphasis that gives the same embeddings): each such image is made once, in its first parent's "
            f"row, its other parents under ledger meta also_parent_keys: {which}{more}")


def stage_job_counts(exp: Experiment, main_jobs: list[Job], refs: dict,
                     library: WildcardLibrary | None = None) -> dict[str, int]:
    """How many jobs each stage will plan once its source is done, every source image made and scored by
    its metric where the metric can score it: the stages planned as `harness run` plans them, with each
    variant's first `top_k` images standing in for its best (which ones does not change the count), and
    `pixel_alike` for each image's pixels: children of parents that will be one image are one job, as
    in the run (parents made alike for reasons it does not know of are counted apart; the run says so).

    Two stages that could make the same image (same parent, prompt, seed, strength and steps) are an
    `ExperimentError`: one image cannot be two stages' own, and each stage's tables need all of theirs."""
    made = planned_stages(exp, main_jobs, refs, library)
    return {stage.name: len(made[stage.name]) for stage in exp.stages}


def planned_stages(exp: Experiment, main_jobs: list[Job], refs: dict,
                   library: WildcardLibrary | None = None) -> dict[str, list[Job]]:
    """Stage name ("main" too) -> the jobs :func:`stage_job_counts` counts, with stand-in parents."""
    made = {"main": list(main_jobs)}
    for stage in exp.stages:
        parents = made.get(stage.source, [])
        if stage.top_k is not None:
            parents = [j for j in parents if _scorable(j, stage.metric)]
            by_variant: dict[tuple, list[Job]] = defaultdict(list)
            for job in sorted(parents, key=lambda j: (j.seed, j.key)):
                by_variant[variant_of(job)].append(job)
            parents = [j for ranked in by_variant.values() for j in ranked[: stage.top_k]]
        made[stage.name] = children(exp, stage, parents, refs, lambda p: (f"<{p.key}>", pixel_alike(p)),
                                    library)
    _check_disjoint(exp, made)
    return made


def shard_groups(exp: Experiment, made: dict[str, list[Job]]) -> dict[tuple, tuple]:
    """Main variant -> what stands for the group a shard keeps whole with it: those whose later-stage images
    one `top_k` ranks as one variant (a stage that gives the children of several main variants one prompt
    and negative prompt, say), so a shard ranks what one run ranks. `made` is :func:`planned_stages`'. A
    group, or a variant alone, whose images a top_k ranks stands for the first (stage, ranked variant) of
    them; a variant no top_k ranks stands for itself."""
    jobs = {j.key: j for stage_jobs_ in made.values() for j in stage_jobs_}
    roots: dict[str, frozenset] = {}

    def root_variants(key: str) -> frozenset:
        if key not in roots:
            job = jobs[key]
            roots[key] = (frozenset([variant_of(job)]) if not job.meta.get("parent_key") else
                          frozenset().union(*(root_variants(p) for p in parent_keys(job) if p in jobs)))
        return roots[key]

    leader = {variant_of(j): variant_of(j) for j in made["main"]}
    ranks: dict[tuple, set] = defaultdict(set)  # a group's leader -> (stage, variant it ranks) of its top_k

    def find(v: tuple) -> tuple:
        while leader[v] != v:
            leader[v] = v = leader[leader[v]]
        return v

    for stage in exp.stages:
        if stage.top_k is None:
            continue
        ranked: dict[tuple, set] = defaultdict(set)
        for job in made.get(stage.source, []):
            if _scorable(job, stage.metric):
                ranked[variant_of(job)] |= root_variants(job.key)
        for ranked_variant, group in ranked.items():
            first, *rest = sorted(group, key=lambda v: content_key(list(v)))
            for v in rest:
                a, b = sorted((find(first), find(v)), key=lambda v: content_key(list(v)))
                leader[b] = a
                ranks[a] |= ranks.pop(b, set())
            ranks[find(first)].add((stage.name, ranked_variant))

    def standing(v: tuple) -> tuple:
        """A group stands for what its top_k ranks, which main variants added later (another negative
        prompt, say) join without changing: so an edit moves no image of the group to another shard, also
        where the variant was alone before."""
        root = find(v)
        return min(ranks[root], key=lambda r: content_key(list(r))) if ranks.get(root) else root

    return {v: standing(v) for v in leader}


def _scorable(job: Job, spec: str) -> bool:
    """Whether metric `spec` can score `job`'s image: one comparing with the init image needs img2img, one
    comparing with the parent image or its prompt (directional CLIP) needs a stage's image, and the watermark
    detector an image of the codec's minimum area."""
    from .metrics import metric_from_spec
    from .metrics.watermark_codec import MIN_AREA

    metric = metric_from_spec(spec)
    needs, staged = metric.INFO.needs, job.meta.get("parent_key") is not None
    return not ("init_image" in needs and job.mode != "img2img"
                or needs & {"parent_image", "source_prompt"} and not staged
                or metric.INFO.name == "watermark" and job.width * job.height < MIN_AREA)


def _check_disjoint(exp: Experiment, made: dict[str, list[Job]]) -> None:
    owner: dict[str, str] = {}
    for stage in exp.stages:
        for job in made[stage.name]:
            first = owner.setdefault(job.key, stage.name)
            if first != stage.name:
                raise ExperimentError(exp.path, [
                    f"stages '{first}' and '{stage.name}' would both make the image of prompt {job.prompt!r}, "
                    f"seed {job.seed}, strength {job.strength} from the same parent image: a stage's images must be its "
                    "own (its tables and later stages count them); make the two differ in strengths, seeds, steps "
                    "or prompt, or let the later one start from the earlier"])
