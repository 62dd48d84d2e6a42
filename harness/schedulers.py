"""Scheduler registry: harness names -> diffusers classes, options and AUTOMATIC1111 sampler names.

Importing this module does not import diffusers (the PNG infotext writer reads `SAMPLER_NAMES` and `SCHEDULE_TYPES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .checkpoints import CheckpointError


@dataclass(frozen=True)
class SchedulerSpec:
    name: str
    class_name: str          # diffusers class
    sampler: str             # AUTOMATIC1111 display name, written to PNG infotext
    options: tuple = ()      # (key, value) overrides applied on top of the checkpoint's scheduler config
    # AUTOMATIC1111 "Schedule type", written where its default for `sampler` is not the spacing diffusers
    # uses: its DPM++ 2M defaults to Karras sigmas, diffusers' to timesteps spaced evenly ("Uniform").
    schedule: str | None = None


SCHEDULERS: dict[str, SchedulerSpec] = {s.name: s for s in (
    SchedulerSpec("ddim", "DDIMScheduler", "DDIM"),
    SchedulerSpec("pndm", "PNDMScheduler", "PLMS", (("skip_prk_steps", True),)),
    SchedulerSpec("euler", "EulerDiscreteScheduler", "Euler"),
    SchedulerSpec("euler_a", "EulerAncestralDiscreteScheduler", "Euler a"),
    SchedulerSpec("dpmpp_2m", "DPMSolverMultistepScheduler", "DPM++ 2M",
                  (("algorithm_type", "dpmsolver++"), ("solver_order", 2)), schedule="Uniform"),
    SchedulerSpec("lms", "LMSDiscreteScheduler", "LMS"),
    SchedulerSpec("heun", "HeunDiscreteScheduler", "Heun"),
    SchedulerSpec("ddpm", "DDPMScheduler", "DDPM"),
)}
SAMPLER_NAMES: dict[str, str] = {s.name: s.sampler for s in SCHEDULERS.values()}
SCHEDULE_TYPES: dict[str, str] = {s.name: s.schedule for s in SCHEDULERS.values() if s.schedule}


def scheduler_spec(name: str) -> SchedulerSpec:
    if name not in SCHEDULERS:
        raise CheckpointError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name]


# Options that change which sigmas a sampler steps through. A checkpoint's scheduler config may set them (a
# fine-tune shipped with Karras sigmas); a registry name means one schedule on every checkpoint, the one its
# infotext names, so they are pinned off wherever the class has them.
SIGMA_SCHEDULES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def make_scheduler(name: str, base_config: Any):
    """A fresh scheduler of registry `name`, configured from a checkpoint's scheduler config, with its sigma
    schedule pinned (:data:`SIGMA_SCHEDULES`): `euler` steps alike on every checkpoint."""
    import inspect

    import diffusers

    spec = scheduler_spec(name)
    cls = getattr(diffusers, spec.class_name)
    takes = inspect.signature(cls.__init__).parameters
    pinned = {option: False for option in SIGMA_SCHEDULES if option in takes}
    return cls.from_config(base_config, **{**pinned, **dict(spec.options)})


def scheduler_name_of(pipe) -> str | None:
    """The registry name whose class `pipe.scheduler` is, or None."""
    cls = type(pipe.scheduler).__name__
    return next((s.name for s in SCHEDULERS.values() if s.class_name == cls), None)
