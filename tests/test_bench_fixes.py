"""Throughput fixes: a UNet replayed as CUDA graphs hands the loop a copy of each output (PNDM without
guidance keeps the UNet's own output tensors), "auto" memory may not offload a replayed UNet, a compiled
harness row warms on the whole sweep, and the classic-attention row says when it also unfuses QKV."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import checkpoints, pipelines
from harness.bench import Sweep, ablation_variants, run_bench
from harness.core import SettingsError
from harness.worker import Tuning, replayed

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def one_image(pipe) -> np.ndarray:
    out = pipe("a red house", num_inference_steps=5, guidance_scale=1.0, height=64, width=64,
               generator=torch.Generator().manual_seed(3), output_type="np")
    return out.images[0]


def replay_buffer(unet) -> None:
    """As a CUDA graph replay does: every call's output is written into one buffer, which is returned."""
    held = {}

    def into_buffer(module, args, kwargs, output):
        sample = output[0] if isinstance(output, tuple) else output.sample
        buf = held.setdefault("buf", torch.empty_like(sample))
        buf.copy_(sample)
        return (buf,) if isinstance(output, tuple) else type(output)(sample=buf)

    unet.register_forward_hook(into_buffer, with_kwargs=True)


def test_a_replayed_unet_gives_pndm_without_guidance_the_images_of_a_plain_one(monkeypatch):
    """PNDM keeps the UNet's outputs of earlier steps; with guidance 1 those are the UNet's own tensors, which
    the next replay overwrites. `replayed` copies each output, and marks a new step before each call."""
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    ref = checkpoints.resolve("tiny")
    plain = one_image(pipelines.load_pipeline(ref, "txt2img", scheduler="pndm"))

    overwritten = pipelines.load_pipeline(ref, "txt2img", scheduler="pndm")
    replay_buffer(overwritten.unet)
    assert np.abs(one_image(overwritten) - plain).max() > 0.01  # what a replay does to PNDM unprotected

    protected = pipelines.load_pipeline(ref, "txt2img", scheduler="pndm")
    replay_buffer(protected.unet)
    replayed(protected.unet)
    assert np.array_equal(one_image(protected), plain)
    assert len(marks) >= 5 and protected.unet.harness_replays_graphs is True


def test_auto_memory_that_would_offload_a_replayed_unet_is_refused(monkeypatch):
    from harness import generate

    cache = generate.PipelineCache("cpu", loader=lambda ref, mode, **kw: replayed_pipe(ref))
    cache.device = "cuda:0"  # as on a card with too little free memory
    monkeypatch.setattr(generate, "auto_memory", lambda pipe, device: ["model_cpu_offload", "vae_slicing"])
    with pytest.raises(SettingsError, match=r"memory = 'auto' would choose model_cpu_offload for checkpoint "
                                            r"'tiny' on cuda:0 .* 'cudagraphs' needs the UNet's weights to stay"):
        cache.get(checkpoints.resolve("tiny"), "txt2img")
    monkeypatch.setattr(generate, "auto_memory", lambda pipe, device: ["vae_slicing"])
    assert cache._memory_for(replayed_pipe(checkpoints.resolve("tiny")), checkpoints.resolve("tiny")) == [
        "vae_slicing"]


def replayed_pipe(ref):
    pipe = pipelines.load_pipeline(ref, "txt2img")
    pipe.unet.harness_replays_graphs = True
    return pipe


def test_a_compiled_harness_row_warms_on_the_whole_sweep(monkeypatch):
    from harness import bench

    warmed = []

    def stop_after_warming(exp, plan, run_dir, *a, **k):
        warmed.append(len(plan.jobs))
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "harness_run", stop_after_warming)
    lines: list[str] = []
    for speedups in ((), ("compile",)):
        with pytest.raises(KeyboardInterrupt):
            run_bench(Sweep(size=64, steps=2, prompts=2, seeds=2, strengths=()), speedups=speedups,
                      out=lines.append)
    assert warmed == [1, 4]
    assert sum("warm-up: the whole sweep" in line for line in lines) == 1


def test_the_classic_attention_row_says_it_also_unfuses_qkv():
    names = [name for name, _ in ablation_variants("sdpa", "cpu", Tuning(speedups=("fuse_qkv",)))]
    assert names == ["harness, classic attention (no SDPA, QKV unfused)"]
    assert [name for name, _ in ablation_variants("sdpa", "cpu", Tuning())] == [
        "harness, classic attention (no SDPA)"]


def test_a_busy_cpu_is_named_before_the_figures_and_a_quiet_one_is_not():
    from harness.bench import cpu_load_note

    assert cpu_load_note(0.1, 2) is None
    note = cpu_load_note(1.7, 2)
    assert note is not None and "load average 1.70 over the last minute, 2 cores" in note and "--repeat" in note
