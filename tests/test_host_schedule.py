"""DDIM/PNDM schedules kept on the host: the same pixels, the timestep handed to the UNet on its device."""

import copy

import numpy as np
import pytest
import torch

from harness import checkpoints, host_schedule
from harness.pipelines import derive_pipeline, load_pipeline


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline(checkpoints.resolve("tiny"), "txt2img", device="cpu")


@pytest.mark.parametrize("scheduler", ["ddim", "pndm"])
def test_the_schedule_stays_on_the_host_whatever_device_is_asked(tiny, scheduler):
    pipe = derive_pipeline(tiny, "txt2img", scheduler)
    assert host_schedule.keep_schedule_on_host(pipe.scheduler)
    pipe.scheduler.set_timesteps(5, device="meta")
    assert pipe.scheduler.timesteps.device.type == "cpu" and len(pipe.scheduler.timesteps) >= 5
    twin = copy.deepcopy(pipe.scheduler)  # a copy keeps it, bound to itself
    twin.set_timesteps(7, device="meta")
    assert twin.timesteps.device.type == "cpu" and twin.num_inference_steps == 7
    assert pipe.scheduler.num_inference_steps == 5


def test_schedulers_that_do_not_read_the_timestep_are_left_alone(tiny):
    pipe = derive_pipeline(tiny, "txt2img", "euler")
    assert not host_schedule.keep_schedule_on_host(pipe.scheduler)
    assert "set_timesteps" not in vars(pipe.scheduler)  # the class's own method, unchanged


def test_the_unet_gets_the_timestep_on_the_sample_device():
    sample = torch.zeros(2, 4, 8, 8, device="meta")
    args, kwargs = host_schedule.timestep_to_sample_device(None, (sample, torch.tensor(981)), {"x": 1})
    assert args[1].device.type == "meta" and args[0] is sample and kwargs == {"x": 1}
    args, kwargs = host_schedule.timestep_to_sample_device(None, (), {"sample": sample, "timestep": torch.tensor(1)})
    assert args == () and kwargs["timestep"].device.type == "meta"
    args, _ = host_schedule.timestep_to_sample_device(None, (sample, 981), {})  # a plain number passes through
    assert args[1] == 981


@pytest.mark.parametrize("scheduler", ["ddim", "pndm"])
def test_images_are_the_same_bit_for_bit(tiny, scheduler):
    def draw(attach: bool):
        pipe = derive_pipeline(tiny, "txt2img", scheduler)
        if attach:
            host_schedule.attach(pipe)
        out = pipe("a red circle", num_inference_steps=4, height=64, width=64, output_type="np",
                   generator=torch.Generator("cpu").manual_seed(3)).images
        return out, pipe

    plain, _ = draw(False)
    held, pipe = draw(True)
    assert np.array_equal(plain, held)
    assert len(pipe.unet._forward_pre_hooks) == 1
    host_schedule.attach(pipe)  # once per UNet
    assert len(pipe.unet._forward_pre_hooks) == 1
