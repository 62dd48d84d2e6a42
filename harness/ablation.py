"""Clause ablation: which parts of a prompt actually matter.

`harness ablate EXP.toml` takes the experiment's prompt, splits it into clauses
(`mutate.split_clauses`: commas outside emphasis brackets) and renders the full
prompt and the N leave-one-out prompts (each without one clause) on the same
seeds, checkpoints and parameters. Every arm, the full prompt too, is its clauses
joined by ", " (spaces collapsed, empty clauses dropped), so a stray space or a
trailing comma in the written prompt is not counted as any clause's effect. Each clause's contribution is

    contribution = metric(full prompt) - metric(prompt without the clause)

paired by seed (and by every other condition: checkpoint, mode, strength,
negative prompt, ...), so the seed's own effect cancels. The mean and its 95%
interval come from `stats.paired_compare` with the full prompt as the baseline
level of a factor `ablation`: with one prompt, seeds are the independent units,
so each seed is a cluster (its images at every setting, init image and negative
prompt share its noise) and the interval is a bootstrap over seeds; the Wilcoxon
signed-rank p-value is over the seeds' mean differences, Holm-adjusted across
clauses. A clause "helps" when its interval lies on the good side of zero (above
for higher-is-better metrics) and its Holm-adjusted p is below 0.05, "hurts" when
on the bad side with that p, and is "unclear" otherwise.

A template prompt is ablated per concrete prompt it expands to (the table has
a `prompt` column). Results go to `tables/ablation.{csv,parquet,md}` in the run
folder, which is shared with `harness run`: images already made are reused.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Sequence

from .core import Variant
from .experiment import ExperimentError, load_experiment
from .grammar import escape_text
from .mutate import leave_one_out, literal
from .mutate.clauses import normalise
from .wildcards import WildcardLibrary

FULL = "(full prompt)"
ALPHA = 0.05  # a verdict's level: its interval is the 95% one and its Holm-adjusted p below this
NOT_QUALITY = ("health", "watermark")
# Job fields that define a condition; pairs share all of them and the seed.
CONDITIONS = ("checkpoint", "mode", "strength", "steps", "guidance", "width", "height", "negative_prompt",
              "init_hash", "scheduler")
COLUMNS = ["prompt", "metric", "rank", "clause_index", "clause", "contribution", "ci_low", "ci_high", "verdict",
           "p_value", "p_holm", "full_win_rate", "mean_full", "mean_without", "n_pairs", "n_seeds", "note"]


@dataclass(frozen=True)
class Arm:
    """One prompt of the study: the full prompt (clause None) or the prompt without one clause."""

    base: str            # the concrete full prompt this arm ablates
    label: str           # level of the `ablation` factor
    clause_index: int | None
    clause: str | None
    prompt: str          # concrete prompt rendered


@dataclass
class AblationResult:
    run_dir: Path
    table: object                       # pandas DataFrame, COLUMNS
    generated: int = 0
    outputs: list[Path] = field(default_factory=list)
    higher_is_better: dict = field(default_factory=dict)
    single_clause: list[str] = field(default_factory=list)  # prompts of one clause: nothing to leave out


    def to_text(self) -> str:
        from .stats import MIN_CLUSTERS_FOR_CI  # below this many seeds the percentile interval undercovers

        out = []
        for (prompt, metric), g in self.table.groupby(["prompt", "metric"], sort=False):
            better = "higher" if self.higher_is_better.get(metric, True) else "lower"
            out.append(f"prompt: {prompt}")
            out.append(f"metric: {metric} ({better} is better); contribution = full - without clause, "
                       "paired by seed, 95% CI")
            # a clause written twice is named with its position (#1 = the first clause of the prompt)
            twice = set(g["clause"][g["clause"].duplicated()])
            names = [f"{c} (#{i + 1})" if c in twice else str(c) for c, i in zip(g["clause"], g["clause_index"])]
            width = max(map(len, names))
            for name, r in zip(names, g.itertuples(index=False)):
                ci = "n/a" if math.isnan(r.ci_low) else f"[{r.ci_low:+.4g}, {r.ci_high:+.4g}]"
                p = "n/a" if math.isnan(r.p_holm) else f"{r.p_holm:.3g}"  # what the verdict reads
                out.append(f"  {r.rank:>2}. {name.ljust(width)}  {r.contribution:+.4g}  {ci}  "
                           f"{r.verdict:<7}  p(Holm)={p}  seeds={r.n_seeds}  pairs={r.n_pairs}")
            asks = any(n.endswith(ASKS_PROMPT_NOTE) for n in g["note"])  # said once, on a line of its own
            # each note once: the notes shared by every row of this prompt and metric too
            notes = list(dict.fromkeys(part for n in g["note"]
                                       for part in n.removesuffix(ASKS_PROMPT_NOTE).split("; ") if part))
            notes += [ASKS_PROMPT_NOTE] if asks else []
            if g["n_seeds"].max() < MIN_CLUSTERS_FOR_CI:
                notes.append(f"under {MIN_CLUSTERS_FOR_CI} seeds the percentile interval is too narrow; "
                             "read verdicts as tentative and add seeds")
            out += [f"  note: {n}" for n in notes]
            out.append("")
        if self.single_clause:
            out.append(f"not ablated: {len(self.single_clause)} prompt(s) of one clause, nothing to leave out: "
                       + ", ".join(repr(p) for p in self.single_clause))
        return "\n".join(out)


def arms_for(prompts: Sequence[Variant]) -> tuple[list[Arm], list[str]]:
    """The full prompt and its leave-one-out prompts, for each concrete prompt of two or more clauses;
    and the prompts of one clause, which have nothing to leave out. ValueError when no prompt has two."""
    arms, single, seen = [], [], set()
    for v in prompts:
        same = normalise(escape_text(v.prompt))  # "red car, big" and "red car, big, " are one study
        if same in seen:
            continue
        seen.add(same)
        try:
            mutants = leave_one_out(escape_text(v.prompt))
        except ValueError:
            single.append(v.prompt)
            continue
        # rejoined like the leave-one-out prompts, so spacing or a trailing comma is no clause's effect
        arms.append(Arm(v.prompt, FULL, None, None, literal(normalise(escape_text(v.prompt)))))
        for m in mutants:
            i = m.args["clause"]
            text = literal(m.args["text"])
            arms.append(Arm(v.prompt, f"without {i}: {text}", i, text, literal(m.prompt)))
    if not arms:
        shown = ", ".join(repr(p) for p in single[:3]) + (", ..." if len(single) > 3 else "")
        raise ValueError(f"no prompt has two or more clauses to leave out ({shown}); clauses are separated by "
                         "commas outside emphasis brackets")
    return arms, single


def ablate(path: Path | str, *, out: Path | str | None = None, metrics: Sequence[str] | None = None,
           device: str | None = None, n_boot: int = 2000, seed: int = 0,
           log: Callable[[str], None] | None = None) -> AblationResult:
    """Generate, score and analyse the leave-one-out study of an experiment's prompt."""
    from .evaluate import evaluate
    from .metrics import metric_from_spec
    from .plan import Plan, jobs_for, resolve_checkpoints, variants_of
    from .run import RunResult, default_run_dir, generate_jobs, prepare_run

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    exp = load_experiment(path)
    library = WildcardLibrary(exp.wildcard_path())
    # default: the experiment's quality metrics that can score its images (txt2img ones have no init image)
    specs = list(metrics) if metrics else [
        m for m in exp.metrics if m.split(":")[0].split("[")[0] not in NOT_QUALITY
        and ("img2img" in exp.modes or not metric_from_spec(m).INFO.needs & {"init_image", "parent_image"})]
    if not specs:
        raise ExperimentError(exp.path, ["key 'metrics': ablation needs a metric to measure contributions with, "
                                         "other than health and watermark (e.g. metrics = [\"clip_score\"])"])
    built = [metric_from_spec(s) for s in specs]
    for m, spec in zip(built, specs):
        try:
            m.check()  # a bad option (an unknown CLIP model) before anything is generated
        except ValueError as e:
            raise ValueError(f"--metric {spec!r}: {e}") from None
    chosen = list({m.id: m for m in built}.values())  # a metric named twice (or two ways): once
    prompts, negatives = variants_of(exp, library)
    try:
        arms, single = arms_for(prompts)
    except ValueError as e:
        raise ExperimentError(exp.path, [f"key 'prompt': {e}"]) from None
    refs = resolve_checkpoints(exp)
    jobs_of: list[tuple[Arm, list]] = []
    for arm in arms:
        factors = {"ablation": arm.label, **({"ablation_prompt": arm.base} if len(prompts) > 1 else {})}
        jobs_of.append((arm, jobs_for(exp, refs, [Variant(arm.prompt, factors)], negatives, stage="ablation",
                                      meta={"ablation": {"clause": arm.clause_index, "text": arm.clause}})))
    wanted = list({j.key: j for _, js in jobs_of for j in js}.values())
    run_dir = Path(out) if out else default_run_dir(exp)
    plan = Plan(exp, tuple(wanted), ("ablation",), refs)
    ledger, pending = prepare_run(exp, plan, run_dir, jobs=wanted, part="ablation")
    run = RunResult(run_dir, len(wanted), len(wanted) - len(pending))
    try:
        generate_jobs(exp, plan, ledger, pending, run, exact=exp.exact, device=device or exp.device,
                      batch_size=None, log=log, progress=False)
        evaluate(ledger, list(dict.fromkeys([*specs, *exp.metrics])), log=log)
        from .tables import image_table
        images = image_table(ledger)
    finally:
        ledger.close()
    higher = {m.id: m.INFO.higher_is_better for m in chosen}
    table = contributions(images, jobs_of, [m.id for m in chosen], higher, n_boot=n_boot, seed=seed,
                          asks_prompt={m.id for m in chosen if "prompt" in m.info.needs})
    from .tables import write_table
    result = AblationResult(run_dir, table, run.generated, higher_is_better=higher, single_clause=single)
    result.outputs = write_table(table, run_dir / "tables", "ablation")
    return result


# A metric that reads the prompt (CLIP score against it, the toy oracles without want=) asks each arm its own
# question: without the clause it no longer asks for what the clause names.
ASKS_PROMPT_NOTE = ("this metric scores each image against its own prompt, so the arm without a clause is also asked "
                    "another question: the contribution mixes what the image shows with what is asked; a fixed "
                    "question (`text=`, `want=`) scores the arms alike")


def seeds_for_a_verdict(n_tested: int, alpha: float = ALPHA) -> int:
    """The fewest seeds on which a verdict is possible with `n_tested` clauses: the signed-rank test's
    smallest two-sided p on n seeds is 2^(1-n), and Holm multiplies the smallest of k p-values by k."""
    n = 1
    while n_tested * 2.0 ** (1 - n) >= alpha:
        n += 1
    return n


def _shared_notes(cmp) -> list[str]:
    """Notes every row of one prompt and metric carries: images left out of the pairs, and a verdict that
    no result could reach on this many seeds."""
    notes = []
    left_out = [f"{v} {k.replace('_', ' ')}" for k, v in cmp.n_excluded.items() if v]
    if left_out:
        notes.append(f"images left out: {', '.join(left_out)}")
    tested = [r for r in cmp.rows if not math.isnan(r.p_value)]
    if tested:
        n_seeds = max(r.n_clusters for r in tested)
        smallest = min(1.0, len(tested) * 2.0 ** (1 - n_seeds))
        if smallest >= ALPHA:
            notes.append(f"no verdict is possible: on {n_seeds} seeds with {len(tested)} clauses tested the "
                         f"smallest Holm-adjusted p is {smallest:.3g}; a verdict takes at least "
                         f"{seeds_for_a_verdict(len(tested))} seeds")
    return notes


def contributions(images, jobs_of: Sequence[tuple[Arm, list]], metric_ids: Sequence[str], higher: dict, *,
                  n_boot: int = 2000, seed: int = 0, asks_prompt: Collection[str] = ()):
    """The ranked contribution table from the per-image table (`report.image_table`). Metrics in
    `asks_prompt` score each image against its own prompt: their rows say that an arm without a clause is
    also asked another question (`ASKS_PROMPT_NOTE`)."""
    import numpy as np
    import pandas as pd

    from .stats import paired_compare

    by_key = images.set_index("key")
    frames = []
    for metric in metric_ids:
        col = f"m.{metric}"
        sign = 1.0 if higher.get(metric, True) else -1.0
        for base in dict.fromkeys(arm.base for arm, _ in jobs_of):
            rows = []
            for arm, jobs in jobs_of:
                if arm.base != base:
                    continue
                for job in jobs:
                    have = job.key in by_key.index and col in by_key.columns
                    rows.append({"key": job.key, "f.ablation": arm.label,
                                 # Seeds are the independent units of one prompt: each seed is a cluster, its
                                 # images at every setting, init image and negative prompt sharing its noise.
                                 "pair_seed": job.seed, "draw": job.meta.get("draw", 0),
                                 **{c: getattr(job, c) for c in CONDITIONS},
                                 col: float(by_key.at[job.key, col]) if have else math.nan,
                                 "healthy": bool(by_key.at[job.key, "healthy"]) if have else True})
            df = pd.DataFrame(rows)
            pair_on = ["pair_seed", "draw", *CONDITIONS]
            cmp = paired_compare(df, factor="f.ablation", metric=col, baseline=FULL, pair_on=pair_on,
                                 n_boot=n_boot, rng=np.random.default_rng(seed), higher_is_better=sign > 0,
                                 cluster_on=["pair_seed"])
            arm_of = {arm.label: arm for arm, _ in jobs_of if arm.base == base}
            shared = _shared_notes(cmp)
            out = []
            for r in cmp.rows:
                arm = arm_of[r.level]
                # full - without is the comparison's (without - full) negated; + 0.0 turns -0.0 into 0
                contribution, lo, hi = -r.mean_diff + 0.0, -r.ci_high + 0.0, -r.ci_low + 0.0
                # a verdict needs the interval clear of 0 and the Holm-adjusted test too: the percentile
                # interval of a few seeds is too narrow, and the signed-rank p says so (at least 0.125 on 4)
                clear = not math.isnan(lo) and r.p_holm < ALPHA
                if clear and sign * lo > 0 and sign * hi > 0:
                    verdict = "helps"
                elif clear and sign * lo < 0 and sign * hi < 0:
                    verdict = "hurts"
                else:
                    verdict = "unclear"
                out.append({"prompt": base, "metric": metric, "clause_index": arm.clause_index,
                            "clause": arm.clause, "contribution": contribution, "ci_low": lo, "ci_high": hi,
                            "verdict": verdict, "p_value": r.p_value, "p_holm": r.p_holm,
                            "full_win_rate": 1.0 - r.win_rate if not math.isnan(r.win_rate) else math.nan,
                            "mean_full": r.mean_baseline, "mean_without": r.mean_level, "n_pairs": r.n_pairs,
                            "n_seeds": r.n_clusters,
                            "note": "; ".join(filter(None, [r.note, *shared,
                                                            ASKS_PROMPT_NOTE if metric in asks_prompt else ""]))})
            out.sort(key=lambda d: (math.isnan(d["contribution"]), -sign * d["contribution"]
                                    if not math.isnan(d["contribution"]) else 0.0, d["clause_index"]))
            for i, d in enumerate(out, start=1):
                d["rank"] = i
            frames.append(pd.DataFrame(out, columns=COLUMNS))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
