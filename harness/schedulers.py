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


# Options of a checkpoint's scheduler config that change its noise schedule, with the value that leaves it
# as trained by plain SD. A checkpoint trained on the changed schedule (zero terminal SNR) makes wrong images
# on a scheduler class that has no such option: `from_config` drops it without a word while the config still
# shows it set, so such a pairing is refused rather than run.
TRAINED_SCHEDULES = {"rescale_betas_zero_snr": False}


def _takes(class_name: str) -> set[str]:
    """The keyword arguments diffusers' scheduler class `class_name` accepts."""
    import inspect

    import diffusers

    return set(inspect.signature(getattr(diffusers, class_name).__init__).parameters)


def trained_schedule_problem(spec: SchedulerSpec, base_config: Any, checkpoint: str | None) -> str | None:
    """Why `spec`'s class cannot run the checkpoint whose scheduler config (a dict or diffusers' FrozenDict)
    is `base_config`: it sets a :data:`TRAINED_SCHEDULES` option the class would silently drop. The message
    names the registry schedulers that honour it; None when there is no such option. Diffusers is imported
    only for a config that sets one."""
    for option, plain in TRAINED_SCHEDULES.items():
        value = base_config.get(option, plain) if hasattr(base_config, "get") else plain
        if value != plain and option not in _takes(spec.class_name):
            honour = [s.name for s in SCHEDULERS.values() if option in _takes(s.class_name)]
            of = f"checkpoint {checkpoint!r}" if checkpoint else "the checkpoint"
            return (f"scheduler {spec.name!r} ({spec.class_name}) cannot honour {of}'s scheduler config "
                    f"{option}={value!r}: it would sample the plain schedule the model was not trained on. "
                    f"Use one of: {', '.join(honour)} (scheduler = \"{honour[0]}\")")
    return None


def make_scheduler(name: str, base_config: Any, *, checkpoint: str | None = None):
    """A fresh scheduler of registry `name`, configured from a checkpoint's scheduler config, with its sigma
    schedule pinned (:data:`SIGMA_SCHEDULES`): `euler` steps alike on every checkpoint. A CheckpointError when
    the class cannot follow the schedule the checkpoint was trained on (:data:`TRAINED_SCHEDULES`);
    `checkpoint` names it there."""
    import diffusers

    spec = scheduler_spec(name)
    problem = trained_schedule_problem(spec, base_config, checkpoint)
    if problem:
        raise CheckpointError(problem)
    cls = getattr(diffusers, spec.class_name)
    takes = _takes(spec.class_name)
    pinned = {option: False for option in SIGMA_SCHEDULES if option in takes}
    return cls.from_config(base_config, **{**pinned, **dict(spec.options)})


def scheduler_name_of(pipe) -> str | None:
    """The registry name whose class `pipe.scheduler` is, or None."""
    cls = type(pipe.scheduler).__name__
    return next((s.name for s in SCHEDULERS.values() if s.class_name == cls), None)
