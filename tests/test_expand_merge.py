"""Templates whose choice paths far outnumber their prompts expand at once (2^40 paths, 80 prompts)."""

import subprocess
import sys
import time
from pathlib import Path

from harness.expand import compile_template

ROOT = Path(__file__).resolve().parents[1]


def test_forty_optional_words_expand_to_their_80_prompts_with_their_first_paths_factors_at_once():
    t = compile_template("".join(f"{{@w{i}: a |}}" for i in range(39)) + "{@last: a|}")
    start = time.perf_counter()
    variants = list(t.expand())
    assert time.perf_counter() - start < 5  # walking its 2^40 paths would never end
    assert [v.prompt for v in variants[:3]] == ["a " * 39 + "a", "a " * 39, "a " * 38 + "a"]
    assert len(variants) == 80 == t.count()  # k words, with or without a trailing space
    # 'a a ' (two words) is first spelt by the first two alternations, the rest left out
    two = next(v for v in variants if v.prompt == "a a ")
    assert [two.factors[f"w{i}"] for i in range(3)] == ["a ", "a ", ""] and two.factors["last"] == ""


def test_plan_of_a_template_with_a_billion_paths_and_31_prompts_takes_seconds(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text('prompt = "a cat' + "{, big|}" * 30 + '"\nseeds = [1]\ncheckpoints = ["tiny"]\n')
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "harness", "plan", str(exp)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "jobs: 31" in r.stdout and time.perf_counter() - start < 60


def test_a_count_past_two_million_overlapping_paths_is_exact_when_the_texts_merge():
    """{a|} x 12, one of 3,000 words, {a|} x 12: 5 * 10^10 paths, 13 * 3,000 * 13 prompts (the a's on each
    side overlap, so the product of the parts' counts is only a bound)."""
    from harness.expand import count_info

    words = "{" + "|".join(f"w{i}" for i in range(3000)) + "}"
    assert count_info(compile_template("{a|}" * 12 + words + "{a|}" * 12).tree) == (13 * 3000 * 13, True)
