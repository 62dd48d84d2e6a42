"""The benchmark in its reduced CI mode: both paths make the same images; figures printed."""

import gc

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


def test_repeated_rounds_alternate_the_paths_and_give_the_median_ratio():
    """On a shared CPU a load that comes and goes falls on one path more than the other: rounds alternate
    them and the ratio is the median of the rounds'; every round's images are checked."""
    import statistics

    lines = []
    fig = run_bench(Sweep(size=64, steps=2, prompts=1, seeds=2), repeat=3, out=lines.append)
    names = [r.name for r in fig["rows"]]
    assert names == ["naive loop", "harness", "naive loop, round 2", "harness, round 2", "naive loop, round 3",
                     "harness, round 3"]
    rates = {r.name: r.rate for r in fig["rows"]}
    ratios = [rates[h] / rates[n] for n, h in zip(names[::2], names[1::2])]
    assert fig["ratios"] == ratios and fig["ratio"] == statistics.median(ratios)
    assert f"rounds: 3; ratio per round {', '.join(f'{x:.2f}' for x in ratios)}" in "\n".join(lines)
    assert lines[-1] == f"ratio: {statistics.median(ratios):.2f}" and fig["images_agree"]


def test_every_ablation_row_runs_and_makes_the_same_images(tmp_path):
    """Each optimisation off (batching, writer pool, embedding cache, device uint8, SDPA, ...) and the
    scoring rows: same pixels as the naive loop within 1 level, and every image scored."""
    from harness.ledger import Ledger

    lines = []
    fig = run_bench(Sweep(size=64, steps=2, prompts=2, seeds=1), ablate=True, out=lines.append, keep=tmp_path)
    names = [r.name for r in fig["rows"]]
    assert "harness, uint8 on the host" not in names  # on a CPU it would run the harness row's own code
    for name in ("harness, no batching", "harness, no prompt-embedding cache",
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
    assert [measure.spec_peak(n) for n in ("NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA H100 PCIe")] == [989, 835, 756]
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
    # On a CPU: no compile, CUDA-graph or timesteps-on-the-card rows, no uint8-on-the-host row; a one-stream row.
    assert len(ablation_variants(True, "cpu", Tuning())) == len(every) - 4 - 2 - 1 - 1 + 1
    graphs = dict(ablation_variants("cudagraphs", "cuda", Tuning()))
    assert [row["tuning"].speedups for row in graphs.values()] == [("channels_last", "fuse_qkv", "cudagraphs")] * 2
    notes: list[str] = []
    assert ablation_variants("cudagraphs", "cpu", Tuning(), notes) == [] and "CUDA device" in notes[0]
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


def test_cudagraphs_speedup_compiles_the_unet_for_graph_replay(monkeypatch):
    import torch

    from harness import checkpoints
    from harness.worker import Tuning, _loader

    modes = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: modes.append(kw.get("mode")) or module)
    for speedups in (("compile",), ("cudagraphs",), ("compile", "cudagraphs")):
        _loader(Tuning(speedups=speedups))(checkpoints.resolve("tiny"), "txt2img", device="cpu")
    assert modes == [None, "reduce-overhead", "reduce-overhead"]  # compiled once, with graphs where asked


def test_cudagraphs_off_cuda_is_refused_naming_the_key(tmp_path, capsys):
    import pytest

    from harness.bench import main
    from harness.core import SettingsError
    from harness.run import run_experiment

    path = tmp_path / "e.toml"
    path.write_text('name = "x"\nprompt = "a cat"\ncheckpoints = ["tiny"]\nspeedups = ["cudagraphs"]\n'
                    'device = "cpu"\n')
    with pytest.raises(SettingsError, match=r"e\.toml \(key 'speedups'\): 'cudagraphs' .* needs a CUDA device; "
                                            r"this run's device is cpu"):
        run_experiment(path, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
    with pytest.raises(SystemExit) as exc:
        main(["--quick", "--device", "cpu", "--speedups", "cudagraphs"])
    assert exc.value.code == 2
    assert "--speedups cudagraphs replays CUDA graphs, so it needs a CUDA device; the device is cpu" in \
        capsys.readouterr().err


def test_cudagraphs_with_cpu_offload_is_refused_naming_both_keys(tmp_path, monkeypatch):
    import pytest

    from harness import devices
    from harness.core import SettingsError
    from harness.experiment import load_experiment
    from harness.run import _check_cudagraphs

    path = tmp_path / "e.toml"
    path.write_text('name = "x"\nprompt = "a cat"\ncheckpoints = ["tiny"]\nspeedups = ["cudagraphs"]\n'
                    'memory = ["model_cpu_offload"]\n')
    exp = load_experiment(path)
    monkeypatch.setattr(devices, "pick_device", lambda device: "cuda:0")  # as on a CUDA machine
    with pytest.raises(SettingsError, match=r"\(key 'speedups'\): 'cudagraphs' needs the UNet's weights to stay "
                                            r"on the card, but key 'memory' has 'model_cpu_offload'"):
        _check_cudagraphs(exp, "cuda")
    path.write_text(path.read_text().replace('["model_cpu_offload"]', '"auto"'))
    _check_cudagraphs(load_experiment(path), "cuda")  # weights that stay on the card: accepted


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
                          (["--quick", "--model", "bogus"], "--model 'bogus': unknown checkpoint 'bogus'"),
                          (["--size", "60", "--steps", "1", "--streams", "0"],  # every bad option in the one line
                           "--size 60: expected a multiple of 8, at least 64; --steps 1: expected at least 2 "
                           "(img2img at strength 0.5 runs int(0.5 * steps) steps); --streams '0': expected auto"),
                          (["--quick", "--device", "nosuch"], "--device: device='nosuch': expected 'auto'"),
                          (["--size", "60", "--dtype", "xyz", "--device", "tpu", "--ablate", "nope"],
                           "--size 60: expected a multiple of 8, at least 64; --device: device='tpu': expected "
                           "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; --dtype: dtype='xyz': expected 'auto', 'fp32', "
                           "'fp16', 'bf16'; --ablate 'nope': expected 'all'"),
                          (["--quick", "--speedups", "bogus"], "--speedups: 'bogus' is not one of channels_last"),
                          (["--streams", "65"], "--streams '65': expected auto or a whole number of threads, 1 to 64"),
                          (["--quick", "--size", "64", "--repeat", "0"],  # --quick's conflict is one problem among all
                           "--quick runs its own 8-image sweep; leave out --size; --repeat 0: expected at least 1")):
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
    gc.disable()  # a collection between the two timers' hooks would be counted by one alone
    try:
        pipe(["a red cube", "a blue ball"], num_inference_steps=3, height=64, width=64)
    finally:
        gc.enable()
    assert events.calls == host.calls >= 3 and events.latents == host.latents == 4 * host.calls  # 2 prompts, guided
    assert len(events.unet_spans) == host.calls
    for (hs, he), (es, ee) in zip(host.unet_spans, events.unet_spans):
        assert abs(hs - es) < 0.2 and abs(he - ee) < 0.2 and ee > es  # apart by the hooks between them
    assert abs(events.seconds - host.seconds) < 0.2 and events.seconds > 0


def test_uint8_on_the_host_is_left_out_on_cpu_and_said_so_when_asked_for():
    """On a CPU the images are on the host already, so the row would run the harness row's code: it is
    left out (as the one-stream row is on CUDA), with a line saying why when it was named explicitly."""
    from harness.bench import ablation_variants
    from harness.worker import Tuning

    notes = []
    assert ablation_variants("uint8", "cpu", Tuning(), notes) == []
    assert len(notes) == 1 and notes[0].startswith("--ablate uint8: left out on cpu: ") and "no-op" in notes[0]
    for device in ("cuda", "cuda:1", "mps"):  # a real copy from the device there
        rows = ablation_variants("uint8", device, Tuning(), notes)
        assert [name for name, _ in rows] == ["harness, uint8 on the host"]
        assert rows[0][1]["tuning"].device_uint8 is False
    notes.clear()
    ablation_variants("streams,png", "cuda:0", Tuning(), notes)
    assert len(notes) == 1 and notes[0].startswith("--ablate streams: left out on cuda:0: ")
    notes.clear()
    ablation_variants("all", "cpu", Tuning(), notes)
    assert notes == []  # 'all' asked for no row in particular


def test_ablate_leaves_out_rows_that_would_be_the_harness_row_itself_and_says_why():
    """--speedups channels_last makes '+ channels_last' the harness row; --streams 1 'one stream';
    --batch-size 1 'no batching': such rows would measure nothing, so they are left out, with a line."""
    from harness.bench import ablation_variants
    from harness.worker import Tuning

    notes = []
    rows = ablation_variants("channels_last,fuse_qkv,streams,batching", "cpu",
                             Tuning(speedups=("channels_last",), streams=1), notes, batch_size=1)
    assert [name for name, _ in rows] == ["harness + fused QKV"]
    assert [n.split(":")[0] for n in notes] == ["--ablate channels_last", "--ablate streams", "--ablate batching"]
    assert "already" in notes[0] and "one stream already" in notes[1] and "--batch-size 1" in notes[2]
    assert len(ablation_variants("streams,batching", "cpu", Tuning(streams=2), batch_size=4)) == 2


def test_a_dtype_alias_is_the_sweeps_dtype(monkeypatch):
    """`--dtype FP32` (or float32, half) is what pick_dtype reads; the sweep's experiment gets its name."""
    import pytest

    from harness import bench

    seen = {}

    def stop(exp, *args, **kwargs):  # the warm-up run: the sweep's experiment has loaded
        seen["dtype"] = exp.dtype
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench, "harness_run", stop)
    with pytest.raises(RuntimeError, match="stop here"):
        bench.run_bench(Sweep(size=64, steps=2, prompts=1, seeds=1), dtype="FLOAT32", out=lambda line: None)
    assert seen == {"dtype": "fp32"}


def test_ablate_refuses_a_key_named_twice(capsys):
    """A repeated key would measure a second row into the first one's folder, whose ledger says every image
    is done: refused before anything is measured."""
    import pytest

    from harness.bench import ablation_variants, main
    from harness.worker import Tuning

    with pytest.raises(ValueError, match="uint8 named more than once"):
        ablation_variants("uint8,png, uint8", "cuda", Tuning())
    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--ablate", "uint8,uint8"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--ablate 'uint8,uint8': uint8 named more than once" in err


def test_a_row_that_generated_fewer_images_than_planned_is_refused(monkeypatch):
    """Images/s counts the images a row made: a row whose folder already held them (here a row named
    "harness", which measures into the harness row's folder) made none and must not report a rate."""
    import pytest

    from harness import bench

    monkeypatch.setattr(bench, "ablation_variants", lambda *a, **k: [("harness", {})])
    with pytest.raises(RuntimeError, match="'harness' generated 0 of the sweep's 2 images"):
        run_bench(Sweep(size=64, steps=2, prompts=1, seeds=2, strengths=()), ablate="x", out=lambda line: None)


def test_the_naive_loop_loads_the_init_image_once(tmp_path, monkeypatch):
    """A user's loop loads its init image before the loop, as the harness caches it: not once per job."""
    import torch
    from PIL import Image

    from harness import images
    from harness.bench import naive_loop
    from harness.experiment import load_experiment
    from harness.measure import DenoiseTimer
    from harness.plan import make_plan

    sweep = Sweep(size=64, steps=2, prompts=1, seeds=2)
    Image.radial_gradient("L").convert("RGB").resize((64, 64)).save(tmp_path / "init.png")
    (tmp_path / "bench.toml").write_text(sweep.experiment_toml(tmp_path / "init.png"))
    exp = load_experiment(tmp_path / "bench.toml")
    plan = make_plan(exp)
    assert sum(j.mode == "img2img" for j in plan.jobs) == 2
    loads = []
    real = images.load_init_image
    monkeypatch.setattr(images, "load_init_image", lambda *a: loads.append(a) or real(*a))
    seconds, made = naive_loop(exp, plan, tmp_path / "naive", "cpu", torch.float32, DenoiseTimer())
    assert made == len(plan.jobs) == 4 and seconds > 0
    assert len(loads) == 1


def test_the_tflops_line_leaves_out_the_share_of_a_peak_not_listed():
    """fp32 on CUDA has no spec peak (NaN): the line gives the share of the measured matrix-product rate
    only, never "nan% of peak"."""
    from harness.bench import Figures, tflops_line

    row = Figures("harness", 8, 10.0, 2.0, 5.0, 4, 16, "1 GiB GPU")
    line = tflops_line(row, 1e12, float("nan"), 100.0)
    assert "nan" not in line and "of peak" not in line
    assert "8.0 TFLOP/s in the denoising loop (8.0% of the measured matrix-product rate; 16 latent" in line
    assert "(0.8% of peak, 8.0% of the measured" in tflops_line(row, 1e12, 1000.0, 100.0)


def test_the_peak_memory_says_it_is_the_process_peak_when_the_reset_fails(tmp_path, monkeypatch):
    """Where /proc/self/clear_refs cannot be written the high-water mark is the process's so far, which
    may be an earlier row's: the figure says so instead of passing for the row's own."""
    import sys

    import pytest

    from harness import measure

    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM is Linux's")
    monkeypatch.setattr(measure, "CLEAR_REFS", str(tmp_path / "missing" / "clear_refs"))
    assert measure.reset_peak_memory("cpu") is False
    assert measure.peak_memory("cpu", reset=False).endswith(" GiB RSS (process peak so far: not reset)")
    lines = []
    fig = run_bench(Sweep(size=64, steps=2, prompts=1, seeds=1, strengths=()), out=lines.append)
    assert all(r.memory.endswith("(process peak so far: not reset)") for r in fig["rows"]), fig["rows"]
    monkeypatch.undo()
    assert measure.reset_peak_memory("cpu") is True
    assert measure.peak_memory("cpu", reset=True).endswith(" GiB RSS")


def test_denoise_timer_hooks_run_around_a_compiled_unet():
    """The timing hooks stay plain Python under torch.compile: every call records its own pair of events
    (traced into the graph, they would be recorded once while tracing and never at run time)."""

    import torch

    from harness import checkpoints
    from harness.measure import DenoiseTimer
    from harness.worker import Tuning, _loader

    made, traced = [], []

    class Event:
        def __init__(self):  # traceable, as torch.cuda.Event is: nothing here breaks dynamo's graph
            traced.append(torch.compiler.is_compiling())
            made.append(self)
            self.t = len(made)

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return float(other.t - self.t)

    timer = DenoiseTimer(events=lambda device: Event())
    pipe = _loader(Tuning())(checkpoints.resolve("tiny"), "txt2img", device="cpu")
    torch._dynamo.reset()
    pipe.unet = torch.compile(pipe.unet, backend="eager")  # dynamo's tracing without Inductor: seconds
    timer.attach(pipe)
    for _ in range(2):
        pipe("a red circle", num_inference_steps=3, height=64, width=64, output_type="np")
    calls = timer.calls
    assert calls >= 6 and timer.latents == 2 * calls  # a guided pair per call, every step timed
    assert len(made) == 1 + 2 * calls  # the origin, then a start and an end per call
    spans = timer.unet_spans
    assert len(spans) == calls and all(end > start for start, end in spans)
    assert not any(traced)  # never made while dynamo traced the UNet
