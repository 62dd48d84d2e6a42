"""Score the images of a run with metrics, incrementally and resumably.

Each metric configuration has an id (`clip_score[model=...,...]`); an image is
scored once per id. Scores are written to the ledger after every chunk, so an
interrupted evaluation resumes where it stopped. An image that cannot be
scored gets NaN with a reason and the rest go on.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .core import Job
from .ledger import Ledger
from .ledger.schema import _now

# For runs whose experiment names no metrics: these, and the CLIP score (see `default_metrics`).
DEFAULT_METRICS = ("health", "watermark")
BUILTIN_CLIP = {"tiny": "tiny", "toy": "toy"}  # built-in checkpoint -> its own CLIP model (offline)
CHUNK = 32


@dataclass
class MetricSummary:
    metric: str
    scored: int = 0           # scores stored in this call (NaN with a lasting reason included)
    skipped: int = 0          # already scored before this call
    nan: int = 0              # stored NaN scores of the plan's images (this call's and earlier ones)
    reasons: Counter = field(default_factory=Counter)
    not_applicable: int = 0   # NaN of images the metric does not apply to (no init or parent image): not in `nan`
    not_applicable_reasons: Counter = field(default_factory=Counter)
    mean: float = float("nan")
    unscored: int = 0         # not stored: the metric could not run for them (the next eval retries)
    unscored_reasons: Counter = field(default_factory=Counter)


def item_for(ledger: Ledger, job: Job):
    from .metrics import Item
    parent = job.meta.get("parent_key")
    # a stage's init image is its parent's image, wherever this run folder is now (moved, merged from shards)
    init = ledger.image_path(parent) if parent else job.init_image
    words = _words if job.emphasis else str  # metrics read a prompt's words, not its emphasis brackets
    source = job.meta.get("source_prompt")
    return Item(key=job.key, image_path=ledger.image_path(job.key), prompt=words(job.prompt),
                negative_prompt=words(job.negative_prompt),
                init_image_path=Path(init) if init else None,
                init_size=(job.width, job.height) if init else None, init_hash=job.init_hash if init else None,
                source_prompt=(_words if job.meta.get("source_emphasis") else str)(source) if source else None,
                parent_image_path=ledger.image_path(parent) if parent else None)


def _words(prompt: str) -> str:
    """A prompt without its A1111 emphasis; as written when it does not parse (then it was never read as
    emphasis: the planner refuses such prompts under `emphasis = "a1111"`)."""
    from .emphasis import EmphasisError, plain

    try:
        return plain(prompt)
    except EmphasisError:
        return prompt


def lasting(scores: list) -> list:
    """The scores to store: NaN from a metric that could not run at all (its model failed to load, detail
    `retry`) is left out, so the next `harness eval` tries those images again instead of skipping them."""
    return [s for s in scores if not s.detail.get("retry")]


def experiment_metrics(ledger: Ledger) -> list[str]:
    """The metric specs of the experiment the run was made from, with weights paths (`pretrained=` a file or
    folder) taken from the experiment's folder as `harness run` took them, wherever `eval` runs."""
    from .experiment_tables import pinned_weights

    raw = ledger.get_meta("experiment")
    specs = list(json.loads(raw).get("metrics", [])) if raw else []
    base = experiment_base(ledger)
    return [pinned_weights(spec, base) for spec in specs] if base is not None else specs


def experiment_base(ledger: Ledger) -> Path | None:
    """The folder the run's experiment took relative paths from: the `base_dir` its run-folder copy pins
    (else the folder of the experiment file it was run from); None when neither is known."""
    import tomllib

    try:
        copy = tomllib.loads((Path(ledger.run_dir) / "experiment.toml").read_text(encoding="utf-8"))
        if isinstance(copy.get("base_dir"), str):
            return Path(copy["base_dir"])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        pass
    path = ledger.get_meta("experiment_path")
    return Path(path).parent if path else None


def default_clip(ledger: Ledger) -> str:
    """The CLIP score spec for a run that names none: the built-in model's own CLIP when every image comes
    from one built-in checkpoint (works offline), else the default ViT-L-14/openai (its weights must be
    in the local cache when offline)."""
    names = {j.checkpoint for j in ledger.done_jobs()}
    model = BUILTIN_CLIP.get(next(iter(names))) if len(names) == 1 else None
    return f"clip_score:model={model}" if model else "clip_score"


def default_metrics(ledger: Ledger) -> list[str]:
    return [*DEFAULT_METRICS, default_clip(ledger)]


def scaled_clip_specs(specs: Iterable[str], scale: float, experiment_specs: Iterable[str] = (),
                      default: str = "clip_score") -> list[str]:
    """`harness eval --scale S`: the CLIP score specs at scale S, in `name:` or id form. Without `-m` specs,
    the experiment's CLIP score specs (their model and options kept), else `default` (see `default_clip`).

    `-m` specs of metrics without a scale are kept as given; when none of them takes one, --scale would be
    ignored, so that is a ValueError naming them."""
    from .metrics import metric_from_spec

    for spec in specs:  # a -m spec that does not parse or names no metric says so, not that it takes no scale
        metric_from_spec(spec)
    chosen = list(specs) or [s for s in experiment_specs if _takes_scale(s)] or [default]
    if not any(_takes_scale(s) for s in chosen):
        raise ValueError(f"--scale applies to CLIP score specs, and none of {', '.join(map(repr, chosen))} takes "
                         "a scale; add -m clip_score... or leave out --scale")
    return [_with_scale(s, scale) if _takes_scale(s) else s for s in chosen]


def _takes_scale(spec: str) -> bool:
    """Whether the spec names a metric with a `scale` option; False for a spec that does not parse (its error
    comes when it is evaluated)."""
    from .metrics import metric_options, parse_metric_spec

    try:
        return "scale" in metric_options(parse_metric_spec(spec)[0])
    except (KeyError, ValueError):
        return False


def _with_scale(spec: str, scale: float) -> str:
    """The spec in `name:` form with its scale option set to `scale` (last), its other options kept."""
    from .metrics import parse_metric_spec
    from .metrics.base import format_number
    from .metrics.spec import format_metric_spec

    try:
        name, options = parse_metric_spec(spec)
    except ValueError:
        return spec  # evaluating it reports the malformed spec
    options.pop("scale", None)
    return format_metric_spec(name, {**options, "scale": format_number(scale)})


def metrics_for_run(ledger: Ledger, specs: Iterable[str] | None):
    from .metrics import metric_from_spec
    specs = list(specs or []) or experiment_metrics(ledger)
    unique: dict = {}
    for spec in specs or default_metrics(ledger):  # a spec written two ways is one metric, scored once
        metric = metric_from_spec(spec)
        unique.setdefault(metric.id, metric)
    metrics = list(unique.values())
    for metric in metrics:
        metric.check()
    return metrics


RESCORE = "rescore:"  # meta name prefix: metric id -> when a rescore of every image by it began


def evaluate(ledger: Ledger, specs: Iterable[str] | None = None, *, log: Callable[[str], None] | None = None,
             chunk: int = CHUNK, rescore: bool = False) -> list[MetricSummary]:
    """Score every done image of the current plan not yet scored by each metric. `rescore`: score every
    image again (a metric whose code or weights changed), each score replaced as its new one is written, so
    an interrupted rescore loses nothing and the next `evaluate` goes on with it rather than starting over."""
    log = log or _stderr
    metrics = metrics_for_run(ledger, specs)
    jobs = ledger.done_jobs()
    under_way = {m.id for m in metrics if ledger.get_meta(RESCORE + m.id)}  # a rescore cut off earlier
    if rescore:  # every metric's rescore begins now, so one cut off in the first is taken up for all
        began = _now()
        for metric in metrics:
            if metric.id not in under_way:
                ledger.set_meta(RESCORE + metric.id, began)
    out = []
    for metric in metrics:
        summary = MetricSummary(metric.id)
        since = ledger.get_meta(RESCORE + metric.id) or None
        if since is not None:
            metric.recompute()  # a rescore reads no embedding the old code cached
            if metric.id in under_way:  # with or without --rescore: what it rescored then is not done again
                log(f"{metric.id}: going on with the rescore begun {since}")
        have = ledger.scored_keys(metric.id, since)
        todo = [j for j in jobs if j.key not in have]
        summary.skipped = len(jobs) - len(todo)
        t0, last = time.perf_counter(), 0.0
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            scores = metric.score([item_for(ledger, j) for j in part])
            ledger.put_scores(lasting(scores))
            for s in scores:
                if s.detail.get("retry"):
                    summary.unscored += 1
                    summary.unscored_reasons[str(s.detail.get("reason", "unknown"))] += 1
                    continue
                summary.scored += 1
            if time.perf_counter() - last > 2 or i + chunk >= len(todo):
                last = time.perf_counter()
                done = summary.scored + summary.unscored
                failed = f", {summary.unscored} not scorable now" if summary.unscored else ""
                log(f"{metric.id}: {summary.scored}/{len(todo)} scored{failed} "
                    f"({done / max(1e-9, last - t0):.1f} images/s)")
        if since is not None and not summary.unscored:  # every image has its new score
            ledger.set_meta(RESCORE + metric.id, "")
        out.append(summary)
    values = ledger.scores_frame()
    planned = values[values["key"].isin({j.key for j in jobs})]  # not images an earlier version made
    by_key = {j.key: j for j in jobs}
    for metric, summary in zip(metrics, out):
        stored = planned[planned["metric"] == summary.metric]
        summary.mean = summary_value(metric, stored["value"])
        for key, detail in stored.loc[stored["value"].isna(), ["key", "detail"]].itertuples(index=False):
            if _inapplicable(metric.info.needs, by_key[key]):  # a txt2img image under an init-image metric
                summary.not_applicable += 1
                summary.not_applicable_reasons[str(_reason(detail))] += 1
            else:  # this pass's and earlier ones'
                summary.nan += 1
                summary.reasons[str(_reason(detail))] += 1
    return out


def _inapplicable(needs, job: Job) -> bool:
    """Whether a metric that `needs` these inputs does not apply to `job`'s image (as `inapplicable_mask`
    tells it in a table): it compares with the init image and the image is no img2img one, or with the
    parent image and the image has none."""
    return (("init_image" in needs and job.mode != "img2img")
            or ("parent_image" in needs and not job.meta.get("parent_key")))


def _reason(detail) -> str:
    """The `reason` of a stored score's detail (JSON text)."""
    try:
        return json.loads(detail).get("reason", "unknown") if detail else "unknown"
    except (ValueError, AttributeError):
        return "unknown"


def summary_value(metric, values) -> float:
    """The summary of a metric's stored values: its own `aggregate` where it has one (clip_score with
    clamp=batch_mean clamps the mean, as torchmetrics does), else the mean; NaN when none is finite."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    if not finite:
        return float("nan")
    aggregate = getattr(metric, "aggregate", None)
    return float(aggregate(finite)) if aggregate else sum(finite) / len(finite)


class BackgroundScorer:
    """Scores each finished batch in a background thread while the next batch
    generates (on a GPU the metric models share the device). A metric that
    fails gives NaN with a reason inside `score`; anything else is logged and
    left for the final `evaluate` pass to retry."""

    def __init__(self, ledger: Ledger, specs: Iterable[str], log: Callable[[str], None] | None = None):
        from concurrent.futures import ThreadPoolExecutor
        from .metrics import metric_from_spec

        self.ledger, self.log = ledger, log or (lambda m: None)
        self.metrics = [metric_from_spec(s) for s in specs]
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self.futures: list = []
        self.scored = 0

    def submit(self, jobs: list[Job]) -> None:
        self.futures.append(self.pool.submit(self._score, list(jobs)))

    def _score(self, jobs: list[Job]) -> None:
        items = [item_for(self.ledger, j) for j in jobs]
        for metric in self.metrics:
            self.ledger.put_scores(lasting(metric.score(items)))
        self.scored += len(jobs)

    def close(self) -> None:
        for f in self.futures:
            try:
                f.result()
            except Exception as exc:  # noqa: BLE001 - the final evaluate pass retries these images
                self.log(f"background scoring failed for a batch ({type(exc).__name__}: {exc}); "
                         "it is retried after generation")
        self.pool.shutdown(wait=True)


def evaluate_run(run_dir: Path | str, specs: Iterable[str] | None = None, *,
                 log: Callable[[str], None] | None = None, **kw) -> list[MetricSummary]:
    """`evaluate` on a run folder, after making its ledger agree with the images folder (as
    `harness run` does at start, reading every image once): a finished image deleted or
    damaged since it was made goes back to pending and its scores are removed, so this
    summary and the reports built after it count no score whose image is gone. A damaged
    file stays where it is: scoring never deletes a file; remaking the image replaces it."""
    log = log or _stderr
    with Ledger.open(Path(run_dir)) as ledger:
        reconciled = ledger.reconcile(remove_damaged=False)
        again = f"(for an experiment: harness run EXPERIMENT --out {run_dir})"
        for text in (reconciled.repaired_text(
                "and are pending again, their scores removed (a damaged file stays in images/ until the image "
                f"is made again); the command that made this folder makes them again {again}"),
                reconciled.orphans_text(f"and are not scored; the command that made this folder remakes them {again}"),
                reconciled.strays_text()):
            if text:
                log(text)
        return evaluate(ledger, specs, log=log, **kw)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
