"""Templates over large wildcard files: seeded draws stay the same, and the passes over a wildcard's options
are made once per template rather than once per draw or per call."""

from __future__ import annotations

import random

import pytest

from harness.expand import compile_template, counting, paths, sampling
from harness.wildcards import WildcardLibrary


def library(tmp_path, lines: int) -> WildcardLibrary:
    (tmp_path / "things.txt").write_text("\n".join(f"thing {i}" for i in range(lines)) + "\n", encoding="utf-8")
    return WildcardLibrary([tmp_path])


def test_seeded_draws_are_those_the_harness_has_always_made(tmp_path):
    """A study's `prompt_seed` must name the same prompts after an upgrade (pinned from an earlier release)."""
    t = compile_template("{0.2::a|0.8::the} __things__ {2$$red|green|blue}{, by x|}", library=library(tmp_path, 300))
    assert t.count() == 7200
    assert [v.prompt for v in t.sample(6, random.Random(7))] == [
        "the thing 77 green,red, by x", "the thing 29 red,green, by x", "the thing 282 red,blue, by x",
        "the thing 298 green,red, by x", "a thing 68 green,blue", "the thing 92 green,blue"]
    assert [v.prompt for v in t.sample(4, random.Random(3), replace=True)] == [
        "the thing 278 green,blue, by x", "the thing 240 green,red", "the thing 281 green,blue, by x",
        "the thing 267 blue,green, by x"]


def test_an_alternations_weights_are_read_once_per_sample_not_per_draw(tmp_path, monkeypatch):
    t = compile_template("a __things__ in the {rain|snow}", library=library(tmp_path, 2000))
    reads = []
    real = paths._weights
    monkeypatch.setattr(sampling, "_weights", lambda alt: reads.append(len(alt.options)) or real(alt))
    drawn = t.sample(200, random.Random(0), replace=True)
    assert len(drawn) == 200 and len({v.factors["things"] for v in drawn}) > 150
    assert sorted(reads) == [2, 2000]


def test_a_templates_language_is_built_once_for_count_sample_and_expand(tmp_path, monkeypatch):
    t = compile_template("a __things__ in the {rain|snow}", library=library(tmp_path, 2000))
    roots = []
    real = counting._lang
    monkeypatch.setattr(counting, "_lang", lambda node: (roots.append(node) if node is t.tree else None) or real(node))
    assert t.count() == 4000
    assert len(t.sample(50, random.Random(0))) == 50
    assert next(iter(t.expand())).prompt == "a thing 0 in the rain"
    assert t.count_info() == (4000, True)
    assert len(roots) == 1


def test_a_remembered_language_belongs_to_its_own_tree(tmp_path):
    """Trees are remembered by identity with the tree kept, so a later tree never reads an earlier one's."""
    lib = library(tmp_path, 50)
    counts = [compile_template(f"a __things__{' {x|y}' * k}", library=lib).count() for k in range(12)]
    assert counts == [50 * 2 ** k for k in range(12)]


@pytest.mark.parametrize("lines", [1, 3])
def test_tiny_wildcards_still_count_and_sample(tmp_path, lines):
    t = compile_template("__things__", library=library(tmp_path, lines))
    assert t.count() == lines
    assert sorted(v.prompt for v in t.sample(lines, random.Random(0))) == sorted(f"thing {i}" for i in range(lines))
