"""Generation with the real tiny pipeline: batches, reproducibility, img2img, OOM back-off."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from harness import checkpoints as ck
from harness import pipelines, schedulers
from harness import batching, devices
from harness import generate as gen
from harness.core import Job


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="session")
def pipes(tiny_ref):
    return gen.PipelineCache("cpu", memory="none")


def job(ref, seed=1, prompt="a red bicycle, oil painting", **changes) -> Job:
    fields = dict(checkpoint="tiny", fingerprint=ref.fingerprint, mode="txt2img", prompt=prompt,
                  negative_prompt="", seed=seed, steps=3, guidance=7.5, scheduler="ddim", width=64, height=48)
    fields.update(changes)
    return Job(**fields)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# ---------------------------------------------------------------- device and dtype

def test_pick_device_cpu_and_auto():
    assert devices.pick_device("cpu") == "cpu"
    assert devices.pick_device("auto") in ("cpu", "cuda", "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_pick_device_rejects_unavailable_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        devices.pick_device("cuda")


def test_pick_device_rejects_unknown_names():
    with pytest.raises(ValueError, match="'tpu'"):
        devices.pick_device("tpu")


def test_pick_dtype_auto_is_fp16_on_cuda_and_fp32_on_cpu():
    assert devices.pick_dtype("auto", "cuda") == torch.float16
    assert devices.pick_dtype("auto", "cpu") == torch.float32
    assert devices.pick_dtype("bf16", "cuda") == torch.bfloat16
    assert devices.pick_dtype("fp32", "cuda") == torch.float32


def test_pick_dtype_rejects_fp16_on_cpu_and_unknown_names():
    with pytest.raises(ValueError, match="fp16"):
        devices.pick_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="'int8'"):
        devices.pick_dtype("int8", "cpu")


# ---------------------------------------------------------------- txt2img

def test_batch_returns_one_uint8_height_by_width_array_per_job(pipes, tiny_ref):
    jobs = [job(tiny_ref, seed=s, prompt=p) for s, p in [(1, "a cat"), (2, "a dog"), (3, "a cat")]]
    images = gen.generate_batch(pipes.get(tiny_ref, "txt2img", "ddim"), jobs, device="cpu")
    assert len(images) == 3
    for img in images:
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
        assert img.std() > 10  # coloured noise, not flat grey


def test_same_job_alone_twice_is_bitwise_identical(pipes, tiny_ref):
    pipe = pipes.get(tiny_ref, "txt2img", "ddim")
    first = gen.generate_batch(pipe, [job(tiny_ref, seed=7)], device="cpu")[0]
    second = gen.generate_batch(pipe, [job(tiny_ref, seed=7)], device="cpu")[0]
    assert np.array_equal(first, second)


def test_job_in_a_batch_matches_the_job_alone_within_one_level(pipes, tiny_ref):
    pipe = pipes.get(tiny_ref, "txt2img", "ddim")
    jobs = [job(tiny_ref, seed=s, prompt=p) for s, p in [(11, "a cat"), (12, "a castle at dusk"), (13, "")]]
    batched = gen.generate_batch(pipe, jobs, device="cpu")
    alone = gen.generate_batch(pipe, jobs, device="cpu", exact=True)
    assert [max_diff(a, b) <= 1 for a, b in zip(batched, alone)] == [True, True, True]


def test_different_seeds_give_different_images(pipes, tiny_ref):
    a, b = gen.generate_batch(pipes.get(tiny_ref, "txt2img", "ddim"),
                              [job(tiny_ref, seed=1), job(tiny_ref, seed=2)], device="cpu")
    assert max_diff(a, b) > 10


def test_prompts_are_encoded_once_per_checkpoint_prompt_and_negative(pipes, tiny_ref, monkeypatch):
    pipe = pipes.get(tiny_ref, "txt2img", "ddim")
    calls = []
    original = pipe.encode_prompt
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    # (the pipeline also calls encode_prompt(None, ..., prompt_embeds=...), which only passes embeddings through)
    cache: dict = {}
    jobs = [job(tiny_ref, seed=s, prompt="a cat") for s in (1, 2, 3)]
    gen.generate_batch(pipe, jobs, device="cpu", embeds_cache=cache)
    gen.generate_batch(pipe, jobs[:1], device="cpu", embeds_cache=cache)
    assert [c for c in calls if c is not None] == ["a cat"]
    assert [key[2:] for key in cache] == [("a cat", "", None)]
    calls.clear()  # no cache (the benchmark's "no prompt-embedding cache" row): every image encodes its prompts
    gen.generate_batch(pipe, jobs, device="cpu", embeds_cache=None)
    assert [c for c in calls if c is not None] == ["a cat"] * 3


def test_256px_image_runs_on_cpu_with_a_latent_eight_times_smaller(pipes, tiny_ref):
    pipe = pipes.get(tiny_ref, "txt2img", "euler")
    latents = []
    pipe_call = job(tiny_ref, width=256, height=256, steps=2, scheduler="euler")
    gen.generate_batch(pipe, [pipe_call], device="cpu",
                       step_callback=lambda step, t: latents.append(step))
    assert latents == [0, 1]
    assert pipe.vae_scale_factor == 8


def test_every_scheduler_generates(pipes, tiny_ref):
    for name in schedulers.SCHEDULERS:
        img = gen.generate_batch(pipes.get(tiny_ref, "txt2img", name),
                                 [job(tiny_ref, steps=2, scheduler=name, width=32, height=32)], device="cpu")[0]
        assert img.shape == (32, 32, 3)


def test_a_checkpoints_karras_sigmas_do_not_change_what_a_scheduler_name_means(pipes, tiny_ref):
    """A fine-tune may ship `use_karras_sigmas: true`: `euler` and `dpmpp_2m` still step through the
    schedule their infotext names (Uniform), as on every other checkpoint, and make the same pixels."""
    pipe = pipes.get(tiny_ref, "txt2img", "ddim")
    karras = {**pipe.scheduler.config, "use_karras_sigmas": True, "use_exponential_sigmas": False}
    for name in ("euler", "dpmpp_2m", "lms", "heun"):
        made = schedulers.make_scheduler(name, karras)
        plain = schedulers.make_scheduler(name, pipe.scheduler.config)
        assert made.config.use_karras_sigmas is False, name
        made.set_timesteps(10)
        plain.set_timesteps(10)
        assert torch.equal(torch.as_tensor(made.sigmas), torch.as_tensor(plain.sigmas)), name


# ---------------------------------------------------------------- img2img

def test_img2img_runs_int_strength_times_steps_denoising_steps(pipes, tiny_ref):
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    steps = []
    out = gen.generate_batch(pipes.get(tiny_ref, "img2img", "ddim"),
                             [job(tiny_ref, mode="img2img", strength=0.5, steps=10, width=32, height=32)],
                             device="cpu",
                             init_images=[init], step_callback=lambda step, t: steps.append(t))
    assert len(steps) == 5 and out[0].shape == (32, 32, 3)


def test_img2img_output_depends_on_the_init_image(pipes, tiny_ref):
    rng = np.random.default_rng(1)
    inits = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(2)]
    pipe = pipes.get(tiny_ref, "img2img", "ddim")
    same_job = job(tiny_ref, mode="img2img", strength=0.3, steps=4)
    a, b = (gen.generate_batch(pipe, [same_job], device="cpu", init_images=[init])[0] for init in inits)
    assert max_diff(a, b) > 10


def test_img2img_rejects_a_strength_that_runs_no_steps(pipes, tiny_ref):
    init = Image.new("RGB", (64, 48))
    with pytest.raises(ValueError, match="0 denoising steps"):
        gen.generate_batch(pipes.get(tiny_ref, "img2img", "ddim"),
                           [job(tiny_ref, mode="img2img", strength=0.05, steps=10)], device="cpu", init_images=[init])


def test_img2img_rejects_init_images_of_the_wrong_size(pipes, tiny_ref):
    with pytest.raises(ValueError, match="load_init_image"):
        gen.generate_batch(pipes.get(tiny_ref, "img2img", "ddim"),
                           [job(tiny_ref, mode="img2img", strength=0.5)], device="cpu",
                           init_images=[Image.new("RGB", (50, 50))])


def test_init_image_is_fitted_by_cover_and_centre_crop(tmp_path):
    path = tmp_path / "wide.png"
    arr = np.zeros((50, 200, 3), dtype=np.uint8)
    arr[:, 75:125] = 255  # a white band in the centre survives the crop
    Image.fromarray(arr).convert("RGBA").save(path)
    img = gen.load_init_image(path, 64, 64)
    assert img.mode == "RGB" and img.size == (64, 64)
    assert np.asarray(img)[:, 32].min() > 200
    assert gen.image_hash(img) == gen.image_hash(gen.load_init_image(path, 64, 64))
    assert gen.image_hash(img) != gen.image_hash(gen.load_init_image(path, 64, 48))


def test_a_16_bit_init_image_is_the_same_picture_as_its_8_bit_copy(tmp_path):
    """Pillow's own conversion clips 16-bit levels at 255 (a near-white picture); the pipeline must see
    what the metrics see (value / 257), or img2img starts from another image than the one scored."""
    levels = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    Image.fromarray(levels, "L").save(eight := tmp_path / "8.png")
    Image.fromarray(levels.astype(np.uint16) * 257).save(sixteen := tmp_path / "16.png")
    assert Image.open(sixteen).mode.startswith("I")
    assert gen.image_hash(gen.load_init_image(sixteen, 64, 64)) == gen.image_hash(gen.load_init_image(eight, 64, 64))


# ---------------------------------------------------------------- batch validation

def test_jobs_from_different_groups_are_rejected_naming_the_field(pipes, tiny_ref):
    with pytest.raises(ValueError, match=r"jobs\[1\]\.steps=4 but jobs\[0\]\.steps=3"):
        gen.generate_batch(pipes.get(tiny_ref, "txt2img", "ddim"),
                           [job(tiny_ref), job(tiny_ref, steps=4)], device="cpu")


def test_scheduler_of_the_pipeline_must_match_the_jobs(pipes, tiny_ref):
    with pytest.raises(ValueError, match="scheduler='euler'"):
        gen.generate_batch(pipes.get(tiny_ref, "txt2img", "ddim"), [job(tiny_ref, scheduler="euler")], device="cpu")


def test_mode_of_the_pipeline_must_match_the_jobs(pipes, tiny_ref):
    with pytest.raises(ValueError, match="StableDiffusionImg2ImgPipeline"):
        gen.generate_batch(pipes.get(tiny_ref, "txt2img", "ddim"),
                           [job(tiny_ref, mode="img2img", strength=0.5)], device="cpu",
                           init_images=[Image.new("RGB", (64, 48))])


def test_jobs_for_other_weights_are_rejected(pipes, tiny_ref):
    with pytest.raises(ValueError, match="fingerprint"):
        gen.generate_batch(pipes.get(tiny_ref, "txt2img", "ddim"), [job(tiny_ref, fingerprint="0123456789")],
                           device="cpu")


def test_sizes_must_be_multiples_of_eight(pipes, tiny_ref):
    with pytest.raises(ValueError, match="job.width=60"):
        gen.generate_batch(pipes.get(tiny_ref, "txt2img", "ddim"), [job(tiny_ref, width=60)], device="cpu")


# ---------------------------------------------------------------- pipeline cache and memory

def test_pipeline_cache_loads_a_checkpoint_once_for_all_modes_and_schedulers(tiny_ref):
    pipes = gen.PipelineCache("cpu", memory="none")
    t2i = pipes.get(tiny_ref, "txt2img", "ddim")
    i2i = pipes.get(tiny_ref, "img2img", "euler")
    assert pipes.get(tiny_ref, "txt2img", "ddim") is t2i
    assert pipes.loads == 1 and i2i.unet is t2i.unet


def test_pipeline_cache_keeps_one_checkpoint_resident(tiny_ref, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(tiny_ref.source, tmp_path / "copy")
    other = ck.resolve(str(tmp_path / "copy"))
    pipes = gen.PipelineCache("cpu", memory="none")
    frees = []
    monkeypatch.setattr(gen, "free_accelerator_memory", lambda: frees.append(pipes.resident))
    first = pipes.get(tiny_ref, "txt2img", "ddim")
    assert frees == []  # nothing resident yet: no garbage collection before the first load
    gen.generate_batch(first, [job(tiny_ref, width=32, height=32, steps=1)], device="cpu", embeds_cache=pipes.embeds)
    assert len(pipes.embeds) == 1
    second = pipes.get(other, "txt2img", "ddim")
    assert pipes.loads == 2 and second.unet is not first.unet and pipes.embeds == {}
    assert pipes.resident[1] == other.source
    assert len(frees) == 1  # switching checkpoints frees the old one's memory
    pipes.clear(collect=False)  # a CPU run's end: dropped without a collection
    assert len(frees) == 1 and pipes.resident is None


def test_memory_policy_on_cpu_applies_nothing_and_rejects_offload(tiny_ref):
    pipe = pipelines.load_pipeline(tiny_ref, device=None)
    assert devices.apply_memory(pipe, "auto", "cpu") == []
    assert devices.apply_memory(pipe, ["attention_slicing", "vae_slicing"], "cpu") == ["attention_slicing",
                                                                                    "vae_slicing"]
    with pytest.raises(ValueError, match="needs a CUDA device"):
        devices.apply_memory(pipe, ["model_cpu_offload"], "cpu")
    with pytest.raises(ValueError, match="'vae_shrinking'"):
        devices.apply_memory(pipe, ["vae_shrinking"], "cpu")


def test_auto_memory_thresholds_follow_free_memory(tiny_ref):
    pipe = pipelines.load_pipeline(tiny_ref, device=None)
    total, largest = devices.weight_bytes(pipe)
    choose = lambda free: devices.auto_memory(pipe, "cuda", free_bytes=free)  # noqa: E731
    assert choose(total + devices.AUTO_ROOMY) == []
    assert choose(total + devices.AUTO_TIGHT) == ["vae_slicing"]
    assert choose(largest + devices.AUTO_OFFLOAD) == ["model_cpu_offload", "vae_slicing"]
    assert choose(0)[0] == "sequential_cpu_offload"


def test_auto_batch_size_is_small_on_cpu_and_grows_with_free_gpu_memory():
    assert batching.auto_batch_size("cpu", 512, 512) == batching.CPU_BATCH
    sizes = [batching.auto_batch_size("cuda", 512, 512, free_bytes=g * devices.GIB) for g in (1, 4, 8, 80)]
    assert sizes == sorted(sizes) and sizes[0] == 1 and sizes[-1] == batching.MAX_BATCH


# ---------------------------------------------------------------- OOM back-off

class FakeOOM(RuntimeError):
    pass


def oom_above(size: int, calls: list):
    """A batch function that runs out of memory on more than `size` items, noting each call's size."""
    def fn(chunk):
        calls.append(len(chunk))
        if len(chunk) > size:
            raise FakeOOM("simulated")
        return [x * 10 for x in chunk]
    return fn


def test_oom_halves_the_batch_and_completes_in_order(monkeypatch):
    monkeypatch.setattr(batching, "OOM_ERRORS", (FakeOOM,))
    calls, warnings = [], []
    chunks = list(batching.run_batched(oom_above(2, calls), range(7), 8, on_oom=warnings.append))
    assert [r for c in chunks for r in c.results] == [x * 10 for x in range(7)]
    assert calls == [7, 4, 2, 2, 2, 1]
    assert [(c.start, c.batch_size, c.limit) for c in chunks] == [(0, 2, 2), (2, 2, 2), (4, 2, 2), (6, 1, 2)]
    assert len(warnings) == 2 and "at batch size 7 " in warnings[0]  # the size that was tried


def test_oom_at_batch_size_one_raises_a_clear_error(monkeypatch):
    monkeypatch.setattr(batching, "OOM_ERRORS", (FakeOOM,))

    def fn(chunk):
        raise FakeOOM("simulated")

    with pytest.raises(batching.OutOfMemory, match="batch size 1 making item 1 "):
        list(batching.run_batched(fn, [1, 2], 2))


def test_a_lone_image_that_runs_out_of_memory_under_a_larger_limit_is_tried_again_at_one(monkeypatch):
    monkeypatch.setattr(batching, "OOM_ERRORS", (FakeOOM,))
    calls = []

    def once(chunk):  # the second call runs out of memory, as another process's peak would make it
        calls.append(list(chunk))
        if len(calls) == 2:
            raise FakeOOM("simulated")
        return chunk

    assert [c.results for c in batching.run_batched(once, [1, 2, 3, 4, 5], 4)] == [[1, 2, 3, 4], [5]]
    assert calls == [[1, 2, 3, 4], [5], [5]]


def test_a_short_chunk_that_runs_out_of_memory_is_retried_smaller_not_at_its_own_size(monkeypatch):
    monkeypatch.setattr(batching, "OOM_ERRORS", (FakeOOM,))
    calls, warnings = [], []
    chunks = list(batching.run_batched(oom_above(2, calls), range(4), 8, on_oom=warnings.append))
    assert calls == [4, 2, 2] and [c.limit for c in chunks] == [2, 2]
    assert warnings[0].startswith("out of memory at batch size 4 (items 0..3); retrying with batch size 2")


def test_out_of_memory_message_counts_as_oom_and_other_errors_propagate():
    def oom_when_big(chunk):
        if len(chunk) > 1:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)")
        return chunk

    assert [c.results for c in batching.run_batched(oom_when_big, "ab", 2)] == [["a"], ["b"]]
    with pytest.raises(KeyError):
        list(batching.run_batched(lambda chunk: {}["missing"], [1], 4))


def test_chunks_are_yielded_before_later_chunks_run():
    seen = []
    batches = batching.run_batched(lambda chunk: seen.append(list(chunk)) or chunk, range(4), 2)
    next(batches)
    assert seen == [[0, 1]]


def test_run_batched_drives_generate_batch_with_real_oom_back_off(pipes, tiny_ref, monkeypatch):
    monkeypatch.setattr(batching, "OOM_ERRORS", (FakeOOM,))
    pipe = pipes.get(tiny_ref, "txt2img", "ddim")
    jobs = [job(tiny_ref, seed=s, width=32, height=32, steps=2) for s in range(5)]

    def fn(chunk):
        if len(chunk) > 2:
            raise FakeOOM("simulated")
        return gen.generate_batch(pipe, chunk, device="cpu")

    chunks = list(batching.run_batched(fn, jobs, 4))
    images = [img for c in chunks for img in c.results]
    alone = gen.generate_batch(pipe, jobs, device="cpu", exact=True)
    assert len(images) == 5 and all(max_diff(a, b) <= 1 for a, b in zip(images, alone))


def test_to_uint8_rounds_and_lays_out_height_width_channels():
    x = torch.tensor([0.0, 0.5, 1.0, 0.2]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = gen.to_uint8(x)[0]
    assert out.shape == (2, 2, 3) and out[:, :, 0].tolist() == [[0, 128], [255, 51]]


def test_prompt_encoding_from_concurrent_streams_keeps_every_embedding_whole(pipes, tiny_ref):
    """Generation streams share the pipeline's tokenizer, whose padding settings are per-call state:
    encodings from several threads at once must still all be padded to the full 77 tokens (unserialised,
    about 2 % of these came back 5 tokens long)."""
    from concurrent.futures import ThreadPoolExecutor

    pipe = pipes.get(tiny_ref, "txt2img", "ddim")

    def encode(thread: int) -> set:
        lengths = set()
        for n in range(100):
            j = job(tiny_ref, prompt=f"a house {thread} {n}", negative_prompt="" if n % 2 else "blurry")
            cond, uncond = gen._embeddings(pipe, [j], cache=None)
            lengths |= {cond.shape[1], uncond.shape[1]}
        return lengths

    with ThreadPoolExecutor(4) as pool:
        assert set().union(*pool.map(encode, range(4))) == {77}
