"""`harness bench-unet`: the UNet's attention shapes, and the command on the tiny model on CPU."""

import pytest

from harness.bench_unet import AttentionShape, attention_shapes, main, run, unet_config


def test_attention_shapes_of_the_built_in_configs():
    assert attention_shapes(unet_config("sd15"), 64) == [
        AttentionShape(4096, 8, 40, 5), AttentionShape(1024, 8, 80, 5),
        AttentionShape(256, 8, 160, 5), AttentionShape(64, 8, 160, 1)]
    assert [(s.tokens, s.heads, s.head_dim, s.count) for s in attention_shapes(unet_config("sd2"), 96)] == [
        (9216, 5, 64, 5), (2304, 10, 64, 5), (576, 20, 64, 5), (144, 20, 64, 1)]
    assert attention_shapes(unet_config("tiny"), 16) == [AttentionShape(64, 8, 8, 4)]
    assert AttentionShape(4096, 8, 40, 5).flops(2) == 4 * 2 * 8 * 4096 ** 2 * 40


@pytest.mark.parametrize("model", ["sd15", "sd2", "tiny"])
def test_attention_shapes_match_the_model_diffusers_builds(model):
    """Heads, head width and count of every self-attention in the real module tree (built on the meta
    device: no memory, no weights)."""
    import torch
    from diffusers import UNet2DConditionModel

    cfg = unet_config(model)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    built = {}
    for name, module in unet.named_modules():
        if name.endswith("attn1"):
            key = (module.heads, module.inner_dim // module.heads)
            built[key] = built.get(key, 0) + 1
    expected = {}
    for s in attention_shapes(cfg, 64):
        expected[(s.heads, s.head_dim)] = expected.get((s.heads, s.head_dim), 0) + s.count
    assert built == expected


def test_bench_unet_on_the_tiny_model_prints_every_figure():
    lines = []
    fig = run("tiny", device="cpu", batch=1, size=128, iters=1, out=lines.append)
    print("\n".join(lines))
    assert fig["gflop_per_latent"] > 0 and set(fig["modes"]) == {"eager"}
    assert fig["modes"]["eager"]["ms"] > 0
    assert any(line.startswith("eager ") and "ms per forward" in line for line in lines)
    attention = [line for line in lines if line.startswith("self-attention")]
    assert len(attention) == 1 and "64 tokens x 8 heads of   8 (x4)" in attention[0]
    assert "as 1 head of 64" in attention[0]
    assert lines[-1].startswith("best: eager ")


@pytest.mark.parametrize("argv, message", [
    (["--modes", "eager,fast"], "--modes: 'fast' is not one of eager, compile, freezing"),
    (["--speedups", "compile"], "--speedups: 'compile' is not one of channels_last, fuse_qkv"),
    (["--size", "100"], "--size 100: expected a multiple of 64"),
    (["--batch", "0"], "--batch 0: expected at least 1"),
    (["--iters", "-1"], "--iters -1: expected at least 1"),
    (["--model", "sdxl"], "invalid choice: 'sdxl'"),
    (["--modes", "cudagraphs", "--device", "cpu"], "--modes: mode 'cudagraphs' needs a CUDA device, not cpu"),
])
def test_bad_options_are_named_before_anything_is_built(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_cli_passes_options_through():
    from typer.testing import CliRunner

    from harness.cli import app

    result = CliRunner().invoke(app, ["bench-unet", "--modes", "warp"])
    assert result.exit_code == 2
    assert "'warp' is not one of eager, compile, freezing" in result.output


@pytest.mark.slow
def test_compiled_modes_run_and_leave_freezing_off():
    """torch.compile, with and without Inductor freezing (minutes on a CPU; on a GPU it is the default)."""
    import torch._inductor.config as inductor

    lines = []
    fig = run("tiny", device="cpu", batch=1, size=64, iters=1, modes=("compile", "freezing"), out=lines.append)
    assert set(fig["modes"]) == {"compile", "freezing"} and all(m["ms"] > 0 for m in fig["modes"].values())
    assert inductor.freezing is False


def test_flops_count_attention_the_same_with_sdpa_and_classic_attention():
    """FlopCounterMode has no formula for the CPU flash-attention kernel: counted under SDPA's math backend,
    the tiny UNet's FLOPs on the CPU are those of the classic (matmul + softmax) processor, as on CUDA."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    from harness.measure import unet_flops

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config("tiny")).eval()
    sdpa = unet_flops(unet, 128, "cpu")
    unet.set_attn_processor(AttnProcessor())
    classic = unet_flops(unet, 128, "cpu")
    assert sdpa == classic > 0
    attention = sum(s.count * s.flops(1) for s in attention_shapes(unet_config("tiny"), 16))
    assert attention > 0 and sdpa > attention  # self-attention's products are a part of the count


class _FakeStream:
    def __init__(self, device):
        import torch
        self.device = torch.device(device) if device is not None else None


class _FakeCuda:
    """Stands in for torch.cuda's events, streams and synchronisation without a GPU, recording the device
    or stream each is given (None: the current card)."""

    def __init__(self, monkeypatch):
        import time

        import torch

        self.recorded, self.synced = [], []
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self, stream=None):
                fake.recorded.append(stream)
                self.t = time.perf_counter()

            def synchronize(self):
                pass

            def elapsed_time(self, other):
                return (other.t - self.t) * 1e3

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream(device))
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: self.synced.append(device))

    def devices(self):
        import torch
        return ({None if s is None else s.device for s in self.recorded},
                {None if d is None else torch.device(d) for d in self.synced})


def test_the_timer_records_and_synchronises_on_the_card_asked_for(monkeypatch):
    """`--device cuda:1`: the events are recorded on cuda:1's stream and cuda:1 is synchronised; with no
    device they would mark and wait for the current card (cuda:0) while the work runs on cuda:1."""
    import torch

    from harness.bench_unet import _timer

    fake = _FakeCuda(monkeypatch)
    calls = []
    sec = _timer("cuda:1")(lambda: calls.append(1), 4)
    assert len(calls) == 3 + 4 and sec >= 0
    assert len(fake.recorded) == 2 and fake.synced
    assert fake.devices() == ({torch.device("cuda:1")}, {torch.device("cuda:1")})


def test_the_kernel_split_synchronises_the_card_asked_for(monkeypatch):
    import contextlib

    import torch
    import torch.profiler

    from harness.bench_unet import _kernel_split

    fake = _FakeCuda(monkeypatch)

    class Profile(contextlib.nullcontext):
        def key_averages(self):
            return []

    monkeypatch.setattr(torch.profiler, "profile", lambda **kw: Profile(Profile()))
    lines = []
    assert _kernel_split("eager", lambda: None, lines.append, "cuda:1") == {}
    assert fake.synced and fake.devices()[1] == {torch.device("cuda:1")}


def test_sd2_random_has_sd2_shapes():
    """The `sd2-random` built-in's UNet and text tower have SD v2's published sizes, heads 64 wide."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from harness.checkpoints import BUILTINS
    from harness.tiny import SD2_TEXT, SD2_UNET

    assert BUILTINS["sd2-random"].family == "sd2" and BUILTINS["sd2-random"].native_size == 512
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD2_UNET)
        text = CLIPTextModel(CLIPTextConfig(**SD2_TEXT))
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6) == 866
    assert round(sum(p.numel() for p in text.parameters()) / 1e6) == 340
    assert {s.head_dim for s in attention_shapes(SD2_UNET, 64)} == {64}
    assert unet_config("sd2") == SD2_UNET


def test_time_candidate_times_a_kernel_and_names_a_configuration_that_cannot_run():
    import torch

    from harness.bench_unet import _timer, time_candidate

    exact = torch.ones(4)
    sec, diff = time_candidate(lambda: torch.ones(4, dtype=torch.float16) * 1.5, exact, _timer("cpu"), 2)
    assert sec > 0 and diff == 0.5

    def too_big():
        raise RuntimeError("out of resource: shared memory, required: 262144, hardware limit: 232448")

    assert time_candidate(too_big, exact, _timer("cpu"), 2) == (
        "RuntimeError: out of resource: shared memory, required: 262144, hardware limit: 232448")
