"""The nested parts of an experiment file, each checked into a frozen value: seed lists, init
images, [randomize], [checkpoint.NAME] overrides and [[stages]], plus the template and img2img
step checks they share. Problems go to the caller's `Checker`, so one error lists them all."""

from __future__ import annotations

import difflib
import glob
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .checks import Checker
from .grammar import GrammarError

DTYPES = ("auto", "fp32", "fp16", "bf16")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SEED_LIMIT = 2**63  # seeds are stored as SQLite INTEGER (signed 64 bit)
PARENT_TOKEN = "__parent__"  # in a stage prompt: the parent image's prompt
_OVERRIDE_KEYS = {"width", "height", "scheduler", "dtype", "steps", "guidance", "config"}
_RANDOM_KEYS = {"seed", "draws", "strength", "steps", "guidance"}
_STAGE_KEYS = {"name", "from", "prompt", "negative_prompt", "strengths", "seeds", "steps", "top_k", "metric"}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # a TOML key that needs no quotes

@dataclass(frozen=True)
class Randomize:
    seed: int = 0
    draws: int = 1
    strength: tuple[float, float] | None = None
    steps: tuple[int, int] | None = None
    guidance: tuple[float, float] | None = None

    def settings_count(self, mode: str, fixed_steps: Iterable[int] = ()) -> int:
        """How many settings that make different images the ranges give a job of `mode` (strengths to 0.01,
        steps whole, guidance to 0.1, as drawn; txt2img has no strength): strengths count by the denoising
        steps they run at each of `fixed_steps` (where steps are not drawn: the count is the fewest any of those
        steps gives, so every checkpoint gets `draws` images) and guidance at or below 1, which runs no
        guidance, counts once (:func:`draw_signature`); 1 when none is drawn."""
        strengths = _grid(self.strength, 2) if self.strength and mode == "img2img" else [None]
        steps = range(self.steps[0], self.steps[1] + 1) if self.steps else [None]
        guidance = _grid(self.guidance, 1) if self.guidance else [None]
        made = min((len({draw_signature({"strength": s, "steps": n, "guidance": None}, mode, at)
                         for s in strengths for n in steps})
                    for at in ([(n,) for n in sorted(set(fixed_steps))] or [()])))  # the fewest any checkpoint gets
        return made * len({g if g is None or g > 1 else "no guidance" for g in guidance})


def _grid(span: tuple[float, float], places: int) -> list[float]:
    """The values a uniform draw from `span` rounded to `places` can take ([0.305, 0.306] gives 0.31 only)."""
    lo, hi = (round(v * 10 ** places, 9) for v in span)
    first, last = math.floor(lo + 0.5), (math.ceil(hi + 0.5) - 1 if hi > lo else math.floor(lo + 0.5))
    return [k / 10 ** places for k in range(first, last + 1)]


def draw_signature(params: dict, mode: str, fixed_steps: tuple[int, ...]) -> tuple:
    """What of a `[randomize]` draw changes pixels for a job of `mode`: the steps; an img2img strength only by
    the int(strength * steps) denoising steps it runs, at the drawn steps or else at each of `fixed_steps`;
    a guidance at or below 1 not at all beyond running no guidance. Draws alike here make one image."""
    steps = params.get("steps")
    out: list = [steps]
    if params.get("strength") is not None and mode == "img2img":
        at = (steps,) if steps else fixed_steps
        out.append(tuple(int(params["strength"] * n) for n in at) if at else params["strength"])
    g = params.get("guidance")
    out.append(g if g is None or g > 1 else "no guidance")
    return tuple(out)




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


def randomize_table(c: Checker, r, modes, fixed_steps: Iterable[int] = ()) -> Randomize | None:
    """[randomize]: settings drawn per prompt from ranges, reproducibly from its seed."""
    if not isinstance(r, dict):
        c.bad("randomize", r, "a table")
        return None
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
    counts = {mode: randomize.settings_count(mode, fixed_steps) for mode in modes}
    counted = ("strengths to 0.01, steps whole, guidance to 0.1; strengths that run the same int(strength * "
               "steps) denoising steps count once, as does guidance at or below 1, which runs no guidance")
    if max(counts.values(), default=1) == 1 < (randomize.draws or 1):  # no range at all, or none wide
        c.problems.append(f"key 'randomize.draws': got {randomize.draws}, but the ranges give every image only one "
                          f"setting ({counted}); expected draws = 1, or wider ranges")
    for mode, n in counts.items():  # a mode with one setting beside a wider one (txt2img has no strength)
        if 1 < n < (randomize.draws or 1):
            c.problems.append(f"key 'randomize.draws': got {randomize.draws}, but the ranges give {mode} images only "
                              f"{n} different settings ({counted}); expected at most {n}, or wider ranges")
    return randomize


def toml_key(name: str) -> str:
    """`name` as a TOML key: bare where it can be, else a quoted string (a path checkpoint, `"./tiny-ft"`), so
    a problem that names `[checkpoint.NAME]` or `checkpoint.NAME.key` shows TOML that can be pasted back."""
    if _BARE_KEY.fullmatch(name):
        return name
    escaped = "".join(f"\\u{ord(ch):04X}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch
                      for ch in name.replace("\\", "\\\\").replace('"', '\\"'))
    return f'"{escaped}"'


def checkpoint_tables(c: Checker, per_checkpoint, checkpoints: list[str]):
    """The [checkpoint.NAME] tables by name. A listed file name written bare, `[checkpoint.tiny.safetensors]`,
    is read by TOML as tables nested at its dots: it is reported with the quoting that names it, and read as
    that name, so that the other checks speak of it and not of a checkpoint `tiny`."""
    if not isinstance(per_checkpoint, dict):
        return per_checkpoint
    out, nested = {}, {}
    for ck, table in per_checkpoint.items():
        rest = _pull_nested(ck, table, checkpoints, nested) if isinstance(table, dict) else table
        if rest or ck in checkpoints or not table:
            out[ck] = rest
    for name, table in nested.items():
        c.problems.append(f"table '[checkpoint.{name}]': TOML reads the dots of {name!r} as tables nested in each "
                          f"other; quote the name: [checkpoint.{toml_key(name)}]")
        out.setdefault(name, table)
    return out


def _pull_nested(prefix: str, table: dict, checkpoints: list[str], nested: dict) -> dict:
    """`table` less the tables nested in it along the dots of a listed checkpoint's name, which go to
    `nested` under that name."""
    rest = {}
    for key, value in table.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict) and name in checkpoints:
            nested[name] = value
        elif isinstance(value, dict) and any(ck.startswith(name + ".") for ck in checkpoints):
            if inner := _pull_nested(name, value, checkpoints, nested):
                rest[key] = inner
        else:
            rest[key] = value
    return rest


def checkpoint_overrides(c: Checker, per_checkpoint, checkpoints, base: Path) -> dict[str, dict[str, Any]]:
    """[checkpoint.NAME] tables: settings that differ for one checkpoint (its native size, say), and the
    diffusers config a single-file checkpoint is built with (`config`, checked with the checkpoint)."""
    overrides: dict[str, dict] = {}
    if not isinstance(per_checkpoint, dict):
        c.bad("checkpoint", per_checkpoint, "tables of per-checkpoint overrides such as [checkpoint.tiny] "
                                            "(the list of checkpoints is the key 'checkpoints')")
        per_checkpoint = {}
    for ck, table in per_checkpoint.items():
        prefix = f"checkpoint.{toml_key(ck)}."
        if ck not in checkpoints:  # reported, and the table is still checked: every problem at once
            close = difflib.get_close_matches(ck, checkpoints, n=1)
            c.problems.append(f"table '[checkpoint.{toml_key(ck)}]': '{ck}' is not in checkpoints"
                              + (f"; did you mean '{close[0]}'?" if close else f" ({', '.join(checkpoints)})"))
        if not isinstance(table, dict):
            c.bad(f"checkpoint.{toml_key(ck)}", table, "a table of overrides")
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
            o["scheduler"] = c.scheduler(table, None, prefix=prefix)
        if "dtype" in table:
            o["dtype"] = c.choice(table, "dtype", "auto", DTYPES, prefix=prefix)
        if "config" in table and c.str_(table, "config", None, prefix=prefix, nonempty=True) and ck in checkpoints:
            from .checkpoints import CheckpointError, check_buildable, locate

            try:
                loc = locate(ck, base_dir=base, config=table["config"])
                check_buildable(ck, loc)
                o["config"] = loc.config
            except CheckpointError as e:
                c.problems.append(f"key '{prefix}config': {e}")
        if ck in checkpoints:
            overrides[ck] = o
    return overrides


def check_checkpoints(c: Checker, given, base: Path, per_checkpoint) -> None:
    """Each checkpoint spec checked as far as it can be without building, hashing or loading weights
    (`checkpoints.locate`: names, aliases, paths from `base`, hub snapshots, folder layouts, the configs a
    single file is built with), so a misspelt checkpoint is reported with the file's other problems, with
    a "did you mean". A checkpoint with a `[checkpoint.NAME] config` is checked with it there."""
    from .checkpoints import CheckpointError, check_buildable, locate

    specs = [given] if isinstance(given, str) else given
    for i, spec in enumerate(specs):
        if not (isinstance(spec, str) and spec):
            continue  # named by the caller as an entry of the wrong type
        table = per_checkpoint.get(spec) if isinstance(per_checkpoint, dict) else None
        if isinstance(table, dict) and "config" in table:
            continue
        try:
            check_buildable(spec, locate(spec, base_dir=base))
        except CheckpointError as e:
            c.problems.append(f"key '{'checkpoints' if isinstance(given, str) else f'checkpoints[{i}]'}': {e}")


def check_trained_schedules(c: Checker, checkpoints: list[str], overrides: dict[str, dict[str, Any]],
                            scheduler: str, base: Path) -> None:
    """Each checkpoint's scheduler (its [checkpoint.NAME] one, else the experiment's) can follow the noise
    schedule the checkpoint was trained on (`schedulers.check_trained_schedule`), so a zero-terminal-SNR
    fine-tune paired with a scheduler that would drop it fails here, not when its pipeline loads."""
    from .checkpoints import CheckpointError, locate, scheduler_config
    from .schedulers import SCHEDULERS, trained_schedule_problem

    for ck in checkpoints:
        own = overrides.get(ck, {})
        name = own.get("scheduler") or scheduler
        try:
            config = scheduler_config(locate(ck, base_dir=base, config=own.get("config")))
        except CheckpointError:
            continue  # reported by check_checkpoints
        problem = name in SCHEDULERS and trained_schedule_problem(SCHEDULERS[name], config, ck)
        if problem:
            key = f"checkpoint.{toml_key(ck)}.scheduler" if own.get("scheduler") else "scheduler"
            c.problems.append(f"key '{key}': {problem}")


def check_watermark_size(c: Checker, watermark: str, width: int | None, height: int | None,
                         checkpoints: list[str], overrides: dict[str, dict[str, Any]]) -> None:
    """The watermark codec needs images of at least 256x256 pixels in area, with an 8x8 block per message
    bit (`watermark_codec.size_problem`): every size the experiment makes is checked (its own and each
    [checkpoint.NAME] override), so a small run fails here, not at its first image."""
    from .metrics.watermark import resolve_message, size_problem

    n_bits = len(resolve_message(watermark).bits)

    own_size_used = any(not (overrides.get(ck, {}).get("width") and overrides[ck].get("height")) for ck in checkpoints)
    sizes = {"width/height": (width, height)} if own_size_used else {}
    sizes.update({f"checkpoint.{toml_key(ck)}.width/height": (o.get("width") or width, o.get("height") or height)
                  for ck, o in overrides.items() if o.get("width") or o.get("height")})
    for where, (w, h) in sizes.items():
        problem = size_problem(h, w, n_bits) if w and h else None
        if problem:
            c.problems.append(f"key 'watermark': {watermark!r} cannot be embedded in the {w}x{h} images key "
                              f"'{where}' makes ({problem}); set watermark = \"none\" or a larger size")


def check_template(c: Checker, key: str, text: str, origin: str, shown: str | None = None,
                   library=None):
    """The template's syntax, and with a wildcard `library` its wildcards (unknown, empty, cyclic) and
    choose-k counts too; the compiled template (None without a library, or when it has errors). `shown`:
    the text as written, when `text` stands in for it (same length, so line and column are the same)."""
    from .expand import compile_template
    from .grammar import Loc, parse
    if not text:
        return None
    try:
        if library is None:
            parse(text, origin=origin)
            return None
        return compile_template(text, library=library, origin=origin)
    except GrammarError as error:
        inline = origin == str(c.path) or origin.startswith(f"{c.path} (")  # written in the experiment file
        lines = (shown or "").splitlines() or [""]
        for e in (error, *error.also):  # every problem, each where it is (a wildcard file's own)
            own = e.origin == origin
            where = (f"line {e.line}, column {e.column} of the template{_written_at(c.path, key)}"
                     if inline and own else f"{e.origin}:{e.line}:{e.column}")
            line_text = lines[min(e.line, len(lines)) - 1] if shown is not None and own else e.line_text
            # the line and its caret as GrammarError draws them (tabs kept, the whole span underlined)
            drawn = GrammarError("", Loc(e.origin, line_text, e.column - 1, e.line), length=e.length)
            under = "".join(f"\n    {row}" for row in str(drawn).split("\n")[1:])
            c.problems.append(f"key '{key}': template error at {where}: {e.message}{under}")




def _check_stage_factors(c: Checker, key: str, own, inherited, source: str, stage: str | None = None) -> None:
    """A stage image carries its parent's factors and its own templates': one name for both would overwrite
    the parent's level in every table. `stage` (the stage's name) is named for a negative prompt's clash,
    whose factor the tables call `negative:<name>`."""
    clash = [f for f in own if f in inherited]
    if not clash:
        return
    names = ", ".join(map(repr, clash))
    if stage is None:
        c.problems.append(f"key '{key}': factor {names} is also a factor of the images it "
                          f"starts from (stage {source}), whose level it would overwrite; name the stage's "
                          "alternation apart, e.g. {@light: golden|silver}")
        return
    columns = ", ".join(f"f.negative:{f}" for f in clash)
    c.problems.append(f"key '{key}' (stage {stage!r}): negative-prompt factor {names} is also a negative-prompt "
                      f"factor of the images it starts from (stage {source}; column {columns}), whose level it "
                      "would overwrite; name the stage's alternation apart, e.g. {@stage_negative: dark|light}, "
                      "or leave negative_prompt out to keep each parent's negative prompt")


def _check_no_parent_token(c: Checker, key: str, negative: str) -> None:
    """`__parent__` stands for the parent image's prompt in a stage's prompt only: in a negative prompt the
    parent's prompt would be negated, and the parent's negative prompt is what a stage without
    `negative_prompt` keeps already, so it is refused here rather than read as an unknown wildcard when planning."""
    at = negative.find(PARENT_TOKEN)
    if at < 0:
        return
    line, column = negative.count("\n", 0, at) + 1, at - negative.rfind("\n", 0, at)
    c.problems.append(f"key '{key}': {PARENT_TOKEN} at line {line}, column {column} of the template: "
                      f"{PARENT_TOKEN} stands for the parent image's prompt in a "
                      "stage's prompt only; leave negative_prompt out to make each image with its parent's "
                      "negative prompt, or write the negative prompt out in full")


def negative_origin(stage: Stage, stages) -> Stage | None:
    """The stage whose own `negative_prompt` the images of `stage` are made with: `stage` itself when it
    sets one, else (a child keeps its parent's concrete negative prompt) its source's, up to the experiment
    (None: the experiment's `negative_prompt`)."""
    by_name = {s.name: s for s in stages}
    seen = set()
    while stage is not None and stage.negative_prompt is None and stage.name not in seen:
        seen.add(stage.name)
        stage = by_name.get(stage.source)
    return stage


def _written_at(path: Path, key: str) -> str:
    """' (written on line N of the file)' for a top-level key of the experiment file, '' otherwise. A line
    that looks like `key = ...` is the key's where TOML itself reads a top-level key from it (renamed, it
    parses to a top-level key of the new name): not a line of a multi-line string (a prompt line such as
    `[masterpiece], a cat`) nor a key of a table."""
    import tomllib

    try:
        text = path.read_text(encoding="utf-8-sig")  # as the experiment is read: a byte-order mark dropped
    except (OSError, UnicodeDecodeError):
        return ""
    lines = text.split("\n")
    head = re.compile(rf"""(\s*)(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')(\s*=)""")
    probe = "__written_here__"
    for n, line in enumerate(lines):
        if not (m := head.match(line)):
            continue
        renamed = "\n".join([*lines[:n], m.group(1) + probe + m.group(2) + line[m.end():], *lines[n + 1:]])
        try:
            if probe in tomllib.loads(renamed):
                return f" (written on line {n + 1} of the file)"
        except tomllib.TOMLDecodeError:
            continue
    return ""


def seed_list(c: Checker, v, prefix: str = "") -> list[int]:
    key = prefix + "seeds"
    if isinstance(v, dict):
        c.unknown(v, {"count", "start"}, key + ".")
        count = c.int_(v, "count", None, lo=1, hi=1_000_000, prefix=key + ".")
        start = c.int_(v, "start", 0, lo=0, prefix=key + ".")
        if count is None:
            if "count" not in v:
                c.problems.append(f"key '{key}.count': missing; expected {key} = {{ count = N, start = S }}")
            return [0]
        if start + count > SEED_LIMIT:
            c.bad(key + ".start", start, f"start + count <= 2**63 ({SEED_LIMIT})")
            return [0]
        return list(range(start, start + count))
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not (isinstance(v, list) and v and all(isinstance(s, int) and not isinstance(s, bool)
                                              and 0 <= s < SEED_LIMIT for s in v)):
        c.bad(key, v, "a list of integers in [0, 2**63), or { count = N, start = S }")
        return [0]
    if len(set(v)) != len(v):
        c.bad(key, v, "distinct seeds")
    return v


def check_denoising(c: Checker, key: str, strengths, steps_values, *, fixed_steps: bool = True) -> None:
    """img2img runs int(strength * steps) denoising steps: zero is an error from the pipeline mid-run, and two
    strengths that run the same count at fixed steps make identical images under two names (a comparison of
    nothing; where `[randomize]` draws the steps, only some draws do, and the run makes such images once)."""
    for steps in sorted(v for v in steps_values if v):
        for strength in strengths:
            if int(strength * steps) < 1:
                c.problems.append(
                    f"key '{key}': strength {strength:g} with steps = {steps} runs int({strength:g} * {steps}) = 0 "
                    f"denoising steps; img2img needs strength * steps >= 1 (steps >= {math.ceil(1 / strength)} "
                    f"at this strength, or strength >= {math.ceil(1000 / steps) / 1000:g})")
                return
        by_count: dict[int, list[float]] = {}
        for strength in strengths:
            by_count.setdefault(int(strength * steps), []).append(strength)
        alike = [group for group in by_count.values() if len(group) > 1] if fixed_steps else []
        if alike:
            a, b = sorted(alike[0])[:2]
            apart = next((n for n in range(steps + 1, 10_001) if int(a * n) != int(b * n)), None)
            more = f"steps = {apart} tells them apart, or " if apart else ""
            c.problems.append(
                f"key '{key}': strengths {a:g} and {b:g} with steps = {steps} both run {int(a * steps)} denoising "
                f"steps (img2img runs int(strength * steps)), so their images would be identical; {more}drop one")
            return


def check_negative_is_read(c: Checker, negative: str, guidance: float, checkpoints, overrides, randomize,
                           stages) -> None:
    """At guidance <= 1 diffusers runs no classifier-free guidance and never reads the negative prompt, so a
    negative prompt (or a factor in it) would change the keys and not one pixel. The experiment's images
    take `[randomize] guidance` (drawn to 0.1) when it is set; later stages take the fixed guidance."""
    fixed = {ck: overrides.get(ck, {}).get("guidance", guidance) for ck in checkpoints}
    if not all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in fixed.values()):
        return  # a guidance that is not a usable number is named where it is read
    fixed_where = (f"key 'guidance' is {guidance:g}" if all(g == guidance for g in fixed.values())
                   else "the checkpoints' guidance is " + ", ".join(f"{ck} {g:g}" for ck, g in fixed.items()))

    def unread(key: str, highest: float, where: str) -> None:
        if highest <= 1:
            c.problems.append(f"key '{key}': {where}, and at guidance <= 1 no classifier-free guidance runs, so "
                              "the negative prompt is never read and would change no pixel; raise guidance above "
                              "1 or leave the negative prompt out")

    if negative and randomize is not None and randomize.guidance:
        top = round(randomize.guidance[1], 1)
        unread("negative_prompt", top, f"key 'randomize.guidance' draws at most {top:g}")
    elif negative:
        unread("negative_prompt", max(fixed.values()), fixed_where)
    for i, stage in enumerate(stages):
        if stage.negative_prompt:
            unread(f"stages[{i}].negative_prompt", max(fixed.values()), fixed_where)
        elif (stage.negative_prompt is None and negative and randomize is not None and randomize.guidance
              and negative_origin(stage, stages) is None):
            unread(f"stages[{i}].negative_prompt", max(fixed.values()), "not set, so the stage takes the "
                   f"experiment's negative prompt with the fixed guidance, not [randomize]'s ({fixed_where}; "
                   "negative_prompt = \"\" leaves it out)")


def init_images_from(c: Checker, v, base: Path) -> list[Path]:
    if v is None:
        c.problems.append("key 'init_images': missing; img2img needs a file, folder, glob or list of them")
        return []
    entries = [v] if isinstance(v, str) else v
    if not (isinstance(entries, list) and entries and all(isinstance(e, str) and e.strip() for e in entries)):
        c.bad("init_images", v, "a path, folder, glob or a non-empty list of them (an empty one would make no "
              "img2img image)")
        return []
    found: list[Path] = []
    for entry in entries:
        p = base / entry
        expected = f"an image file, folder or glob that matches images (looked in {p})"
        with c.reading("init_images", entry, expected):
            if p.is_dir():
                files = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            elif any(ch in entry for ch in "*?["):
                files = sorted(Path(q) for q in glob.glob(str(p), recursive=True)
                               if Path(q).suffix.lower() in IMAGE_SUFFIXES)
            else:
                files = [p] if p.is_file() else []
            if not files:
                c.bad("init_images", entry, expected)
            found.extend(f.resolve() for f in files if f.resolve() not in found)
    return found


def pinned_weights(spec: str, base: Path) -> str:
    """A metric spec whose `pretrained=` names weights on disk, with that path made absolute from `base`
    (the experiment's folder, as for every relative path of an experiment); other specs as written."""
    from .metrics.clip_models import absolute_weights, is_weights_path
    from .metrics.spec import format_metric_spec, parse_metric_spec

    try:
        name, options = parse_metric_spec(spec)
    except ValueError:  # reported by the metric check
        return spec
    if not is_weights_path(options.get("pretrained", ""), base):
        return spec
    return format_metric_spec(name, {**options, "pretrained": absolute_weights(options["pretrained"], base)})


def stage_tables(c: Checker, v, base: Path, library=None, main_factors: tuple[str, ...] = (),
                 main_negative_factors: tuple[str, ...] = ()) -> tuple[Stage, ...]:
    """The `[[stages]]` tables; with a wildcard `library`, their templates' wildcards are checked too, and
    their factors against those of the prompts their images start from (`main_factors`: the experiment
    prompt's; `main_negative_factors`: its negative prompt's, unprefixed); `base` is the experiment's
    folder (a metric's weights path starts there)."""
    if not isinstance(v, list) or not all(isinstance(s, dict) for s in v):
        c.bad("stages", v, "an array of tables ([[stages]])")
        return ()
    out: list[Stage] = []
    names = {"main"}
    factors = {"main": tuple(main_factors)}  # stage -> the prompt factors its images carry
    negative_factors = {"main": tuple(main_negative_factors)}  # stage -> the negative-prompt factors they carry
    for i, s in enumerate(v):
        prefix = f"stages[{i}]."
        c.unknown(s, _STAGE_KEYS, prefix)
        name = c.str_(s, "name", f"stage{i + 2}", prefix=prefix, nonempty=True)
        source = c.str_(s, "from", out[-1].name if out else "main", prefix=prefix, nonempty=True)
        if source not in names:
            c.bad(prefix + "from", source, "an earlier stage: " + ", ".join(sorted(names)))
        prompt = c.str_(s, "prompt", None, prefix=prefix, nonempty=True)
        if "prompt" not in s:  # a prompt of the wrong type is reported once, by str_
            c.problems.append(f"key '{prefix}prompt': missing; expected the stage's prompt template")
        if isinstance(s.get("negative_prompt"), str):
            _check_no_parent_token(c, prefix + "negative_prompt", s["negative_prompt"])
        for key in ("prompt", "negative_prompt"):
            if isinstance(s.get(key), str):  # __parent__ stands for text: a literal of its length keeps columns
                tpl = check_template(c, prefix + key, s[key].replace(PARENT_TOKEN, "x" * len(PARENT_TOKEN)),
                                     f"{c.path} ({prefix}{key})", shown=s[key], library=library)
                own = tuple(tpl.factors) if tpl is not None else ()
                known = factors if key == "prompt" else negative_factors
                inherited = known.get(source, ())
                known[name] = inherited + own
                _check_stage_factors(c, prefix + key, own, inherited, source,
                                     stage=None if key == "prompt" else name)
        negative_factors.setdefault(name, negative_factors.get(source, ()))  # no negative_prompt: the parent's
        strengths = s.get("strengths", [0.5])
        if not (isinstance(strengths, list) and strengths and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 1 for x in strengths)):
            c.bad(prefix + "strengths", strengths, "a non-empty list of numbers in (0, 1]")
            strengths = [0.5]
        c.distinct(prefix + "strengths", strengths)
        seeds = tuple(seed_list(c, s["seeds"], prefix)) if "seeds" in s else None
        top_k = c.int_(s, "top_k", None, lo=1, prefix=prefix)
        metric = c.str_(s, "metric", None, prefix=prefix, nonempty=True)
        metric = metric and pinned_weights(metric, base)
        if top_k is not None and "metric" not in s:
            c.problems.append(f"key '{prefix}metric': missing; top_k needs the metric to rank by")
        if "top_k" not in s and metric is not None:  # a top_k of the wrong value is reported by itself
            c.problems.append(f"key '{prefix}metric': set without top_k, so it ranks nothing; add top_k (the best "
                              "k images per variant to refine), or score the images with `metrics` instead")
        if metric is not None:
            c.metric(prefix + "metric", metric)
        if name in names:
            c.bad(prefix + "name", name, "a name not used by another stage")
        names.add(name)
        out.append(Stage(name, source, prompt or "", c.str_(s, "negative_prompt", None, prefix=prefix),
                         tuple(float(x) for x in strengths), seeds,
                         c.int_(s, "steps", None, lo=1, hi=1000, prefix=prefix), top_k, metric))
    return tuple(out)
