"""experiment.toml -> a validated, frozen Experiment.

Validation collects every problem before failing, each naming the file, the
key, the value and what was expected; unknown keys get a "did you mean".
"""

from __future__ import annotations

import difflib
import glob
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MODES = ("txt2img", "img2img")
DTYPES = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
MEMORY = ("auto", "none", "attention_slicing", "vae_slicing", "vae_tiling", "model_cpu_offload",
          "sequential_cpu_offload")
WATERMARKS = ("none", "sdv1", "sdv2", "sdxl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ExperimentError(ValueError):
    def __init__(self, path: Path | str, problems: list[str]):
        self.path, self.problems = str(path), problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem{'s' * (len(problems) != 1)}:\n{lines}")


@dataclass(frozen=True)
class Randomize:
    seed: int = 0
    draws: int = 1
    strength: tuple[float, float] | None = None
    steps: tuple[int, int] | None = None
    guidance: tuple[float, float] | None = None


@dataclass(frozen=True)
class Stage:
    """A later stage: img2img from an earlier stage's outputs."""

    name: str
    source: str                       # name of the earlier stage ("main" for the base experiment)
    prompt: str
    negative_prompt: str | None
    strengths: tuple[float, ...]
    seeds: tuple[int, ...] | None
    steps: int | None
    top_k: int | None                 # None = all outputs
    metric: str | None                # needed with top_k


@dataclass(frozen=True)
class Experiment:
    path: Path
    name: str
    prompt: str                       # template text (file contents when given as @file)
    prompt_origin: str
    negative_prompt: str
    expand: str                       # "all" | "sample"
    sample: int | None
    prompt_seed: int
    seeds: tuple[int, ...]
    checkpoints: tuple[str, ...]
    modes: tuple[str, ...]
    scheduler: str
    steps: int
    guidance: float
    width: int
    height: int
    strengths: tuple[float, ...]
    init_images: tuple[Path, ...]
    batch_size: int | str
    dtype: str
    device: str
    memory: str | tuple[str, ...]
    watermark: str
    metrics: tuple[str, ...]
    exact: bool
    randomize: Randomize | None
    speedups: tuple[str, ...] = ()
    compare_metrics: tuple[str, ...] = ()  # metrics the report compares every factor on (default: one)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    stages: tuple[Stage, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)  # the TOML as read; [search] is validated by search.py

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def setting(self, checkpoint: str, name: str):
        """A per-checkpoint override if there is one, else the experiment's value."""
        return self.overrides.get(checkpoint, {}).get(name, getattr(self, name))


_TOP_KEYS = {
    "name", "prompt", "negative_prompt", "expand", "sample", "prompt_seed", "seeds", "checkpoints", "mode",
    "scheduler", "steps", "guidance", "width", "height", "strengths", "init_images", "batch_size", "dtype",
    "device", "memory", "watermark", "metrics", "exact", "randomize", "checkpoint", "stages", "search", "speedups",
    "compare_metrics",
}
_OVERRIDE_KEYS = {"width", "height", "scheduler", "dtype", "steps", "guidance"}
_RANDOM_KEYS = {"seed", "draws", "strength", "steps", "guidance"}
_STAGE_KEYS = {"name", "from", "prompt", "negative_prompt", "strengths", "seeds", "steps", "top_k", "metric"}


class _Checker:
    def __init__(self, path: Path):
        self.path, self.problems = path, []

    def bad(self, key: str, value: Any, expected: str) -> None:
        self.problems.append(f"key '{key}': got {value!r}, expected {expected}")

    def unknown(self, table: Mapping, allowed: set[str], prefix: str = "") -> None:
        for k in table:
            if k not in allowed:
                close = difflib.get_close_matches(k, sorted(allowed), n=1, cutoff=0.6)
                hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(allowed))}"
                self.problems.append(f"unknown key '{prefix}{k}'{hint}")

    def int_(self, d, key, default=None, lo=None, hi=None, prefix=""):
        v = d.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
            self.bad(prefix + key, v, f"an integer{rng}")
            return default
        return v

    def num(self, d, key, default=None, lo=None, hi=None, prefix=""):
        v = d.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
            self.bad(prefix + key, v, f"a number{rng}")
            return default
        return float(v)

    def choice(self, d, key, default, choices, prefix=""):
        v = d.get(key, default)
        if v not in choices:
            self.bad(prefix + key, v, "one of " + ", ".join(repr(c) for c in choices))
            return default
        return v

    def str_(self, d, key, default=None, prefix="", nonempty=False):
        v = d.get(key, default)
        if v is None:
            return None
        if not isinstance(v, str) or (nonempty and not v.strip()):
            self.bad(prefix + key, v, "a non-empty string" if nonempty else "a string")
            return default
        return v

    def range_(self, d, key, kind, lo, hi, prefix=""):
        v = d.get(key)
        if v is None:
            return None
        ok = (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          for x in v))
        if ok and kind is int:
            ok = all(isinstance(x, int) for x in v)
        if not ok or not (lo <= v[0] <= v[1] <= hi):
            self.bad(prefix + key, v, f"[low, high] with {lo} <= low <= high <= {hi}"
                     + (" (integers)" if kind is int else ""))
            return None
        return (kind(v[0]), kind(v[1]))


def load_experiment(path: Path | str) -> Experiment:
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(path, ["file not found"])
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ExperimentError(path, [f"not valid TOML: {e}"]) from None
    return experiment_from_dict(raw, path)


def experiment_from_dict(raw: Mapping[str, Any], path: Path) -> Experiment:
    c = _Checker(path)
    c.unknown(raw, _TOP_KEYS)
    base = path.parent

    name = c.str_(raw, "name", path.stem, nonempty=True)
    if name and any(ch in name for ch in "/\\") or name in (".", ".."):
        c.bad("name", name, "a folder name without slashes")
    prompt_raw = c.str_(raw, "prompt", None, nonempty=True)
    prompt, origin = "", str(path)
    if prompt_raw is None:
        c.problems.append("key 'prompt': missing; expected a template string or '@file'")
    elif prompt_raw.startswith("@"):
        pfile = (base / prompt_raw[1:]).resolve()
        if pfile.is_file():
            prompt, origin = pfile.read_text(encoding="utf-8").rstrip("\n"), str(pfile)
        else:
            c.bad("prompt", prompt_raw, f"an existing template file (looked for {pfile})")
    else:
        prompt = prompt_raw
    negative = c.str_(raw, "negative_prompt", "")

    expand = c.choice(raw, "expand", "all", ("all", "sample"))
    sample = c.int_(raw, "sample", None, lo=1)
    if expand == "sample" and sample is None:
        c.problems.append("key 'sample': missing; expand = \"sample\" needs sample = N (how many prompts)")
    if expand == "all" and sample is not None:
        c.problems.append("key 'sample': set but expand is \"all\"; set expand = \"sample\" or drop sample")
    prompt_seed = c.int_(raw, "prompt_seed", 0, lo=0)

    seeds = _seeds(c, raw.get("seeds", [0]))
    checkpoints = raw.get("checkpoints", ["tiny"])
    if isinstance(checkpoints, str):
        checkpoints = [checkpoints]
    if not (isinstance(checkpoints, list) and checkpoints and all(isinstance(x, str) and x for x in checkpoints)):
        c.bad("checkpoints", checkpoints, "a non-empty list of checkpoint names, hub ids or paths")
        checkpoints = ["tiny"]
    elif len(set(checkpoints)) != len(checkpoints):
        c.bad("checkpoints", checkpoints, "each checkpoint listed once")

    modes = raw.get("mode", "txt2img")
    modes = [modes] if isinstance(modes, str) else modes
    if not (isinstance(modes, list) and modes and all(m in MODES for m in modes)):
        c.bad("mode", raw.get("mode"), "'txt2img', 'img2img' or a list of both")
        modes = ["txt2img"]

    scheduler = c.str_(raw, "scheduler", "ddim", nonempty=True)
    steps = c.int_(raw, "steps", 20, lo=1, hi=1000)
    guidance = c.num(raw, "guidance", 7.5, lo=0, hi=100)
    width = c.int_(raw, "width", 512, lo=64, hi=4096)
    height = c.int_(raw, "height", 512, lo=64, hi=4096)
    for key, v in (("width", width), ("height", height)):
        if v and v % 8:
            c.bad(key, v, "a multiple of 8 (the VAE downsamples by 8)")

    strengths = raw.get("strengths", [0.75] if "img2img" in modes else [])
    if not (isinstance(strengths, list) and all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                                and 0 < s <= 1 for s in strengths)):
        c.bad("strengths", strengths, "a list of numbers in (0, 1]")
        strengths = []
    init_images = _init_images(c, raw.get("init_images"), base) if "img2img" in modes else ()
    if "img2img" in modes and not strengths:
        c.problems.append("key 'strengths': img2img needs at least one strength in (0, 1]")
    if "img2img" not in modes and raw.get("init_images"):
        c.problems.append("key 'init_images': set but mode has no 'img2img'")

    batch_size = raw.get("batch_size", "auto")
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        c.bad("batch_size", batch_size, "'auto' or an integer >= 1")
        batch_size = "auto"
    dtype = c.choice(raw, "dtype", "auto", DTYPES)
    device = c.choice(raw, "device", "auto", DEVICES)
    memory = raw.get("memory", "auto")
    if isinstance(memory, list):
        if not all(m in MEMORY[2:] for m in memory):
            c.bad("memory", memory, "'auto', 'none' or a list of " + ", ".join(MEMORY[2:]))
        memory = tuple(memory)
    elif memory not in ("auto", "none"):
        c.bad("memory", memory, "'auto', 'none' or a list of " + ", ".join(MEMORY[2:]))
        memory = "auto"
    watermark = c.choice(raw, "watermark", "none", WATERMARKS)
    metrics = raw.get("metrics", [])
    if not (isinstance(metrics, list) and all(isinstance(m, str) and m for m in metrics)):
        c.bad("metrics", metrics, "a list of metric names such as \"clip_score\"")
        metrics = []
    compare_metrics = raw.get("compare_metrics", [])
    if not (isinstance(compare_metrics, list) and all(m in metrics for m in compare_metrics)):
        c.bad("compare_metrics", compare_metrics, "a list of entries of `metrics` (written the same way)")
        compare_metrics = []
    speedups = raw.get("speedups", [])
    if not (isinstance(speedups, list) and all(x in ("channels_last", "compile") for x in speedups)):
        c.bad("speedups", speedups, "a list of 'channels_last', 'compile'")
        speedups = []
    exact = raw.get("exact", False)
    if not isinstance(exact, bool):
        c.bad("exact", exact, "true or false")
        exact = False

    randomize = None
    if "randomize" in raw:
        r = raw["randomize"]
        if not isinstance(r, dict):
            c.bad("randomize", r, "a table")
        else:
            c.unknown(r, _RANDOM_KEYS, "randomize.")
            randomize = Randomize(
                seed=c.int_(r, "seed", 0, lo=0, prefix="randomize."),
                draws=c.int_(r, "draws", 1, lo=1, prefix="randomize."),
                strength=c.range_(r, "strength", float, 0.01, 1.0, prefix="randomize."),
                steps=c.range_(r, "steps", int, 1, 1000, prefix="randomize."),
                guidance=c.range_(r, "guidance", float, 0.0, 100.0, prefix="randomize."),
            )
            if randomize.strength and "img2img" not in modes:
                c.problems.append("key 'randomize.strength': set but mode has no 'img2img'")

    overrides: dict[str, dict] = {}
    for ck, table in (raw.get("checkpoint") or {}).items():
        prefix = f"checkpoint.{ck}."
        if ck not in checkpoints:
            close = difflib.get_close_matches(ck, checkpoints, n=1)
            c.problems.append(f"table '[checkpoint.{ck}]': '{ck}' is not in checkpoints"
                              + (f"; did you mean '{close[0]}'?" if close else f" ({', '.join(checkpoints)})"))
            continue
        if not isinstance(table, dict):
            c.bad(f"checkpoint.{ck}", table, "a table of overrides")
            continue
        c.unknown(table, _OVERRIDE_KEYS, prefix)
        o: dict[str, Any] = {}
        for key in ("width", "height"):
            if key in table:
                o[key] = c.int_(table, key, None, lo=64, hi=4096, prefix=prefix)
                if o[key] and o[key] % 8:
                    c.bad(prefix + key, o[key], "a multiple of 8")
        if "steps" in table:
            o["steps"] = c.int_(table, "steps", None, lo=1, hi=1000, prefix=prefix)
        if "guidance" in table:
            o["guidance"] = c.num(table, "guidance", None, lo=0, hi=100, prefix=prefix)
        if "scheduler" in table:
            o["scheduler"] = c.str_(table, "scheduler", None, prefix=prefix, nonempty=True)
        if "dtype" in table:
            o["dtype"] = c.choice(table, "dtype", "auto", DTYPES, prefix=prefix)
        overrides[ck] = o

    stages = _stages(c, raw.get("stages", []))
    _check_template(c, "prompt", prompt, origin)
    if negative:
        _check_template(c, "negative_prompt", negative, f"{path} (negative_prompt)")

    if c.problems:
        raise ExperimentError(path, c.problems)
    return Experiment(
        path=path.resolve(), name=name, prompt=prompt, prompt_origin=origin, negative_prompt=negative,
        expand=expand, sample=sample, prompt_seed=prompt_seed, seeds=tuple(seeds),
        checkpoints=tuple(checkpoints), modes=tuple(modes), scheduler=scheduler, steps=steps,
        guidance=guidance, width=width, height=height, strengths=tuple(float(s) for s in strengths),
        init_images=tuple(init_images), batch_size=batch_size, dtype=dtype, device=device, memory=memory,
        watermark=watermark, metrics=tuple(metrics), exact=exact, randomize=randomize, speedups=tuple(speedups),
        compare_metrics=tuple(compare_metrics), overrides=overrides,
        stages=stages, raw=dict(raw),
    )


def _check_template(c: _Checker, key: str, text: str, origin: str) -> None:
    """Syntax only; wildcards are resolved when the plan is built."""
    from .grammar import GrammarError, parse
    if not text:
        return
    try:
        parse(text, origin=origin)
    except GrammarError as e:
        where = (f"{e.origin}:{e.line}:{e.column}" if origin != str(c.path) and not origin.startswith(f"{c.path} (")
                 else f"line {e.line}, column {e.column} of the template")
        c.problems.append(f"key '{key}': template error at {where}: {e.message}\n"
                          f"      {e.line_text}\n      {' ' * (e.column - 1)}^")


def _seeds(c: _Checker, v) -> list[int]:
    if isinstance(v, dict):
        c.unknown(v, {"count", "start"}, "seeds.")
        count = c.int_(v, "count", None, lo=1, prefix="seeds.")
        start = c.int_(v, "start", 0, lo=0, prefix="seeds.")
        if count is None:
            c.problems.append("key 'seeds.count': missing; expected seeds = { count = N, start = S }")
            return [0]
        return list(range(start, start + count))
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not (isinstance(v, list) and v and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63
                                              for s in v)):
        c.bad("seeds", v, "a list of integers >= 0, or { count = N, start = S }")
        return [0]
    if len(set(v)) != len(v):
        c.bad("seeds", v, "distinct seeds")
    return v


def _init_images(c: _Checker, v, base: Path) -> list[Path]:
    if v is None:
        c.problems.append("key 'init_images': missing; img2img needs a file, folder, glob or list of them")
        return []
    entries = [v] if isinstance(v, str) else v
    if not (isinstance(entries, list) and all(isinstance(e, str) for e in entries)):
        c.bad("init_images", v, "a path, folder, glob or a list of them")
        return []
    found: list[Path] = []
    for entry in entries:
        p = base / entry
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in entry for ch in "*?["):
            files = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).suffix.lower() in IMAGE_SUFFIXES)
        else:
            files = [p] if p.is_file() else []
        if not files:
            c.bad("init_images", entry, f"an image file, folder or glob that matches images (looked in {p})")
        found.extend(f.resolve() for f in files if f.resolve() not in found)
    return found


def _stages(c: _Checker, v) -> tuple[Stage, ...]:
    if not isinstance(v, list) or not all(isinstance(s, dict) for s in v):
        c.bad("stages", v, "an array of tables ([[stages]])")
        return ()
    out: list[Stage] = []
    names = {"main"}
    for i, s in enumerate(v):
        prefix = f"stages[{i}]."
        c.unknown(s, _STAGE_KEYS, prefix)
        name = c.str_(s, "name", f"stage{i + 2}", prefix=prefix, nonempty=True)
        source = c.str_(s, "from", out[-1].name if out else "main", prefix=prefix, nonempty=True)
        if source not in names:
            c.bad(prefix + "from", source, "an earlier stage: " + ", ".join(sorted(names)))
        prompt = c.str_(s, "prompt", None, prefix=prefix, nonempty=True)
        if prompt is None:
            c.problems.append(f"key '{prefix}prompt': missing; expected the stage's prompt template")
        strengths = s.get("strengths", [0.5])
        if not (isinstance(strengths, list) and strengths and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 1 for x in strengths)):
            c.bad(prefix + "strengths", strengths, "a non-empty list of numbers in (0, 1]")
            strengths = [0.5]
        seeds = tuple(_seeds(c, s["seeds"])) if "seeds" in s else None
        top_k = c.int_(s, "top_k", None, lo=1, prefix=prefix)
        metric = c.str_(s, "metric", None, prefix=prefix, nonempty=True)
        if top_k is not None and metric is None:
            c.problems.append(f"key '{prefix}metric': missing; top_k needs the metric to rank by")
        if name in names:
            c.bad(prefix + "name", name, "a name not used by another stage")
        names.add(name)
        out.append(Stage(name, source, prompt or "", c.str_(s, "negative_prompt", None, prefix=prefix),
                         tuple(float(x) for x in strengths), seeds,
                         c.int_(s, "steps", None, lo=1, hi=1000, prefix=prefix), top_k, metric))
    return tuple(out)
