"""Denoising steps that do not wait for the card: the timestep schedule kept on the host.

A diffusers pipeline puts its scheduler's timesteps on the card. DDIM and PNDM then read the current
timestep in Python at every step (`prev_timestep >= 0`, an index into their alphas), which waits for the
card to finish all the work queued before it, so the GPU idles while the host launches the next UNet
forward. With the schedule on the host those reads cost nothing, and the UNet gets each timestep copied
to the card without waiting (`timestep_to_sample_device`). The integers and the arithmetic are the same,
so the pixels are too.
"""

from __future__ import annotations

import types

HOST_SCHEDULE = ("DDIMScheduler", "PNDMScheduler")  # classes whose step reads the timestep in Python


def _set_timesteps_on_host(self, num_inference_steps=None, device=None, **kw):
    return type(self).set_timesteps(self, num_inference_steps, device="cpu", **kw)


def keep_schedule_on_host(scheduler) -> bool:
    """Make `scheduler.set_timesteps` keep the schedule on the host, whatever device the pipeline asks for;
    True where it applies (`HOST_SCHEDULE`). Bound to the instance, so a deep copy keeps it for itself."""
    if type(scheduler).__name__ not in HOST_SCHEDULE:
        return False
    scheduler.set_timesteps = types.MethodType(_set_timesteps_on_host, scheduler)
    return True


def timestep_to_sample_device(_module, args, kwargs):
    """UNet forward pre-hook: a host timestep goes to the sample's device without waiting for the card
    (a copy from host memory is staged at once), as the UNet would otherwise copy it and wait."""
    import torch

    def moved(t, device):
        return t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) and t.device != device else t

    args = list(args)
    device = (args[0] if args else kwargs["sample"]).device
    if len(args) > 1:
        args[1] = moved(args[1], device)
    elif "timestep" in kwargs:
        kwargs["timestep"] = moved(kwargs["timestep"], device)
    return tuple(args), kwargs


def attach(pipe) -> None:
    """Keep `pipe`'s schedule on the host and hand its UNet device timesteps (once per UNet)."""
    import torch

    if not keep_schedule_on_host(pipe.scheduler):
        return
    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    if not getattr(unet, "_harness_host_timestep", False):
        unet.register_forward_pre_hook(torch.compiler.disable(timestep_to_sample_device), with_kwargs=True)
        unet._harness_host_timestep = True
