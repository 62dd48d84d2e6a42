"""What every metric shares: its metadata, the item it scores, options, the registry.

A metric is one class in one file. Its `INFO` (name, range, direction, needed
inputs) is stated once; its options are declared with types and defaults so a
spec string from the command line or TOML (`clip_score:model=ViT-L-14,scale=2.5`)
is checked and converted before any model is loaded. The metric's `id` spells
out the options that change values, so scores from different configurations
never share a ledger column.

Nothing here imports torch: listing and validating metrics stays cheap.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

from harness.core import Score, canonical_json
from harness.images import to_rgb
from harness.metrics.spec import parse_metric_spec, quote_value

INPUTS = frozenset({"image", "prompt", "init_image", "source_prompt", "parent_image"})


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of one metric, stated once in its module."""

    name: str
    description: str
    unit: str
    range: tuple[float, float]
    higher_is_better: bool
    needs: frozenset[str] = frozenset({"image"})

    def __post_init__(self) -> None:
        unknown = set(self.needs) - INPUTS
        if unknown:
            raise ValueError(f"MetricInfo {self.name!r}: needs has unknown inputs {sorted(unknown)}; "
                             f"valid inputs are {sorted(INPUTS)}")
        if self.range[0] > self.range[1]:
            raise ValueError(f"MetricInfo {self.name!r}: range {self.range} has lo > hi")


@dataclass(frozen=True)
class Item:
    """One image to score, with whatever inputs a metric may need."""

    key: str
    image_path: Path
    prompt: str = ""
    negative_prompt: str = ""
    init_image_path: Path | None = None
    init_size: tuple[int, int] | None = None  # (width, height) the pipeline fitted the init image to
    init_hash: str | None = None  # the made image's record of its init (`Job.init_hash`): a changed file fails it
    source_prompt: str | None = None
    parent_image_path: Path | None = None


MISSING_FILE = "file not found"
CHANGED_FILE = "file changed"  # an init image that is not the one the image was made from (may come back)
UNREADABLE_FILE = "file unreadable"  # an init or parent image that does not decode now (may be restored)
NOT_YET = (MISSING_FILE, CHANGED_FILE, UNREADABLE_FILE)  # reasons of a NaN that is not stored: the next eval retries


class MetricUnavailable(RuntimeError):
    """The metric as a whole cannot run (its model did not load). Every item gets NaN with this reason."""


class MetricContractError(ValueError):
    """A metric's `_score` returned something other than one (value, detail) per item: the message names the
    metric, its module and what was expected. `Metric.score` gives every item of the batch NaN with it
    (not stored: named under "not scored", the other metrics go on)."""


CONTRACT = "_score must return a list with one (value: float, detail: dict) per item"
RANGE_SLACK = 1e-6  # rounding a declared bound may see (a float32 cosine of 1.0000001), relative to its size
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother = 60, 60


def origin(cls: type) -> str:
    """Where a metric class comes from, for error messages: `plugin module my_metrics` or
    `module harness.metrics.health`."""
    module = cls.__module__
    return f"module {module}" if module == "harness" or module.startswith("harness.") else f"plugin module {module}"


def describe(value: Any) -> str:
    """`float 0.5`, `NoneType None`, `tuple (0.5, {}, 1)`: a returned value's type and a short repr of it."""
    return f"{type(value).__name__} {_SHORT.repr(value)}"


def as_real(value: Any) -> float | None:
    """`value` as a float when it is a real number (int, float, a numpy or torch scalar), else None."""
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        return None
    if not isinstance(value, numbers.Real) and getattr(value, "shape", None) != ():  # 0-d arrays and tensors pass
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Option:
    """One metric option: default, how to read it from text, and whether it enters the metric id."""

    default: Any
    help: str
    parse: Callable[[Any], Any] = str
    choices: tuple | None = None
    in_id: bool | str = True  # "if_set": in the id only when it differs from the default


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


def parse_positive_int(value: Any) -> int:
    wrong = ValueError(f"expected a positive integer, got {value!r}")
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise wrong
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise wrong from None
    if number < 1:
        raise wrong
    return number


def parse_positive_float(value: Any) -> float:
    wrong = ValueError(f"expected a positive finite number, got {value!r}")
    if isinstance(value, bool):
        raise wrong
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise wrong from None
    if not math.isfinite(number) or number <= 0:
        raise wrong
    return number


def format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def format_number(value: float) -> str:
    """`value` as short as it reads back exactly: `100`, `2.5`, `1234567.0` (six significant digits of `g`
    would make 1234567 and 1234568 one metric id)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


class Metric:
    """Base class. Subclasses set INFO and OPTIONS and implement `_score`.

    `score(items)` returns one Score per item, in order, and never raises for
    one bad item: an item without the inputs the metric needs, or whose image
    cannot be read, gets NaN with `detail["reason"]`; a metric whose model
    cannot load, or whose `_score` raises or breaks its contract (a list of one
    (value, detail) per item: a real number, NaN or inside `info.range`, and a
    JSON-serialisable dict; see `checked`), gives NaN with the reason for every
    item, marked `retry` (not stored: the next eval tries again).
    """

    INFO: ClassVar[MetricInfo]
    OPTIONS: ClassVar[Mapping[str, Option]] = {}

    def __init__(self, **options: Any) -> None:
        self.options = resolve_options(self.INFO.name, self.OPTIONS, options)

    @property
    def info(self) -> MetricInfo:
        return self.INFO

    @property
    def id(self) -> str:
        parts = [f"{name}={quote_value(format_option(self.options[name]))}" for name, opt in self.OPTIONS.items()
                 if opt.in_id is True or (opt.in_id == "if_set" and self.options[name] != opt.default)]
        return f"{self.INFO.name}[{','.join(parts)}]" if parts else self.INFO.name

    def __repr__(self) -> str:
        return f"<metric {self.id}>"

    def recompute(self) -> None:
        """Score from the images and texts alone from now on, reading no cached intermediate (a rescore after
        the metric's code changed: cached CLIP embeddings were made by the old code). Metrics that cache
        nothing have nothing to do."""

    def check(self) -> None:
        """Raise ValueError for what would make this metric fail on every item and can be told without
        loading a model (a weights file that is not there, say). Called where scoring is about to be
        planned (experiment load, `harness eval`); making a metric, as reports do to name its column,
        checks nothing on this machine."""

    # -- scoring ---------------------------------------------------------------
    def score(self, items: Sequence[Item]) -> list[Score]:
        items = list(items)
        results: list[Score | None] = [None] * len(items)
        ready: list[int] = []
        for index, item in enumerate(items):
            reason = self.missing_input(item)
            if reason:
                # a file that is not there or not sound now (an init folder moved away) may be back later: not stored
                results[index] = self.nan(item, reason, **({"retry": True} if reason.startswith(NOT_YET) else {}))
            else:
                ready.append(index)
        if ready:
            try:
                outcomes = self.checked(self._score([items[i] for i in ready]), len(ready))
                for index, (value, detail) in zip(ready, outcomes):
                    results[index] = Score(key=items[index].key, metric=self.id, value=value, detail=detail)
            except (MetricUnavailable, MetricContractError) as exc:  # cannot run here, or broken: retried later
                for index in ready:
                    results[index] = self.nan(items[index], str(exc), retry=True)
            except (Exception, SystemExit) as exc:  # a bug in the metric (a plugin's, say; sys.exit too): nothing
                for index in ready:  # stored, the other metrics go on
                    results[index] = self.nan(items[index], f"metric {self.id} failed: {type(exc).__name__}: {exc}",
                                              retry=True)
        return results  # type: ignore[return-value]

    # -- the _score contract -----------------------------------------------------
    def checked(self, outcomes: Any, count: int) -> list[tuple[float, dict]]:
        """What `_score` returned for `count` items, as (float value, dict detail) pairs; a
        :class:`MetricContractError` saying what was expected when it is anything else."""
        if isinstance(outcomes, Iterator):  # a generator expression, map(...): its repr says nothing
            raise self.broken(f"got a {type(outcomes).__name__} (return a list: [(value, {{}}) for item in items])")
        if not isinstance(outcomes, (list, tuple)):
            raise self.broken(f"got {describe(outcomes)}")
        if len(outcomes) != count:
            raise self.broken(f"got {len(outcomes)} results for {count} items")
        return [self.checked_result(index, result) for index, result in enumerate(outcomes)]

    def checked_result(self, index: int, result: Any) -> tuple[float, dict]:
        """One (value, detail) of `_score`'s list: numpy and torch scalars become floats."""
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise self.broken(f"result {index} is {describe(result)}")
        value, detail = as_real(result[0]), result[1]
        if value is None:
            raise self.broken(f"result {index} has value {describe(result[0])}, not a real number")
        if not isinstance(detail, Mapping):
            raise self.broken(f"result {index} has detail {describe(detail)}, not a dict (give {{}} for none)")
        detail = dict(detail)
        try:
            canonical_json(detail)
        except (TypeError, ValueError) as exc:
            raise self.broken(f"result {index} has a detail that is not JSON-serialisable without NaN/inf ({exc}); "
                              "use str, int, float, bool, None, lists and dicts (numpy: .tolist() or float())") \
                from None
        self.check_range(index, value)
        return value, detail

    def check_range(self, index: int, value: float) -> None:
        """A value must be NaN (an item that cannot be scored) or inside the declared range, give or take
        rounding (:data:`RANGE_SLACK`)."""
        if math.isnan(value):
            return
        lo, hi = self.info.range
        if math.isinf(value):
            raise self.broken(f"result {index} has value {value}, not finite (give NaN with detail "
                              "{'reason': ...} for an item that cannot be scored)")
        slack = RANGE_SLACK * max(1.0, abs(lo), abs(hi))
        if not lo - slack <= value <= hi + slack:
            raise self.broken(f"result {index} has value {format_number(value)}, outside the metric's declared "
                              f"range [{format_number(lo)}, {format_number(hi)}] (its MetricInfo range); fix the "
                              "metric, or declare the range its values really take")

    def broken(self, problem: str) -> MetricContractError:
        return MetricContractError(f"metric {self.id} ({origin(type(self))}): {CONTRACT}; {problem}")

    def _score(self, items: list[Item]) -> list[tuple[float, dict]]:
        """Score items whose needed inputs are present: one (value, detail) per item, in order."""
        raise NotImplementedError

    def missing_input(self, item: Item) -> str | None:
        """Why this item cannot be scored before its image is read, or None. A reason that starts
        with :data:`MISSING_FILE` is a file absent now, with :data:`CHANGED_FILE` an init image that is not the
        one the image was made from, with :data:`UNREADABLE_FILE` an init or parent image that does not decode
        now (damaged, or a copy still being written); such a NaN is not stored, so the next eval retries.
        What no file can change (an input the item does not have) is checked first, so such an item gets
        its lasting NaN even while a file is gone."""
        needs = self.info.needs  # an instance may need less than its class (clip_score with text=)
        if "prompt" in needs and not item.prompt:
            return "item has no prompt"
        if "init_image" in needs and item.init_image_path is None:
            return "item has no init image (only img2img items can be scored by this metric)"
        if "source_prompt" in needs and item.source_prompt is None:
            return "item has no source prompt (the prompt the init image was made from)"
        if "parent_image" in needs and item.parent_image_path is None:
            return "item has no parent image"
        for need, label, path in (("image", "image", item.image_path),
                                  ("init_image", "init image", item.init_image_path),
                                  ("parent_image", "parent image", item.parent_image_path)):
            if need in needs and not Path(path).is_file():
                return f"{MISSING_FILE}: {label} {path}"
        if "init_image" in needs and item.init_hash and item.init_size:
            from ..images import current_init_hash

            try:
                same = current_init_hash(item.init_image_path, *item.init_size) == item.init_hash
            except Exception as exc:  # any decoder failure (PIL raises many types)
                return unreadable("init image", item.init_image_path, exc)
            if not same:
                return (f"{CHANGED_FILE}: init image {item.init_image_path} is not the image this one was made "
                        "from (edited or replaced since); put the original back to score it")
        if "parent_image" in needs:
            from PIL import Image

            try:
                with Image.open(item.parent_image_path) as image:
                    image.load()
            except Exception as exc:
                return unreadable("parent image", item.parent_image_path, exc)
        return None

    def nan(self, item: Item, reason: str, **detail: Any) -> Score:
        return Score(key=item.key, metric=self.id, value=math.nan, detail={"reason": reason, **detail})


def unreadable(label: str, path: Path | str | None, exc: Exception) -> str:
    """The not-stored reason of an input file that does not decode now."""
    return f"{UNREADABLE_FILE}: {label} {path} ({type(exc).__name__}: {exc}); restore the file to score this image"


def resolve_options(metric: str, declared: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in, every given value parsed and checked; unknown names fail listing the valid ones."""
    unknown = [name for name in given if name not in declared]
    if unknown:
        valid = ", ".join(f"{n} (default {format_option(o.default)!s}: {o.help})" for n, o in declared.items())
        raise ValueError(f"metric {metric!r} has no option(s) {', '.join(map(repr, unknown))}; "
                         f"valid options: {valid or 'none'}")
    resolved: dict[str, Any] = {}
    for name, opt in declared.items():
        if name not in given:
            resolved[name] = opt.default
            continue
        raw = given[name]
        try:
            value = opt.parse(raw)
        except Exception as exc:  # a plugin's own parse may refuse with any error
            raise ValueError(f"metric {metric!r} option {name}={raw!r}: {_refusal(exc)} ({opt.help})") from None
        if opt.choices is not None and value not in opt.choices:
            shown = [str(c) if c != "" else "'' (empty)" for c in opt.choices]
            raise ValueError(f"metric {metric!r} option {name}={raw!r}: expected one of {', '.join(shown)}")
        resolved[name] = value
    return resolved


def _refusal(exc: Exception) -> str:
    """Why an option's parse refused a value: its message, after the error's type where that is not the
    usual ValueError or TypeError (a KeyError's message alone is just the key)."""
    return str(exc) if isinstance(exc, (TypeError, ValueError)) else f"{type(exc).__name__}: {exc}"


# -- registry ------------------------------------------------------------------
_REGISTRY: dict[str, type[Metric]] = {}


NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
NAME_RULE = "letters, digits, '_', '.' and '-', not starting with '.' or '-'"


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make a metric available by its INFO.name. Refuses a class a spec could not name
    or build: no `INFO = MetricInfo(...)`, no `_score`, a name `-m` cannot read back, an option default
    its own `parse` refuses."""
    check_metric_class(cls)
    name = cls.INFO.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"metric name {name!r} is registered twice "
                         f"({_REGISTRY[name].__module__} and {cls.__module__})")
    _REGISTRY[name] = cls
    return cls


def check_metric_class(cls: type) -> None:
    """ValueError naming the class, its module and what was expected, for a metric class `register` refuses."""
    where = f"metric class {cls.__name__} ({origin(cls)})"
    if not isinstance(cls, type) or not issubclass(cls, Metric):
        raise ValueError(f"{where}: register takes a subclass of harness.metrics.Metric")
    info = getattr(cls, "INFO", None)
    if not isinstance(info, MetricInfo):
        raise ValueError(f"{where}: needs INFO = MetricInfo(name=..., description=..., unit=..., range=(lo, hi), "
                         f"higher_is_better=...); got {describe(info)}")
    if cls._score is Metric._score:
        raise ValueError(f"{where}: define _score(self, items) returning one (value: float, detail: dict) per item")
    check_name(info.name, where)
    for option, declared in cls.OPTIONS.items():
        check_default(info.name, option, declared, where)


def check_name(name: Any, where: str) -> None:
    """A metric name must read back from `-m NAME` and from its ids (`NAME[key=value]`)."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or parse_metric_spec(name) != (name, {}):
        raise ValueError(f"{where}: metric name {name!r} cannot be given to -m or read back from a metric id; "
                         f"a name takes {NAME_RULE} (e.g. {_suggest_name(name)!r})")


def _suggest_name(name: Any) -> str:
    suggestion = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).lstrip(".-")
    return suggestion or "my_metric"


def check_default(metric: str, option: str, declared: Option, where: str) -> None:
    """An option's default must be what its `parse` makes of it: of the text the metric id writes for it when
    the id always spells it, so the metric made without the option is the one its id makes again."""
    if not isinstance(declared, Option):
        raise ValueError(f"{where}: OPTIONS[{option!r}] is {describe(declared)}; expected Option(default, help, "
                         "parse=...)")
    raw = format_option(declared.default) if declared.in_id is True else declared.default
    try:
        parsed = declared.parse(raw)
    except Exception as exc:  # a plugin's own parse may refuse with any error
        raise ValueError(f"{where}: option {option} of metric {metric!r} has default {declared.default!r}, which "
                         f"its parse refuses ({_refusal(exc)}); give a default parse accepts") from None
    if parsed != declared.default:
        raise ValueError(f"{where}: option {option} of metric {metric!r} has default {declared.default!r}, which "
                         f"its parse reads back as {parsed!r}; give the parsed value as the default")
    if declared.choices is not None and declared.default not in declared.choices:
        raise ValueError(f"{where}: option {option} of metric {metric!r} has default {declared.default!r}, not one "
                         f"of its choices {', '.join(map(repr, declared.choices))}")


def metric_class(name: str) -> type[Metric]:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown metric {name!r}{hint}; valid metrics: {', '.join(sorted(_REGISTRY))}; a plugin "
                       "metric? load its module with HARNESS_PLUGINS=module (importable: installed, or in a folder "
                       "on PYTHONPATH)") from None


def get_metric(name: str, **options: Any) -> Metric:
    """The metric called `name`, configured with `options` (strings are parsed to the declared types)."""
    return metric_class(name)(**options)


def list_metrics() -> list[MetricInfo]:
    return [_REGISTRY[name].INFO for name in sorted(_REGISTRY)]


def metric_options(name: str) -> Mapping[str, Option]:
    return dict(metric_class(name).OPTIONS)


def metric_from_spec(spec: str) -> Metric:
    name, options = parse_metric_spec(spec)
    return get_metric(name, **options)


# -- small shared helpers ------------------------------------------------------
def cache_dir() -> Path:
    """Where built-in models and the default embedding cache live: $HARNESS_CACHE or ~/.cache/harness."""
    root = os.environ.get("HARNESS_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "harness"


def read_rgb(path: Path | str):
    """(PIL RGB image, None) or (None, reason). Never raises for a bad file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image), None
    except FileNotFoundError:
        return None, f"image file not found: {path}"
    except Exception as exc:  # any decoder failure (PIL raises many types) is a per-item reason
        return None, f"image unreadable: {path}: {type(exc).__name__}: {exc}"


def chunks(seq: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]
