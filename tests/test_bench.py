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


def test_every_ablation_row_runs_and_makes_the_same_images(tmp_path):
    """Each optimisation off (batching, writer pool, embedding cache, device uint8, SDPA, ...) and the
    scoring rows: same pixels as the naive loop within 1 level, and every image scored."""
    from harness.ledger import Ledger

    lines = []
    fig = run_bench(Sweep(size=64, steps=2, prompts=2, seeds=1), ablate=True, out=lines.append, keep=tmp_path)
    names = [r.name for r in fig["rows"]]
    for name in ("harness, no batching", "harness, no prompt-embedding cache", "harness, uint8 on the host",
                 "harness, classic attention (no SDPA)", "harness + CLIP score, background",
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
    from harness.bench import covered

    assert covered([]) == 0.0
    assert covered([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]) == 4.0  # two streams overlapping, then a gap
    assert covered([(1.0, 4.0), (2.0, 3.0)]) == 3.0  # a call inside another
