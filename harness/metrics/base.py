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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

from harness.core import Score
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
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected a positive integer, got {value!r}")
    number = int(str(value).strip()) if isinstance(value, str) else int(value)
    if number < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return number


def parse_positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a positive number, got {value!r}")
    number = float(str(value).strip()) if isinstance(value, str) else float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"expected a positive finite number, got {value!r}")
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
    cannot load, or whose `_score` raises, gives NaN with the reason for every
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
                outcomes = self._score([items[i] for i in ready])
                if len(outcomes) != len(ready):
                    raise RuntimeError(f"returned {len(outcomes)} results for {len(ready)} items")
                for index, (value, detail) in zip(ready, outcomes):
                    results[index] = Score(key=items[index].key, metric=self.id, value=float(value), detail=detail)
            except MetricUnavailable as exc:  # the metric cannot run here at all: worth retrying later
                for index in ready:
                    results[index] = self.nan(items[index], str(exc), retry=True)
            except Exception as exc:  # a bug in the metric (a plugin's, say): nothing stored, the other metrics go on
                for index in ready:
                    results[index] = self.nan(items[index], f"metric {self.id} failed: {type(exc).__name__}: {exc}",
                                              retry=True)
        return results  # type: ignore[return-value]

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
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metric {metric!r} option {name}={raw!r}: {exc} ({opt.help})") from None
        if opt.choices is not None and value not in opt.choices:
            raise ValueError(f"metric {metric!r} option {name}={raw!r}: expected one of "
                             f"{', '.join(map(str, opt.choices))}")
        resolved[name] = value
    return resolved


# -- registry ------------------------------------------------------------------
_REGISTRY: dict[str, type[Metric]] = {}


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make a metric available by its INFO.name."""
    name = cls.INFO.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"metric name {name!r} is registered twice "
                         f"({_REGISTRY[name].__module__} and {cls.__module__})")
    _REGISTRY[name] = cls
    return cls


def metric_class(name: str) -> type[Metric]:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown metric {name!r}{hint}; valid metrics: {', '.join(sorted(_REGISTRY))}") from None


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
