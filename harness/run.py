"""Generate the images of a plan into a run folder, resumably.

The order of work: checkpoints switch as few times as possible (each loaded
once), and within a checkpoint every group of jobs that can share a pipeline
call (same mode, strength, steps, guidance, scheduler, size) is batched, with
different prompts and seeds in one call. PNGs are encoded and written by a
thread pool while the next batch generates; a batch's ledger rows are marked
done only after all of its images are durably on disk, so a kill at any moment
loses at most the batches in flight.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from .atomic import write_atomic
from .core import Job, SettingsError, canonical_json
from .experiment import Experiment, ExperimentError, inline_prompt, load_experiment
from .ledger import Ledger, LedgerError
from .ledger.schema import IMAGES_DIR, LEDGER_FILE, LOCK_FILE, TABLES_DIR
from .plan import Plan, group_jobs, level_counts, make_plan, plan_notes, shard as shard_jobs
from .worker import Finished, Tuning


@dataclass
class RunResult:
    run_dir: Path
    planned: int
    already_done: int
    generated: int = 0
    unhealthy: int = 0  # of the images this run made
    finished_in_folder: int = 0  # the plan's finished images in the folder, every stage's, as the report counts
    unhealthy_in_folder: int = 0  # of those
    seconds: float = 0.0
    oom_events: list[str] = field(default_factory=list)
    device: str = ""
    metrics: list = field(default_factory=list)
    unplanned: int = 0  # done images the edited experiment no longer asks for (kept, left out of reports)
    changed_weights: dict = field(default_factory=dict)  # checkpoint -> (earlier fingerprints, now, images)

    @property
    def images_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0


HISTORY_DIR = "history"  # RUN/history/experiment-<UTC time>.toml: each earlier version of the experiment
SHARDS = "shards"  # ledger meta: the [i, n] shards runs into the folder made ([0, 1]: the whole plan)
MAIN_LEVELS = "main_levels"  # ledger meta: factor column -> levels in the whole main plan (plan.level_counts)
MERGED = "merged"  # ledger meta: set in a folder shards were merged into (it runs the whole plan)
STAGE_PROMPTS = "stage_prompts"  # ledger meta: stage name -> digest of the prompts its templates gave the run
# (stages.stage_prompts_digest: it changes with the lines of the wildcard files they read)


def default_run_dir(exp: Experiment) -> Path:
    return Path("reports") / exp.name


def recorded_experiment_name(ledger: Ledger) -> str | None:
    """The name of the experiment a run folder was made by (None for a new folder)."""
    name = ledger.get_meta("experiment_name")
    settings = ledger.get_meta("experiment")
    if name is None and settings is not None:  # a folder from before names were recorded
        name = json.loads(settings).get("name") or Path(ledger.get_meta("experiment_path") or "").stem or None
    return name


def someone_elses(run_dir: Path) -> list[str]:
    """What a folder with no ledger holds besides what setting one up leaves (empty images/ and tables/,
    the lock file) and hidden files: someone's files, which a run there would take over (its reports
    rewrite plots/, thumbs/ and index.html and remove what they did not write)."""
    if not run_dir.is_dir() or (run_dir / LEDGER_FILE).exists():
        return []

    def left_by_set_up(p: Path) -> bool:
        return p.name == LOCK_FILE or (p.name in (IMAGES_DIR, TABLES_DIR) and p.is_dir() and not any(p.iterdir()))

    return sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".") and not left_by_set_up(p))


def check_not_someone_elses(run_dir: Path, action: str) -> None:
    """Refuse to `action` ("run", "merge") into a folder that is not a run folder and holds files."""
    found = someone_elses(run_dir)
    if found:
        names = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise LedgerError(f"{run_dir} is not a run folder (no {LEDGER_FILE}) and holds files ({names}): the "
                          f"{action} would take it over, and its reports rewrite plots/, thumbs/ and index.html "
                          "there; give --out a new or empty folder")


def check_folder_experiment(ledger: Ledger, exp: Experiment) -> None:
    """Refuse a run folder made by an experiment of another name: its images are not this one's."""
    recorded = recorded_experiment_name(ledger)
    if recorded is not None and recorded != exp.name:
        raise ExperimentError(exp.path, [
            f"the run folder {ledger.run_dir} holds experiment {recorded!r}, not {exp.name!r}; give this one its "
            f"own --out folder (an edited experiment keeps its name and may go on in its folder)"])


def edited_since(ledger: Ledger, exp: Experiment) -> bool:
    """Whether `exp` is another version than the one that last ran in the ledger's folder: other settings,
    or the same `prompt = "@file"` holding other text."""
    template = ledger.get_meta("template")
    return (recorded_settings(ledger) != canonical_json(exp.settings)
            or (template is not None and template != exp.prompt))


def recorded_settings(ledger: Ledger) -> str | None:
    """The settings of the experiment the folder last ran (`Experiment.settings`, as canonical JSON; None for
    a new folder), less the `name` a folder made before names were kept apart recorded with them."""
    settings = ledger.get_meta("experiment")
    if settings is None or '"name"' not in settings:
        return settings
    return canonical_json({k: v for k, v in json.loads(settings).items() if k != "name"})


def prepare_run(exp: Experiment, plan: Plan, run_dir: Path, *, jobs: list[Job] | None = None,
                force: bool = False, part: str = "main", plans_part: bool = True,
                log: Callable[[str], None] | None = None) -> tuple[Ledger, list[Job]]:
    """Open the ledger, reconcile it with the folder, record the plan; return the jobs still to make.

    `jobs` (default: the whole plan) are the ones this process makes, e.g. one shard; the plan
    part `part` is always the whole plan, so shards run into one folder do not hide each other.
    When the experiment changed, the main part is planned again (also from an ablation or a search)
    and the stages' parts are dropped until `run_stage` plans them again; an ablation's or a search's
    part is dropped only when the main images changed (an edit of `metrics` or `batch_size` keeps it).
    `log` hears about finished images found missing or damaged (they are made again). `plans_part=False`
    leaves part `part`'s recorded plan as it is, for its caller to plan (a search, generation by generation)."""
    if (run_dir / "experiment.toml").is_file() and not (run_dir / "ledger.sqlite").is_file():
        raise ExperimentError(exp.path, [
            f"{run_dir} holds an experiment.toml but is not a run folder (no ledger.sqlite): the run would "
            "replace that file with its own copy; give the run another --out folder"])
    check_not_someone_elses(run_dir, "run")
    ledger = Ledger.open(run_dir)
    try:
        check_folder_experiment(ledger, exp)
    except ExperimentError:
        ledger.close()
        raise
    reconciled = ledger.reconcile()
    plan = _keep_made_twins(plan, ledger.done_keys())
    jobs = list(plan.jobs if jobs is None else jobs)
    elsewhere = len(set(reconciled.requeued) - {j.key for j in jobs})
    remade = "and will be made again" if not elsewhere else (
        f"and will be made again; {elsewhere} of them belong to no job of this version's first stage (an "
        "earlier version of the experiment, or a later stage), and are made again when a run plans them")
    for text in (reconciled.repaired_text(remade),
                 reconciled.orphans_text("and are replaced when a job of this run makes the same image"),
                 reconciled.strays_text()):
        if text and log is not None:
            log(text)
    template = ledger.get_meta("template")
    edited = edited_since(ledger, exp)
    copy, text = run_dir / "experiment.toml", exp.run_copy()
    if edited and copy.is_file():
        _keep_earlier_version(run_dir, template, inline_prompt(text, exp.prompt))
    if edited or not copy.is_file() or copy.read_bytes() != text.encode("utf-8"):  # its time: when first run
        write_atomic(copy, lambda p: p.write_text(text, encoding="utf-8"))
    ledger.set_meta("experiment_name", exp.name)
    ledger.set_meta("experiment", canonical_json(exp.settings))
    ledger.set_meta("template", exp.prompt)
    ledger.set_meta("experiment_path", str(exp.path))
    planned_before = ledger.planned_keys()  # what a --force follows to later stages: they are planned again
    # (an edit drops their parts below) from the images it remakes, under the same keys where those come out alike
    ledger.add_jobs(jobs, refresh=part == "main")  # the experiment's own description of its images wins
    # the main images changed (an edit that changes pixels, or a wildcard file holding other lines): what was
    # made from the earlier ones (stages, an ablation, searches) is planned again from the new ones, or not at
    # all. An ablation or search of an edited experiment plans its main images again too.
    main = plan if part == "main" else make_plan(exp) if edited else None
    changed = main is not None and ledger.plan_keys("main") != set(main.keys)
    if plans_part:
        ledger.set_plan(part, [j.key for j in plan.jobs])
    if main is not None:  # an ablation's or a search's own plan has no factors of the template's
        ledger.set_meta("factors", json.dumps(list(main.factors)))
        ledger.set_meta("factor_nesting", json.dumps(main.nesting))
        # a shard's ledger holds its own jobs only: the report needs the whole plan's levels
        ledger.set_meta(MAIN_LEVELS, json.dumps(level_counts(main.jobs)))
    if main is not None and part != "main":
        ledger.set_plan("main", main.keys)
    names = {f"stage:{s.name}" for s in exp.stages}  # a stage's part also goes with any edit (of its settings)
    ledger.drop_plan([p for p in ledger.plan_parts() if p not in ("main", part)
                      and (changed or (p.startswith("stage:") and (edited or p not in names)))])
    # pending or failed rows no plan asks for any more (an edited experiment's) go; those another part still
    # plans (the main run's failures, with their errors, under an ablation or a search) stay
    ledger.drop_pending({j.key for j in jobs} | (ledger.planned_keys() or set()))
    if force:
        ledger.force((j.key for j in jobs), among=planned_before)
    done = ledger.done_keys() - ledger.stale_keys()  # stale: an earlier --force has not remade them yet
    return ledger, [j for j in jobs if j.key not in done]


def _keep_made_twins(plan: Plan, done: set[str]) -> Plan:
    """`plan` with the jobs it left out as repeating another's pixels (`Plan.merged`) back in where their
    images are already made: a folder run before the planner left them out keeps them as this version's
    images (its plan, and what was made from it, stand), and only images not made yet are made once."""
    made = tuple(out for out, _ in plan.merged if out.key in done)
    if not made:
        return plan
    return replace(plan, jobs=plan.jobs + made, merged=tuple(m for m in plan.merged if m[0] not in made))


def _keep_earlier_version(run_dir: Path, template: str | None, current: str) -> Path | None:
    """Copy RUN/experiment.toml, the version that made the folder's images so far, to
    RUN/history/experiment-<UTC time it was written>.toml before an edited version replaces it.
    When its prompt was a file, the copy holds `template`, the text the file had then, inline. Nothing is
    kept when that is `current`, the new version (inline): a run stopped after writing its copy and before
    recording its settings left it there, and it is no earlier version."""
    copy = run_dir / "experiment.toml"
    kept = copy.read_bytes().decode("utf-8")  # bytes as written (read_text would turn \r\n into \n)
    if template is not None:
        kept = inline_prompt(kept, template)
    if kept == current:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(copy.stat().st_mtime))
    history = run_dir / HISTORY_DIR
    history.mkdir(exist_ok=True)
    n = 1
    while (target := history / f"experiment-{stamp}{'' if n == 1 else f'-{n}'}.toml").exists():
        n += 1
    return write_atomic(target, lambda p: p.write_bytes(kept.encode("utf-8")))


def _check_settings(exp: Experiment, plan: Plan, device: str | None, executor: str,
                    executor_options: dict | None) -> None:
    """The device, the dtypes and the memory policy checked on the device the run uses, before any run folder
    is touched; a problem names the key it comes from (a checkpoint's own dtype is its table's key)."""
    from .experiment_tables import toml_key

    if executor == "local":
        from .devices import check_settings as check
    else:  # Ray workers may have devices this machine lacks: they check those, the rest is checked here
        from functools import partial

        from .executors.ray_executor import check_worker_settings
        check = partial(check_worker_settings, gpus_per_worker=(executor_options or {}).get("gpus_per_worker", 0.0))
    own = {ck for ck, o in exp.overrides.items() if o.get("dtype")}
    dtypes: dict[str, set[str]] = {}
    for job in plan.jobs:
        key = f"key 'checkpoint.{toml_key(job.checkpoint)}.dtype'" if job.checkpoint in own else ""
        dtypes.setdefault(key, set()).add(job.dtype)
    where = "--device" if device else "its device, dtype and memory keys"
    for key, wanted in [("", dtypes.pop("", set())), *sorted(dtypes.items())]:
        try:
            check(device or exp.device, wanted, exp.memory)
        except SettingsError as exc:
            raise SettingsError(f"{exp.path} ({key or where}): {exc}") from None
    if "cudagraphs" in exp.speedups and executor == "local":
        _check_cudagraphs(exp, device or exp.device)


def _check_cudagraphs(exp: Experiment, device: str) -> None:
    """CUDA graphs replay fixed kernels on a CUDA card with weights that stay where they were recorded."""
    from .devices import pick_device

    resolved = pick_device(device)
    if not resolved.startswith("cuda"):
        raise SettingsError(f"{exp.path} (key 'speedups'): 'cudagraphs' replays CUDA graphs, so it needs a CUDA "
                            f"device; this run's device is {resolved}. Use 'compile' off CUDA")
    memory = [exp.memory] if isinstance(exp.memory, str) else list(exp.memory)
    offload = [m for m in memory if m.endswith("cpu_offload")]
    if offload:
        raise SettingsError(f"{exp.path} (key 'speedups'): 'cudagraphs' needs the UNet's weights to stay on the "
                            f"card, but key 'memory' has {offload[0]!r}, which moves them; drop one of the two")


def run_experiment(path: Path | str, *, out: Path | str | None = None, force: bool = False,
                   exact: bool | None = None, device: str | None = None, batch_size: int | None = None,
                   shard: tuple[int, int] | None = None, log: Callable[[str], None] | None = None,
                   progress: bool | None = None, evaluate_after: bool = True, executor: str = "local",
                   executor_options: dict | None = None) -> RunResult:
    """Plan, generate what is not done yet, then score with the experiment's metrics."""
    from .executors import check_executor

    check_executor(executor, executor_options)
    exp = load_experiment(path)
    plan = make_plan(exp)
    run_dir = Path(out) if out else default_run_dir(exp)
    shard = shard or _folder_shard(run_dir, log or _stderr)
    groups = None
    if exp.stages:  # stages that would share images are refused before any is made
        from .stages import planned_stages, shard_groups
        groups = shard_groups(exp, planned_stages(exp, list(plan.jobs), plan.checkpoints))
    if plan.merged and (run_dir / "ledger.sqlite").is_file():  # twins made before merging stay planned
        try:
            with Ledger.open(run_dir, readonly=True) as seen:
                plan = _keep_made_twins(plan, seen.done_keys())
        except LedgerError:  # a ledger that cannot be read yet: prepare_run sets it up or says why
            pass
    jobs = list(plan.jobs) if shard is None else shard_jobs(plan.jobs, *shard, by_variant=bool(exp.stages),
                                                            groups=groups)
    for note in plan_notes(plan, jobs):
        (log or _stderr)(f"note: {note}")
    _check_settings(exp, plan, device, executor, executor_options)
    ledger, pending = prepare_run(exp, plan, run_dir, jobs=jobs, force=force, log=log or _stderr)
    _add_shards(ledger, [shard or (0, 1)])
    result = RunResult(run_dir, len(jobs), len(jobs) - len(pending))
    try:
        options = dict(exact=exp.exact if exact is None else exact, device=device or exp.device,
                       batch_size=batch_size, log=log or _stderr, progress=progress, executor=executor,
                       executor_options=executor_options)
        if executor == "local":  # one for the main pass and every stage: each checkpoint loads once, and a
            from .worker import BatchMaker  # batch size lowered after running out of memory stays lowered
            options["maker"] = BatchMaker(plan.checkpoints, ledger.images_dir, device=options["device"],
                                          memory=exp.memory, tuning=Tuning(speedups=exp.speedups, streams=exp.streams),
                                          exact=options["exact"], batch_size=batch_size or exp.batch_size)
        scorer = None
        if exp.metrics and evaluate_after and executor == "local":
            from .evaluate import BackgroundScorer
            scorer = BackgroundScorer(ledger, exp.metrics, log=log or _stderr)
            options["on_done"] = scorer.submit
        try:
            generate_jobs(exp, plan, ledger, pending, result, **options)
        finally:
            if scorer is not None:
                scorer.close()
        if exp.metrics and evaluate_after:
            from .evaluate import evaluate
            result.metrics = evaluate(ledger, exp.metrics, log=log or _stderr)
        own = None if shard is None else {j.key for j in jobs}  # a shard refines its own main images only
        for stage in exp.stages:
            run_stage(exp, stage, plan, ledger, result, evaluate_after=evaluate_after, own=own, **options)
        from .tables import image_table
        table = image_table(ledger)
        result.finished_in_folder = len(table)
        result.unhealthy_in_folder = int((~table["healthy"].astype(bool)).sum()) if len(table) else 0
        result.unplanned = ledger.unplanned_done()
        if result.unplanned:
            result.changed_weights = changed_weights(ledger, plan)
    finally:
        if options.get("maker") is not None:
            options["maker"].close()
        ledger.close()
    return result


def changed_weights(ledger: Ledger, plan: Plan) -> dict[str, tuple[list[str], str, int]]:
    """Checkpoints whose weights changed since some of the folder's images were made (a fine-tune saved
    again under the same name): name -> (the earlier fingerprints, the current one, how many done images no
    longer planned were made with the earlier). Those are kept and left out; the plan makes them anew."""
    now = {name: ref.fingerprint for name, ref in plan.checkpoints.items()}
    frame = ledger.jobs_frame()
    old = frame[(frame["status"] == "done") & ~frame["key"].isin(ledger.planned_keys() or set())]
    old = old[old["checkpoint"].isin(now.keys()) & (old["fingerprint"] != old["checkpoint"].map(now))]
    return {ck: (sorted(set(g["fingerprint"])), now[ck], len(g)) for ck, g in old.groupby("checkpoint", sort=True)}


def _add_shards(ledger: Ledger, shards: Iterable) -> None:
    known = {tuple(s) for s in json.loads(ledger.get_meta(SHARDS) or "[]")}
    ledger.set_meta(SHARDS, json.dumps(sorted(known | {tuple(s) for s in shards})))


def _folder_shard(run_dir: Path, log: Callable[[str], None]) -> tuple[int, int] | None:
    """The shard a folder's every earlier run made (`--shard i/n` each time), so that running its
    experiment copy again without `--shard` goes on with that shard, not the whole plan; else None."""
    if not (run_dir / LEDGER_FILE).is_file():
        return None
    try:
        with Ledger.open(run_dir, readonly=True) as ledger:
            shards = json.loads(ledger.get_meta(SHARDS) or "[]")
            merged = ledger.get_meta(MERGED) is not None
    except LedgerError:  # set up (or said to be damaged) by the writable open that follows
        return None
    if merged or len(shards) != 1 or shards[0][1] == 1:  # a folder shards were merged into runs the whole plan
        return None
    i, n = shards[0]
    log(f"shard {i}/{n}: the only shard this folder's earlier runs made (pass --shard 0/1 for the whole plan)")
    return i, n


def run_stage(exp: Experiment, stage, plan: Plan, ledger: Ledger, result: RunResult, *,
              evaluate_after: bool = True, on_done=None, own: set[str] | None = None, **options) -> None:
    """Generate one later stage from its source stage's outputs (resumable like the main stage).

    A shard makes the children of its own main images (`own`, their keys), not of others its folder
    holds from an earlier sharding: it was given whole variants (`shard(..., by_variant=True)`), so
    its `top_k` ranks them as a single run would. The children other shards run into the folder planned stay
    planned beside its own (`_beside_other_shards`), so neither shard hides the other's stage images."""
    from .evaluate import evaluate
    from .stages import stage_jobs, stage_prompts_digest

    log = options.get("log") or _stderr
    if stage.metric:  # top-k selection needs the source images scored
        evaluate(ledger, [stage.metric], log=log)
    jobs = stage_jobs(exp, stage, ledger, plan.checkpoints, log=log, own=own)
    digest = stage_prompts_digest(exp, stage)
    rows, others = _beside_other_shards(stage, ledger, jobs, own, digest)
    ledger.set_plan(f"stage:{stage.name}", [*(j.key for j in jobs), *others])
    _add_stage_prompts(ledger, {stage.name: digest})
    ledger.add_jobs(rows, refresh=True)
    done = ledger.done_keys() - ledger.stale_keys()
    pending = [j for j in jobs if j.key not in done]
    result.planned += len(jobs)
    result.already_done += len(jobs) - len(pending)
    log(f"stage {stage.name}: {len(jobs)} jobs from stage {stage.source}, {len(pending)} to generate")
    generate_jobs(exp, plan, ledger, pending, result, **options)
    if exp.metrics and evaluate_after:
        result.metrics = evaluate(ledger, exp.metrics, log=log)


def _beside_other_shards(stage, ledger: Ledger, jobs: list[Job], own: set[str] | None,
                         digest: str) -> tuple[list[Job], list[str]]:
    """What a stage planned in a shard adds to the folder beside the children other shards run into it planned:
    (its jobs, a child some of whose parents are another shard's joined with that shard's row as
    `stages.join_parents` joins it; the keys of the other shards' children that stay planned). Theirs stay
    while their parents are still planned and the stage's templates gave the same prompts (`digest`, under
    meta STAGE_PROMPTS); a whole run, or a shard whose prompts changed (an edited wildcard file), plans the
    stage anew. An edited experiment or other main images dropped the stage's part before (`prepare_run`)."""
    if own is None or json.loads(ledger.get_meta(STAGE_PROMPTS) or "{}").get(stage.name) != digest:
        return jobs, []
    from .stages import join_parents, parent_keys, stage_sources

    planned = ledger.plan_keys("main" if stage.source == "main" else f"stage:{stage.source}")
    mine = own if stage.source == "main" else {j.key for j in stage_sources(stage, ledger, own)}
    rows, others = {j.key: j for j in jobs}, []
    for child in ledger.planned_jobs(f"stage:{stage.name}"):
        if child.meta.get("parent_key") and any(k in planned and k not in mine for k in parent_keys(child)):
            others.append(child.key)
            if child.key in rows:  # also a child of this shard's parents: one row, as one run plans it
                rows[child.key] = join_parents([rows[child.key], child])
    return list(rows.values()), others


def _add_stage_prompts(ledger: Ledger, digests: dict[str, str]) -> None:
    known = json.loads(ledger.get_meta(STAGE_PROMPTS) or "{}")
    ledger.set_meta(STAGE_PROMPTS, canonical_json({**known, **digests}))


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def generate_jobs(exp: Experiment, plan: Plan, ledger: Ledger, pending: list[Job], result: RunResult, *,
                  exact: bool, device: str, batch_size: int | None, log: Callable[[str], None],
                  progress: bool | None = None, tuning: Tuning | None = None, executor: str = "local",
                  executor_options: dict | None = None, on_done: Callable[[list[Job]], None] | None = None,
                  maker=None) -> None:
    """Generate `pending` into the run folder; the ledger marks a batch done after its PNGs are on disk.
    `maker`: a BatchMaker to reuse across calls (checkpoints stay loaded; the caller closes it)."""
    if not pending:
        return
    if executor == "ray":
        from .executors.ray_executor import generate_with_ray
        return generate_with_ray(exp, plan, ledger, pending, result, exact=exact, device=device,
                                 batch_size=batch_size, log=log, progress=progress, **(executor_options or {}))
    from .worker import BatchMaker, write_now

    tuning = tuning or Tuning(speedups=exp.speedups, streams=exp.streams)
    owned = maker is None
    if owned:
        maker = BatchMaker(plan.checkpoints, ledger.images_dir, device=device, memory=exp.memory, tuning=tuning,
                           exact=exact, batch_size=batch_size or exp.batch_size)
    result.device = maker.device
    _note_mixed_settings(ledger, maker.device, pending, log)
    writer = ThreadPoolExecutor(max_workers=max(1, tuning.writers))
    submit = writer.submit if tuning.writers > 0 else write_now
    inflight: deque[Finished] = deque()
    by_key = {j.key: j for j in pending}
    bar = _Progress(len(pending), enabled=progress, log=log)
    t0 = time.perf_counter()

    def commit(block: bool) -> None:
        while inflight and (block or all(f.done() for f in inflight[0].writes)):
            done = inflight.popleft()
            for f in done.writes:
                f.result()  # a failed write raises here, before the row is marked done
            ledger.mark_done_many(done.rows)
            result.generated += len(done.rows)
            bar.advance(len(done.rows))
            if on_done is not None:
                on_done([by_key[r.key] for r in done.rows])

    def on_oom(message: str) -> None:
        result.oom_events.append(message)
        log(message)

    def finish(chunk, seconds: float) -> None:
        done = maker.finish(chunk, seconds, submit)
        result.unhealthy += done.unhealthy
        inflight.append(done)
        commit(block=False)

    try:
        if maker.streams > 1:
            _generate_in_streams(maker, pending, maker.streams, finish, on_oom)
        else:
            for jobs in maker.resident_first(group_jobs(pending).values()):
                for chunk, seconds in maker.generate(jobs, on_oom=on_oom):
                    finish(chunk, seconds)
        commit(block=True)
    finally:
        try:
            commit(block=True)
        finally:
            writer.shutdown(wait=True)
            if owned:
                maker.close()
            result.seconds += time.perf_counter() - t0
            bar.close()


def _note_mixed_settings(ledger: Ledger, device: str, pending: list[Job], log: Callable[[str], None]) -> None:
    """A note when this run makes images on another device type or in another dtype than the folder's
    finished ones (a study resumed on a GPU after a CPU start): their pixels differ, so comparisons
    should pair images made the same way."""
    from .devices import dtype_name, pick_dtype

    before = ledger.made_with()
    now = {(device.split(":")[0], dtype_name(pick_dtype(d, device))) for d in {j.dtype for j in pending}}
    if before and not now <= before:
        show = lambda pairs: ", ".join(f"{d} {t}" for d, t in sorted(pairs))  # noqa: E731
        log(f"note: this folder's finished images were made with {show(before)}; this run makes them with "
            f"{show(now)}. Pixels differ between the two: compare images made the same way (columns "
            "device and dtype_used of the images table)")


def _generate_in_streams(maker, pending: list[Job], streams: int, finish, on_oom) -> None:
    """Batches generated by `streams` threads at once, each torch op on one core (CPU: small models
    leave cores idle inside one call); finished in plan order on this thread, which alone writes the
    ledger. An error cancels the batches not started."""
    import torch

    from .worker import batches

    units = batches(maker.resident_first(group_jobs(pending).values()), maker.size_for)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // streams))
    pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="stream")
    futures = [pool.submit(lambda jobs: list(maker.generate(jobs, on_oom=on_oom)), unit) for unit in units]
    written = [0] * len(futures)  # chunks of each future finished here
    try:
        for i, future in enumerate(futures):
            for chunk, seconds in future.result():
                finish(chunk, seconds)
                written[i] += 1
    except BaseException:
        # Ctrl-C or an error: the other streams stop at their next denoising step, and the batches they
        # had already finished are written rather than thrown away (the exception is raised all the same).
        maker.stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            for i, future in enumerate(futures):
                if future.done() and not future.cancelled() and future.exception() is None:
                    for chunk, seconds in future.result()[written[i]:]:
                        finish(chunk, seconds)
                        written[i] += 1
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        maker.stopping.clear()
        torch.set_num_threads(threads)


def merge_runs(out: Path | str, sources: Iterable[Path | str], *, log: Callable[[str], None] | None = None) -> dict:
    """Merge shard run folders into one run: done jobs, images (verified, atomic) and scores.
    The experiment copy and run metadata come from the first source that has them."""
    log = log or _stderr
    out = Path(out)
    sources = [Path(src) for src in sources]
    for src in sources:
        if src.resolve() == out.resolve():
            raise ValueError(f"{src} is the run folder being merged into (--out); merge the other folders into it")
    if (out / "experiment.toml").is_file() and not (out / "ledger.sqlite").is_file():
        raise ValueError(f"{out} holds an experiment.toml but is not a run folder (no ledger.sqlite): the merge "
                         "would mix its runs into someone's experiment folder; give --out another folder")
    check_not_someone_elses(out, "merge")
    if (out / "ledger.sqlite").is_file():
        Ledger.open(out).close()  # a set-up cut off (a merge killed at its start) is finished, as a run would
    _check_mergeable([*sources, *([out] if (out / "ledger.sqlite").is_file() else [])])
    totals = {"added": 0, "already": 0, "scores": 0, "bad": 0}
    with Ledger.open(out) as ledger:
        ledger.set_meta(MERGED, "1")
        for src in sources:
            with Ledger.open(src, readonly=True) as other:  # the run metadata first: it marks the folder set up
                if ledger.get_meta("experiment") is None and other.get_meta("experiment") is not None:
                    for name in ("experiment", "template", "experiment_path", "experiment_name", "factors",
                                 "factor_nesting", MAIN_LEVELS):
                        value = other.get_meta(name)
                        if value is not None:
                            ledger.set_meta(name, value)
            if not (out / "experiment.toml").exists() and (src / "experiment.toml").exists():
                write_atomic(out / "experiment.toml", lambda p: shutil.copyfile(src / "experiment.toml", p))
            m = ledger.merge_from(src)
            with Ledger.open(src, readonly=True) as other:  # the folder now holds the sources' shards too
                _add_shards(ledger, json.loads(other.get_meta(SHARDS) or "[[0, 1]]"))
                _add_stage_prompts(ledger, json.loads(other.get_meta(STAGE_PROMPTS) or "{}"))
            totals["added"] += m.jobs_added
            totals["already"] += m.jobs_already_done
            totals["scores"] += m.scores_added
            totals["bad"] += len(m.bad_images)
            log(f"{src}: {m.jobs_added} jobs added, {m.jobs_already_done} already present, "
                f"{m.scores_added} scores, {len(m.bad_images)} damaged or changed images skipped"
                + (f"; {m.repaired} images this folder had lost (missing, damaged or changed) taken from it"
                   if m.repaired else "")
                + (f"; {m.other_parents} later-stage images left out: this folder holds those children of its "
                   "own copy of their parent (shards that overlap made the parent twice)" if m.other_parents else "")
                + (f"; {m.orphans} later-stage images left out: made from a damaged image skipped above "
                   "(remade in that shard's folder, they come with it)" if m.orphans else "")
                + (f"; {m.stale_children} later-stage images of this folder taken out of its plan: made from a "
                   "copy of their parent it had lost, now replaced by this source's" if m.stale_children else "")
                + (" (" + ", ".join(f"{n} {why}" for why, n in Counter(m.bad_images.values()).most_common(3))
                   + f"; `harness run {src / 'experiment.toml'} --out {src}` remakes them in that shard's folder, "
                   "then merge it again)" if m.bad_images else ""))
        totals["done"] = ledger.count("done")
        totals["missing"] = ledger.planned_not_done()
        made_with = ledger.made_with()
    if len(made_with) > 1:
        log("note: the merged images were made with " + ", ".join(f"{d} {t}" for d, t in sorted(made_with))
            + ". Pixels differ between them: compare images made the same way (columns device and dtype_used "
            "of the images table)")
    return totals


def _check_mergeable(runs: list[Path]) -> None:
    """Every folder is a run of the same version of one experiment (shards of one plan: the same settings
    and main plan, so also the same prompt file and wildcard files, and the same prompts from each stage's
    templates, so the same wildcard files for them too), checked before anything is merged."""
    settings: dict[str, list[Path]] = {}
    plans: dict[frozenset, list[Path]] = {}
    stages: dict[str, dict[str, list[Path]]] = {}  # stage -> digest of its prompts -> runs
    for run in runs:
        if not (run / "ledger.sqlite").is_file():
            raise FileNotFoundError(f"{run}: not a run folder (no ledger.sqlite)")
        with Ledger.open(run, readonly=True) as ledger:
            if (recorded := recorded_settings(ledger)) is not None:  # a folder that recorded none yet takes any
                settings.setdefault(recorded, []).append(run)
            if keys := ledger.plan_keys("main"):  # a ledger from before plans were recorded has none
                plans.setdefault(frozenset(keys), []).append(run)
            for name, digest in json.loads(ledger.get_meta(STAGE_PROMPTS) or "{}").items():  # stages it ran
                stages.setdefault(name, {}).setdefault(digest, []).append(run)
    checks = [(settings, "different experiments"),
              (plans, "one experiment whose prompt file or wildcard files held other text (other main plans)"),
              *((versions, f"one experiment whose wildcard files held other text for stage {name!r} (other prompts "
                           f"from its templates)") for name, versions in stages.items())]
    for versions, what in checks:
        if len(versions) > 1:
            groups = "; ".join(", ".join(map(str, runs)) for runs in versions.values())
            raise ValueError(f"these runs are of {what} and cannot be merged into one: {groups} (merge the shards "
                             "of one version; run the others again with the current files, or compare them side "
                             "by side)")


class _Progress:
    """A rich progress bar on a terminal; plain lines otherwise."""

    def __init__(self, total: int, *, enabled: bool | None, log: Callable[[str], None]):
        self.total, self.done, self.log = total, 0, log
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0
        self._bar = None
        if self.tty:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn)
            self._bar = Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task("gen", total=total, rate="")
            self._bar.start()

    def advance(self, n: int) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{rate:.2f} img/s")
        elif time.perf_counter() - self._last > 2 or self.done == self.total:
            self._last = time.perf_counter()
            eta = (self.total - self.done) / rate if rate else float("nan")
            self.log(f"generated {self.done}/{self.total} ({rate:.2f} img/s, eta {eta:.0f}s)")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
