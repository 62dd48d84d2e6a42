"""The benchmark in its reduced CI mode: both paths make the same images; figures printed."""

from harness.bench import Sweep, run_bench


def test_quick_bench_paths_agree_and_print_ratio():
    lines = []
    fig = run_bench(Sweep(size=64, steps=2, prompts=2, seeds=2), out=lines.append)
    print("\n".join(lines))
    assert fig["images"] == 8
    assert fig["max_diff"] <= 1 and fig["images_agree"]
    assert lines[-1].startswith("ratio: ") and float(lines[-1].split()[1]) > 0
    assert any(line.startswith("naive loop") for line in lines) and any(line.startswith("harness ") for line in lines)
    assert 0.0 <= fig["harness_outside_share"] <= 1.0


def test_every_ablation_row_runs_and_makes_the_same_images(tmp_path):
    """Each optimisation off (batching, writer pool, embedding cache, device uint8, SDPA, ...) and the
    scoring rows: same pixels as the naive loop within 1 level, and every image scored."""
    from harness.ledger import Ledger

    lines = []
    fig = run_bench(Sweep(size=64, steps=2, prompts=2, seeds=1), ablate=True, out=lines.append, keep=tmp_path)
    names = [r.name for r in fig["rows"]]
    for name in ("harness, no batching", "harness, no prompt-embedding cache", "harness, uint8 on the host",
                 "harness, classic attention (no SDPA)", "harness + fused QKV", "harness + CLIP score, background",
                 "harness + CLIP score, after"):
        assert name in names
    assert fig["max_diff"] <= 1
    assert any(f"x {len(names) - 1} harness run(s)" in line for line in lines)
    # Wall time outside pipeline calls counts concurrent streams' calls once: a share, never 0 or above 1.
    assert "harness, one stream" in names
    assert all(0.0 < r.outside_pipeline < 1.0 and 0.0 < r.outside < 1.0 for r in fig["rows"]), \
        [(r.name, r.outside_pipeline, r.outside) for r in fig["rows"]]
    for folder in ("harness___CLIP_score__background", "harness___CLIP_score__after"):
        with Ledger.open(tmp_path / folder, readonly=True) as ledger:
            scores = ledger.scores_frame()
        assert len(scores) == fig["images"] and scores["value"].notna().all()


def test_covered_counts_overlapping_spans_once():
    from harness.measure import covered

    assert covered([]) == 0.0
    assert covered([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]) == 4.0  # two streams overlapping, then a gap
    assert covered([(1.0, 4.0), (2.0, 3.0)]) == 3.0  # a call inside another


def test_the_card_peak_is_the_half_precision_spec_for_the_card_named(monkeypatch):
    """Without a GPU: the card's name and the measured rate are stood in for. An fp32 run gets no peak (the
    table holds fp16/bf16 ones), and an H100 NVL its own, not the SXM card's."""
    import torch

    from harness import measure

    lines = []
    monkeypatch.setattr(measure, "matmul_tflops", lambda device, dtype: 50.0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    assert measure.card_peak("cuda", torch.float16, lines.append) == (989.0, 50.0)
    peak, _ = measure.card_peak("cuda", torch.float32, lines.append)
    assert peak != peak and "no spec peak listed" in lines[-1]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 NVL")
    assert measure.card_peak("cuda", torch.bfloat16, lines.append)[0] == 835.0
    import math

    assert all(math.isnan(x) for x in measure.card_peak("cpu", torch.float16, lines.append))  # no card


def test_ablate_names_a_subset_of_rows_and_rejects_unknown_keys():
    import pytest

    from harness.bench import ABLATIONS, ablation_variants, main
    from harness.worker import Tuning

    names = [name for name, _ in ablation_variants("fuse_qkv, png", "cpu", Tuning())]
    assert names == ["harness + fused QKV", "harness, PNG sync level 6", "harness, PNG sync level 1"]
    every = [name for name, _ in ablation_variants("all", "cuda", Tuning())]
    assert "harness, one stream" not in every and "harness + torch.compile (2nd run)" in every
    assert len(ablation_variants(True, "cpu", Tuning())) == len(every) - 4 + 1  # no compile rows; one stream
    rows = dict(ablation_variants("channels_last,fuse_qkv,compile", "cuda", Tuning(speedups=("fuse_qkv",))))
    assert rows["harness + channels_last"]["tuning"].speedups == ("fuse_qkv", "channels_last")  # adds to --speedups
    assert rows["harness + torch.compile (2nd run)"]["tuning"].speedups == ("fuse_qkv", "compile")
    with pytest.raises(ValueError, match="unknown: fuse") as err:
        ablation_variants("png,fuse", "cpu", Tuning())
    assert all(key in str(err.value) for key in ABLATIONS)
    with pytest.raises(SystemExit):  # argparse error before any measuring
        main(["--ablate", "nope"])
    with pytest.raises(SystemExit):  # one colour word per prompt: 8 at most
        main(["--prompts", "9"])


def test_fuse_qkv_speedup_fuses_the_unet_attention_projections(tmp_path):
    from harness import checkpoints
    from harness.worker import Tuning, _loader

    pipe = _loader(Tuning(speedups=("fuse_qkv",)))(checkpoints.resolve("tiny"), "txt2img", device="cpu")
    attns = [m for m in pipe.unet.modules() if type(m).__name__ == "Attention"]
    assert attns and all(m.fused_projections for m in attns)
    assert type(attns[0].processor).__name__ == "FusedAttnProcessor2_0"


def test_unknown_speedup_is_rejected_with_the_list_of_known_ones(tmp_path):
    import pytest

    from harness.experiment import ExperimentError, load_experiment

    path = tmp_path / "e.toml"
    path.write_text('name = "x"\nprompt = "a cat"\nspeedups = ["fuse_qkv", "turbo"]\n')
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    assert "speedups" in str(err.value) and "'fuse_qkv'" in str(err.value) and "'compile'" in str(err.value)


def test_bench_options_are_checked_before_measuring_and_named_in_one_line(capsys):
    import pytest

    from harness.bench import main

    for args, message in ((["--prompts", "0"], "--prompts 0: expected 1 to 8"),
                          (["--steps", "1"], "--steps 1: expected at least 2"),
                          (["--size", "100"], "--size 100: expected a multiple of 8"),
                          (["--seeds", "0"], "--seeds 0: expected at least 1"),
                          (["--streams", "abc"], "--streams 'abc': expected auto or a whole number"),
                          (["--quick", "--size", "64"], "--quick runs its own 8-image sweep; leave out --size"),
                          (["--quick", "--seeds", "4"], "--quick runs its own 8-image sweep; leave out --seeds"),
                          (["--quick", "--model", "bogus"], "--model 'bogus': key 'checkpoints[0]': unknown checkpoint"),
                          (["--quick", "--device", "nosuch"], "--device/--dtype: "),
                          (["--quick", "--speedups", "bogus"], "--speedups: 'bogus' is not one of channels_last")):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, args


def test_bench_fails_when_the_harness_images_differ_beyond_the_tolerance(monkeypatch, capsys):
    from harness import bench

    monkeypatch.setitem(bench.TOLERANCE, "fp32", -1)  # any difference, even none, is too much
    assert bench.main(["--quick"]) == 1
    assert "DIFFERENT: harness differs by" in capsys.readouterr().out


def test_peak_memory_is_each_rows_own_after_a_reset():
    """On CPU the figure is the resident set's high-water mark since `reset_peak_memory`, so a row after a
    larger one does not inherit its peak (Linux; elsewhere the line says it is the process maximum)."""
    import re
    import sys

    import pytest

    from harness.measure import peak_memory, reset_peak_memory

    if not sys.platform.startswith("linux"):
        pytest.skip("the per-row peak needs Linux's /proc/self/clear_refs")

    def gib(text: str) -> float:
        return float(re.match(r"([\d.]+) GiB RSS$", text).group(1))

    reset_peak_memory("cpu")
    big = bytearray(600 * 2**20)  # filled with zeros: every page touched
    during = gib(peak_memory("cpu"))
    del big
    reset_peak_memory("cpu")
    assert gib(peak_memory("cpu")) < during - 0.4


class _HostEvent:
    """Stands in for torch.cuda.Event: 'runs' when recorded, so its times are the host's."""

    def __init__(self, device):
        import time
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other) -> float:
        return (other.t - self.t) * 1e3


def test_event_timing_gives_the_spans_and_counts_host_timing_gives():
    """The event path (CUDA's, here with host-time events) maps event times onto the host clock: the same
    spans as timing each forward on the host, and the same call and latent counts."""
    from harness import checkpoints
    from harness.measure import DenoiseTimer
    from harness.pipelines import load_pipeline

    pipe = load_pipeline(checkpoints.resolve("tiny"), "txt2img", device="cpu")
    host, events = DenoiseTimer(), DenoiseTimer(events=_HostEvent)
    host.attach(pipe)
    events.attach(pipe)
    pipe(["a red cube", "a blue ball"], num_inference_steps=3, height=64, width=64)
    assert events.calls == host.calls >= 3 and events.latents == host.latents == 4 * host.calls  # 2 prompts, guided
    assert len(events.unet_spans) == host.calls
    for (hs, he), (es, ee) in zip(host.unet_spans, events.unet_spans):
        assert abs(hs - es) < 0.05 and abs(he - ee) < 0.05 and ee > es
    assert abs(events.seconds - host.seconds) < 0.05 and events.seconds > 0
