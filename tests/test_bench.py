"""The benchmark in its reduced CI mode: both paths make the same images; figures printed."""

from harness.bench import Sweep, run_bench


def test_quick_bench_paths_agree_and_print_ratio():
    lines = []
    fig = run_bench(Sweep(size=64, steps=2, prompts=2, seeds=2), out=lines.append)
    print("\n".join(lines))
    assert fig["images"] == 8
    assert fig["max_diff"] <= 1
    assert lines[-1].startswith("ratio: ") and float(lines[-1].split()[1]) > 0
    assert any(line.startswith("naive loop") for line in lines) and any(line.startswith("harness ") for line in lines)
    assert 0.0 <= fig["harness_outside_share"] <= 1.0
