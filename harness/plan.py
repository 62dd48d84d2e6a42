"""Experiment -> Jobs: the full cross product, content-keyed, grouped for batching.

Nothing here touches torch. Checkpoints are resolved (for their fingerprints)
through a function passed in, so plans can be built and tested without
loading a model.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .core import NEGATIVE_PREFIX, Job, Variant, content_key
from .expand import compile_template
from .experiment import Experiment, ExperimentError, problems_text
from .experiment_tables import draw_signature, toml_key
from .wildcards import WildcardLibrary

# Rough seconds per denoising step per 512x512 image, by (family, device); `measured_scale` corrects them
# from a run's own timings once some images are done. Below 128x128 a step costs about what it costs at
# 128x128 (per-call overheads, not pixels, set the time), hence the floor on the area.
_AREA_FLOOR = 1 / 16
_STEP_SECONDS = {("tiny", "cpu"): 0.4, ("toy", "cpu"): 0.6, ("sd1", "cpu"): 6.0, ("sd2", "cpu"): 7.0,
                 ("tiny", "cuda"): 0.004, ("toy", "cuda"): 0.006, ("sd1", "cuda"): 0.05, ("sd2", "cuda"): 0.06}


@dataclass(frozen=True)
class Plan:
    experiment: Experiment
    jobs: tuple[Job, ...]
    factors: tuple[str, ...]
    checkpoints: dict = field(default_factory=dict)  # name -> CheckpointRef
    nesting: tuple[tuple[str, str], ...] = ()  # (outer, inner): factor `inner` sits in an option of `outer`
    merged: tuple[tuple[Job, Job], ...] = ()  # (left out, kept): jobs that would have made the kept one's image

    @property
    def keys(self) -> list[str]:
        return [j.key for j in self.jobs]

    def groups(self) -> dict[tuple, list[Job]]:
        """Jobs that can share one pipeline call, in checkpoint order."""
        return group_jobs(self.jobs)

    def estimate_seconds(self, device: str = "cpu", seconds_per_step: float | None = None,
                         jobs: Iterable[Job] | None = None) -> float:
        """Generation seconds of `jobs` (default: all) on `device` by the table of step costs."""
        return sum(self.job_seconds(job, device, seconds_per_step) for job in (self.jobs if jobs is None else jobs))

    def job_seconds(self, job: Job, device: str = "cpu", seconds_per_step: float | None = None) -> float:
        family = getattr(self.checkpoints.get(job.checkpoint), "family", "sd1")
        per = seconds_per_step or _STEP_SECONDS.get((family, device), _STEP_SECONDS.get(("sd1", device), 1.0))
        steps = job.steps if job.mode == "txt2img" else max(1, int(job.strength * job.steps))
        return per * steps * max(_AREA_FLOOR, (job.width * job.height) / (512 * 512))


def measured_scale(plan: Plan, done: Iterable[tuple[Job, float, str]], device: str,
                   checkpoint: str | None = None) -> tuple[float, int] | None:
    """(measured / table seconds, images) over a run's finished images made on `device` (a device type:
    "cpu", "cuda"), of `checkpoint` alone when given, from (job, seconds per image, device) records; None
    below 4 images, too few to tell.
    A record's seconds are its batch's wall time per image in one generation stream; the experiment's
    CPU streams run side by side, so the run's own time per image is that over the stream count."""
    measured = table = 0.0
    n = 0
    for job, seconds, made_on in done:
        if (seconds and seconds > 0 and str(made_on).split(":")[0] == device
                and checkpoint in (None, job.checkpoint)):
            measured += seconds
            table += plan.job_seconds(job, device)
            n += 1
    if n < 4 or table <= 0:
        return None
    streams = plan.experiment.streams
    if device != "cpu":
        streams = 1
    elif streams == "auto":  # as `worker.resolve_streams` decides, without importing torch here
        streams = 2 if (os.cpu_count() or 1) >= 2 else 1
    return measured / streams / table, n


def measured_seconds(plan: Plan, jobs: Iterable[Job], done: list[tuple[Job, float, str]],
                     device: str) -> tuple[float, int, dict[str, float]] | None:
    """Seconds `jobs` take on `device` by the table scaled to a run's finished images (`measured_scale`):
    each checkpoint by its own images where it has 4, else by all of them (a fine-tune and its base can run
    at other speeds than the table says). (seconds, images timed, {checkpoint: its own scale}); None when
    fewer than 4 images were timed on the device."""
    overall = measured_scale(plan, done, device)
    if overall is None:
        return None
    own = {ck: scale[0] for ck in plan.checkpoints if (scale := measured_scale(plan, done, device, ck))}
    seconds = sum(plan.job_seconds(job, device) * own.get(job.checkpoint, overall[0]) for job in jobs)
    return seconds, overall[1], own


def scales_said(plan: Plan, own: dict[str, float], overall: float) -> str:
    """How `measured_seconds` scaled the table, as `plan` prints it: `0.21x`, or with several checkpoints
    each one's own scale and the run's for those without 4 timed images (`toy 0.21x, others 0.5x`)."""
    if not own or len(plan.checkpoints) < 2:
        return f"{overall:.2g}x"
    rest = [f"others {overall:.2g}x"] if len(own) < len(plan.checkpoints) else []
    return ", ".join([*(f"{ck} {r:.2g}x" for ck, r in own.items()), *rest])


SIZE_RANGE = (0.5, 1.5)  # a side outside these multiples of a model's training size draws it out of its depth
UNTRAINED = ("tiny",)  # families of random weights: no size is theirs


def size_notes(plan: Plan, jobs: Iterable[Job]) -> list[str]:
    """A note per checkpoint whose images are far from the size it was trained at (a side under half of it
    or over 1.5 times it): such images often come out flat, cropped or with the subject repeated, which a
    study would read as the prompt's doing."""
    sizes: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for j in jobs:
        sizes[j.checkpoint].add((j.width, j.height))
    notes = []
    for name, ref in plan.checkpoints.items():
        native = getattr(ref, "native_size", 0)
        far = sorted((w, h) for w, h in sizes.get(name, ())
                     if native and not all(SIZE_RANGE[0] <= side / native <= SIZE_RANGE[1] for side in (w, h)))
        if far and ref.family not in UNTRAINED:
            shown = ", ".join(f"{w}x{h}" for w, h in far)
            table = toml_key(name)
            notes.append(f"checkpoint {name} makes {shown} images, far from the {native} px it was trained at "
                         f"(a side under {SIZE_RANGE[0]:g}x or over {SIZE_RANGE[1]:g}x of it): such images often "
                         f"come out flat, cropped or with the subject repeated; set width and height (or "
                         f"[checkpoint.{table}] width/height) near {native}")
    return notes


def merged_note(plan: Plan, jobs: Iterable[Job] | None = None) -> str | None:
    """What the plan left out because another job makes its image (:func:`jobs_for`), with an example; with
    `jobs` (a shard's), only the left-out twins of those jobs."""
    keys = None if jobs is None else {j.key for j in jobs}
    merged = [(out, kept) for out, kept in plan.merged if keys is None or kept.key in keys]
    if not merged:
        return None
    out, kept = merged[0]
    why = (f"strength {out.strength:g} runs int({out.strength:g} * {out.steps}) = {int(out.strength * out.steps)} "
           f"denoising steps, as {kept.strength:g} does" if out.strength != kept.strength else
           f"guidance {out.guidance:g} runs no classifier-free guidance, so the negative prompt "
           f"{out.negative_prompt!r} is never read" if out.guidance <= 1 and kept.guidance <= 1 else
           "its settings change no pixel from the kept job's")
    return (f"{len(merged)} planned images would repeat another's pixels and are made once, under the first "
            f"one's settings (e.g. seed {out.seed}: {why}); comparisons leave those seeds unpaired for that level")


def plan_notes(plan: Plan, jobs: list[Job]) -> list[str]:
    """What `plan` and `run` say about a valid plan that is rarely what was meant: dangling commas in its
    prompts, images that would repeat another's pixels, image sizes far from a checkpoint's own, and what a
    checkpoint was built on the assumption of (an SD2 single file taken as the 768 px v-prediction model)."""
    from .expand.lint import dangling_commas

    notes = [dangling_commas(j.prompt for j in jobs), merged_note(plan, jobs)]
    assumed = [n for ref in plan.checkpoints.values() for n in getattr(ref, "notes", ())]  # how a file was built
    return [n for n in notes if n] + size_notes(plan, jobs) + assumed


def group_jobs(jobs: Iterable[Job]) -> dict[tuple, list[Job]]:
    groups: dict[tuple, list[Job]] = defaultdict(list)
    for job in jobs:
        groups[job.group].append(job)
    order = {}
    for job in jobs:
        order.setdefault(job.checkpoint, len(order))
    return dict(sorted(groups.items(), key=lambda kv: (order[kv[0][1]], str(kv[0]))))


# expand = "all" beyond this many prompts is a mistake to catch before minutes of planning (10^5 prompts
# take seconds to expand and plan; a template of twelve ten-way alternations has 10^12).
MAX_ALL_PROMPTS = 100_000


def variants_of(exp: Experiment, library: WildcardLibrary | None = None) -> tuple[list[Variant], list[Variant]]:
    """The prompt and negative-prompt variants of an experiment."""
    library = library or WildcardLibrary(exp.wildcard_path())
    tpl = compile_template(exp.prompt, library=library, origin=exp.prompt_origin)
    if exp.expand == "sample":
        try:
            prompts = tpl.sample(exp.sample, random.Random(exp.prompt_seed))
        except ValueError as e:
            raise ExperimentError(exp.path, [f"key 'sample': {exp.sample}: {e} (lower sample, or set "
                                             "expand = \"all\")"]) from None
    else:
        _check_size(exp, tpl, "prompt", "set expand = \"sample\" and sample = N (with prompt_seed) to study a "
                                        "random subset, or narrow the template")
        prompts = list(tpl.expand())
    negatives = [Variant("", {})]
    if exp.negative_prompt.strip():
        neg = compile_template(exp.negative_prompt, library=library, origin=f"{exp.path} (negative_prompt)")
        _check_size(exp, neg, "negative_prompt", "every negative prompt is planned with every prompt (it is "
                                                 "never sampled): narrow the template")
        negatives = [Variant(v.prompt, {NEGATIVE_PREFIX + k: val for k, val in v.factors.items()})
                     for v in neg.expand()]
    if len(prompts) * len(negatives) > MAX_ALL_PROMPTS:
        raise ExperimentError(exp.path, [
            f"keys 'prompt' and 'negative_prompt': {len(prompts):,} prompts times {len(negatives):,} negative "
            f"prompts make {len(prompts) * len(negatives):,} pairs, each planned; at most {MAX_ALL_PROMPTS:,}: "
            "narrow either template, or sample fewer prompts"])
    return prompts, negatives


def _check_size(exp: Experiment, tpl, key: str, advice: str) -> None:
    """An ExperimentError when the template of `key` expands to more than MAX_ALL_PROMPTS texts."""
    n, exact = tpl.count_info()
    if n > MAX_ALL_PROMPTS:
        size = f"{n:,} distinct prompts" if exact else (
            f"up to {n:,} distinct prompts (an upper bound: its alternatives spell overlapping texts, in "
            "too many combinations to count exactly)")
        raise ExperimentError(exp.path, [
            f"key '{key}': the template expands to {size}; expand = \"all\" plans at most "
            f"{MAX_ALL_PROMPTS:,}: {advice} (`harness expand --count` counts it)"])


def random_draws(exp: Experiment, seed: int, mode: str) -> list[dict]:
    """`[randomize] draws` parameter sets for one image seed: each draw has its own stream, keyed by the
    randomize seed, the image seed and the draw index only, so every prompt, negative prompt and
    checkpoint at that seed and draw gets the same settings (a comparison of any of them pairs images
    made alike) and adding a prompt shifts nothing. A draw that would make an earlier draw's image
    (:func:`draw_signature`: txt2img has no strength, strengths count by the denoising steps they run,
    guidance at or below 1 runs none) is drawn again from its stream, so `draws` sets make `draws` images;
    the experiment checks that the ranges hold that many."""
    r = exp.randomize
    fixed = sorted({exp.setting(ck, "steps") for ck in exp.checkpoints})
    used = r.steps or r.guidance or (r.strength and mode == "img2img")  # else every draw is the same one
    seen: set[tuple] = set()
    out = []
    for draw in range(r.draws):
        rng = random.Random(content_key(["randomize", r.seed, seed, draw]))
        for _ in range(_REDRAWS):
            params = _draw(r, rng)
            # alike at any checkpoint's steps is alike: that checkpoint would make one image of the two
            settings = {draw_signature(params, mode, (n,)) for n in fixed} or {draw_signature(params, mode, ())}
            if not used or not settings & seen:
                break
        seen |= settings
        out.append(params)
    return out


_REDRAWS = 10_000


def _draw(r, rng: random.Random) -> dict:
    out = {}
    if r.strength:
        out["strength"] = round(rng.uniform(*r.strength), 2)
    if r.steps:
        out["steps"] = rng.randint(*r.steps)
    if r.guidance:
        out["guidance"] = round(rng.uniform(*r.guidance), 1)
    return out


def resolve_checkpoints(exp: Experiment, resolve: Callable | None = None) -> dict:
    """name -> CheckpointRef for the experiment's checkpoints; the same weights twice is an error."""
    if resolve is None:
        from pathlib import Path

        from .checkpoints import default_single_file_config, resolve as resolve_ref

        def resolve(name, base_dir=None, config=None):
            ref = resolve_ref(name, base_dir=base_dir, config=config)
            if ref.kind == "file" and ref.config is None:  # a .ckpt's family is known only now it is read
                default_single_file_config(name, Path(ref.source), ref.family)
            return ref
    refs, problems = {}, []
    one = isinstance(exp.raw.get("checkpoints"), str)
    fingerprints: dict[str, str] = {}
    for i, name in enumerate(exp.checkpoints):  # every unusable checkpoint is named, not only the first
        key = "checkpoints" if one else f"checkpoints[{i}]"
        try:
            config = exp.overrides.get(name, {}).get("config")
            refs[name] = ref = (resolve(name, base_dir=exp.base_dir, config=config) if config
                                else resolve(name, base_dir=exp.base_dir))
        except ValueError as exc:
            problems.append(f"key '{key}': {exc}")
            continue
        if ref.fingerprint in fingerprints:
            problems.append(f"key '{key}': {name!r} holds the same weights as {fingerprints[ref.fingerprint]!r} "
                            f"(fingerprint {ref.fingerprint}); list it once")
        fingerprints.setdefault(ref.fingerprint, name)
    if problems:
        from .checkpoints import CheckpointError
        raise CheckpointError(problems_text(exp.path, problems))
    return refs


def make_plan(exp: Experiment, *, resolve: Callable | None = None, library: WildcardLibrary | None = None,
              init_hash: Callable | None = None) -> Plan:
    """Build every job. `resolve(name, base_dir=...)` returns a CheckpointRef
    (default: the checkpoint registry); `init_hash(path, w, h)` hashes an init
    image as it will be fed to the pipeline (default: images.init_hash)."""
    library = library or WildcardLibrary(exp.wildcard_path())
    prompts, negatives = variants_of(exp, library)
    refs = resolve_checkpoints(exp, resolve)
    merged: list[tuple[Job, Job]] = []
    jobs = jobs_for(exp, refs, prompts, negatives, init_hash=init_hash, merged=merged)
    factors = list(dict.fromkeys(f for j in jobs for f in j.factors))
    return Plan(exp, tuple(jobs), tuple(factors), refs, factor_nesting(exp, library), tuple(merged))


def factor_nesting(exp: Experiment, library: WildcardLibrary) -> tuple[tuple[str, str], ...]:
    """(outer, inner) factor pairs of the experiment's templates (prompt, negative prompt and stage
    prompts), named as the jobs name them: a comparison of one of a pair leaves the other free."""
    from .experiment import PARENT_TOKEN

    texts = [(exp.prompt, "", exp.prompt_origin),
             (exp.negative_prompt, NEGATIVE_PREFIX, f"{exp.path} (negative_prompt)")]
    for stage in exp.stages:  # a stage's template holds its parent's prompt as escaped text: no factors
        texts.append((stage.prompt.replace(PARENT_TOKEN, ""), "", f"{exp.path} (stage {stage.name})"))
        if stage.negative_prompt is not None:
            texts.append((stage.negative_prompt, NEGATIVE_PREFIX, f"{exp.path} ({stage.name})"))
    pairs = []
    for text, prefix, origin in texts:
        if text.strip():
            tpl = compile_template(text, library=library, origin=origin, allow_empty=True)
            pairs += [(prefix + outer, prefix + inner) for outer, inner in tpl.nested]
    return tuple(dict.fromkeys(pairs))


def pixel_alike(job: Job, *, emphasis: bool = True) -> str:
    """A hash of `job`'s key fields less what changes no pixel, alike for jobs that make one image: an img2img
    strength counts only by the int(strength * steps) denoising steps it runs (diffusers starts both at the
    same timestep), a guidance at or below 1 runs no classifier-free guidance (its value and the negative
    prompt are never read) and, with `emphasis`, a prompt read as emphasis counts only by its weighted runs of
    text (`(a castle:1)` is `a castle`, `harness.weighted`). A later stage's stand-in for a parent not made
    yet; without `emphasis`, what the planner makes once (a prompt's text is the user's own level)."""
    fields = job.pixel_dict()
    if emphasis:
        fields.pop("emphasis", None)
        fields["prompt"], fields["negative_prompt"] = (_weighted_runs(text, job.emphasis)
                                                       for text in (job.prompt, job.negative_prompt))
    if job.mode == "img2img":
        fields["strength"] = ["denoising steps", int(job.strength * job.steps)]
    if job.guidance <= 1:
        fields["guidance"], fields["negative_prompt"] = "no guidance", []
    return content_key(fields)


def _weighted_runs(text: str, emphasis: str | None) -> list[list]:
    from .emphasis import parse

    runs = parse(text) if emphasis else [(text, 1.0)]
    return [[part, weight] for part, weight in runs if part]


def jobs_for(exp: Experiment, refs: dict, prompts: list[Variant], negatives: list[Variant], *,
             seeds: Iterable[int] | None = None, modes: Iterable[str] | None = None,
             strengths: Iterable[float] | None = None, inits: list[tuple[str, str]] | None = None,
             steps: int | None = None, stage: str = "main", meta: dict | None = None,
             init_hash: Callable | None = None, randomize: bool = True,
             merged: list[tuple[Job, Job]] | None = None) -> list[Job]:
    """The cross product checkpoints x modes x prompts x negatives x seeds x draws
    x init images x strengths, deduplicated by key, in that order. `inits` are
    (path, hash) pairs that override the experiment's init images (later stages,
    search); `meta` is merged into every job's meta. `randomize=False` leaves
    `[randomize]` out: one draw with the given and fixed settings (later stages).

    A job that would make the same image as an earlier one (:func:`pixel_alike`: strengths that run the same
    denoising steps at a drawn step count, negative prompts at a drawn guidance at or below 1) is left out,
    so the image is made once, under the earlier job's settings; `merged` gets (left out, kept) pairs."""
    from PIL import Image

    if init_hash is None:
        from .images import init_hash
    seeds = list(exp.seeds if seeds is None else seeds)
    modes = list(exp.modes if modes is None else modes)
    randomized = exp.randomize if randomize else None
    draws = randomized.draws if randomized else 1
    hashes: dict[tuple, str] = {}
    jobs: dict[str, Job] = {}
    alike: dict[str, Job] = {}
    read = _emphasis_reader(exp, stage)
    for ck, ref in refs.items():
        width, height = exp.setting(ck, "width"), exp.setting(ck, "height")
        base = dict(checkpoint=ck, fingerprint=ref.fingerprint, scheduler=exp.setting(ck, "scheduler"),
                    width=width, height=height, dtype=exp.setting(ck, "dtype"), watermark=exp.watermark)
        for mode in modes:
            mode_inits: list = [(None, None)]
            mode_strengths: list = [None]
            if mode == "img2img":
                if inits is not None:
                    mode_inits = list(inits)
                else:
                    mode_inits = []
                    for p in exp.init_images:
                        if (p, width, height) not in hashes:
                            try:
                                hashes[(p, width, height)] = init_hash(p, width, height)
                            except (OSError, ValueError, Image.DecompressionBombError) as e:  # unreadable image
                                raise ExperimentError(exp.path, [
                                    f"key 'init_images': {p} is not a readable image ({type(e).__name__}: {e}); "
                                    "replace it with a PNG, JPEG, WebP or BMP file, or remove it"]) from None
                        mode_inits.append((str(p), hashes[(p, width, height)]))
                mode_strengths = list(exp.strengths if strengths is None else strengths)
            for v in prompts:
                for neg in negatives:
                    for seed in seeds:
                        drawn = random_draws(exp, seed, mode) if randomized else [{}]
                        for draw, rnd in enumerate(drawn):
                            drawn_names = sorted(k for k in rnd if k != "strength" or mode == "img2img")
                            for init_path, ihash in mode_inits:
                                for strength in ([rnd["strength"]] if "strength" in rnd and mode == "img2img"
                                                 else mode_strengths):
                                    job = Job(
                                        **base, mode=mode, prompt=v.prompt, negative_prompt=neg.prompt, seed=seed,
                                        emphasis=read(v, neg),
                                        steps=rnd.get("steps", steps or exp.setting(ck, "steps")),
                                        guidance=rnd.get("guidance", exp.setting(ck, "guidance")),
                                        strength=strength, init_hash=ihash, init_image=init_path,
                                        factors={**v.factors, **neg.factors},
                                        meta={"template": exp.prompt, "negative_template": exp.negative_prompt,
                                              "prompt_seed": exp.prompt_seed, "stage": stage,
                                              **({"draw": draw} if draws > 1 else {}),
                                              **({"drawn": drawn_names} if drawn_names else {}), **(meta or {})},
                                    )
                                    kept = alike.setdefault(pixel_alike(job, emphasis=False), job)
                                    if kept.key != job.key:
                                        if merged is not None:
                                            merged.append((job, kept))
                                        continue
                                    jobs.setdefault(job.key, job)
    return list(jobs.values())


def _emphasis_reader(exp: Experiment, stage: str = "main") -> Callable[[Variant, Variant], str | None]:
    """prompt, negative -> "a1111" when the experiment reads emphasis and either has some to read (weights
    other than 1, brackets or escapes to drop), else None: such prompts keep the key they had before
    emphasis was read. A malformed one is an ExperimentError naming the prompt and the column."""
    from .emphasis import EmphasisError, has_emphasis, parse

    memo: dict[str, str | None] = {}

    def read(prompt: Variant, negative: Variant) -> str | None:  # both are checked, whichever holds emphasis
        return ("a1111" if [one(prompt, "prompt"), one(negative, "negative prompt")] != [None, None]
                else None)

    def one(variant: Variant, what: str) -> str | None:
        text = variant.prompt
        if exp.emphasis != "a1111" or not has_emphasis(text):
            return None
        if text not in memo:
            try:
                runs = parse(text)
            except EmphasisError as e:
                where = "" if stage == "main" else f" of {stage}"
                levels = [f"{name} = {level!r}" for name, level in variant.factors.items()
                          if isinstance(level, str) and has_emphasis(level)]
                made = f" (expanded with factor {', '.join(levels)})" if levels else ""
                escaped = ("; in a template `\\:` is the grammar's escape of ':', so A1111's `\\:` is written "
                           "`\\\\:` there" if "switch prompts" in str(e) and "\\:" in exp.prompt + exp.negative_prompt
                           else "")
                raise ExperimentError(exp.path, [
                    f"{what}{where} {text!r}{made}, {e}{escaped}; or set emphasis = \"literal\" to give the model "
                    "brackets as text"]) from None
            memo[text] = None if "".join(t for t, _ in runs) == text and all(w == 1 for _, w in runs) else "a1111"
        return memo[text]

    return read


def level_counts(jobs: Iterable[Job]) -> dict[str, int]:
    """Factor column (and checkpoint, strength) -> how many distinct levels the jobs give it."""
    levels: dict[str, set] = {}
    for job in jobs:
        for column, value in [*((f"f.{k}", v) for k, v in job.factors.items()),
                              ("checkpoint", job.checkpoint), ("strength", job.strength)]:
            levels.setdefault(column, set()).add(value)
    return {column: len(values - {None}) for column, values in levels.items()}


def variant_of(job: Job) -> tuple:
    """The variant a job's image belongs to: all but its seed and what `[randomize]` drew for it (what a
    stage's `top_k` ranks within, and what a shard keeps whole)."""
    strength = None if "strength" in job.meta.get("drawn", ()) else job.strength
    return (job.checkpoint, job.prompt, job.negative_prompt, job.mode, strength)


def shard(jobs: Iterable[Job], index: int, count: int, *, by_variant: bool = False,
          groups: dict[tuple, tuple] | None = None) -> list[Job]:
    """A deterministic 1/count of the jobs, chosen by key; with `by_variant` every seed of a variant goes
    to the same shard, so a staged experiment's shard ranks (`top_k`) and refines whole variants, and with
    `groups` (variant -> the variant standing for its group: `stages.shard_groups`) every variant of a group."""
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    groups = groups or {}
    pick = ((lambda j: content_key(list(groups.get(variant_of(j), variant_of(j))))) if by_variant
            else (lambda j: j.key))
    return [j for j in jobs if int(pick(j)[:16], 16) % count == index]
