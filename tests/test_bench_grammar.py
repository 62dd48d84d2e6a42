"""`python -m harness.bench_grammar`: its options, and --help that prints help instead of measuring."""

import pytest

from harness import bench_grammar


def test_help_prints_the_options_and_measures_nothing(monkeypatch, capsys):
    monkeypatch.setattr(bench_grammar, "run", lambda *a, **k: pytest.fail("--help ran the benchmark"))
    with pytest.raises(SystemExit) as exit_:
        bench_grammar.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--repeats" in text and "--samples" in text and "--wildcard-lines" in text and "28,800 prompts" in text


def test_options_set_the_repeats_and_the_sample_size():
    lines = []
    assert bench_grammar.main(["--repeats", "1", "--samples", "50", "--wildcard-lines", "300"],
                              out=lines.append) == 0
    assert lines[0] == "template: 6 factors, 28800 prompts; best of 1 run(s)"
    assert lines[1].startswith("exhaustive: ") and lines[2].endswith("prompts/s (50 drawn)")
    assert lines[3].startswith("wildcard of 300 lines ('a __things__ in the {rain|snow}'): compiled in ")
    assert lines[3].endswith(" s") and "100 distinct prompts sampled in" in lines[3]


@pytest.mark.parametrize("argv, message", [(["--repeats", "0"], "--repeats 0: expected at least 1"),
                                           (["--samples", "-5"], "--samples -5: expected at least 1"),
                                           (["--samples", "many"], "invalid int value: 'many'"),
                                           (["--wildcard-lines", "0"], "--wildcard-lines 0: expected at least 1")])
def test_bad_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_grammar.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
