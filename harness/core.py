"""Core value types shared by every stage. No I/O, no torch.

Identity is content: a job's key is the SHA-256 of the canonical JSON of every
field that can change its pixels, so the same request always names the same
image file and ledger row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

SCHEMA_VERSION = 1
NEGATIVE_PREFIX = "negative:"  # a negative-prompt factor's name in a job's factors (`f.negative:<name>` in tables)


class SettingsError(ValueError):
    """A device, dtype or memory setting this machine cannot honour; the message says what to use instead.
    (Here rather than in `devices`, so that catching it does not import torch.)"""


class OutOfMemory(RuntimeError):
    """Even a batch of one image does not fit (raised by `batching.run_batched`); the message names the
    image and the settings that lower memory. (Here so that catching it does not import torch.)"""


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8, no NaN: the one serialisation we hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_key(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Variant:
    """One concrete prompt and the factor choices that produced it."""

    prompt: str
    factors: Mapping[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.prompt, tuple(sorted(self.factors.items()))))

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "factors": dict(self.factors)}


# Fields of Job that change pixels, hence enter the key.
PIXEL_FIELDS = (
    "fingerprint", "mode", "prompt", "negative_prompt", "seed", "steps", "guidance",
    "scheduler", "width", "height", "strength", "init_hash", "dtype", "watermark",
)


@dataclass(frozen=True)
class Job:
    """Everything needed to make one image. `key` hashes the pixel-affecting part."""

    checkpoint: str            # registry name as written in the experiment
    fingerprint: str           # content fingerprint of the weights
    mode: str                  # "txt2img" | "img2img"
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    scheduler: str
    width: int
    height: int
    strength: float | None = None
    init_hash: str | None = None
    dtype: str = "auto"
    watermark: str = "none"
    emphasis: str | None = None  # "a1111": the prompts' brackets are weights (harness.emphasis); None: text
    # Not pixel-affecting: recorded, never hashed.
    init_image: str | None = None
    factors: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.key)

    def pixel_dict(self) -> dict:
        d = {name: getattr(self, name) for name in PIXEL_FIELDS}
        if self.emphasis is not None:  # only where it changes pixels, so other prompts keep their keys
            d["emphasis"] = self.emphasis
        d["schema"] = SCHEMA_VERSION
        return d

    @property
    def key(self) -> str:
        return content_key(self.pixel_dict())

    @property
    def group(self) -> tuple:
        """Jobs with equal groups can share one pipeline call."""
        return (self.fingerprint, self.checkpoint, self.mode, self.strength, self.steps, self.guidance,
                self.scheduler, self.width, self.height, self.dtype, self.watermark)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["factors"] = dict(self.factors)
        d["meta"] = dict(self.meta)
        d["key"] = self.key
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Job":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Score:
    """One metric value for one image. NaN with a reason when it cannot be scored."""

    key: str
    metric: str
    value: float
    detail: Mapping[str, Any] = field(default_factory=dict)
