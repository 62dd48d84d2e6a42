"""Prompts that differ only in a trailing comma are one prompt to search and ablation; metrics named twice
are measured once; malformed `[search] operators` and bootstrap seeds are named; a comparison without pairs
says why even when no column and no level is to blame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from harness.ablation import FULL, arms_for
from harness.cli import app
from harness.core import Variant
from harness.experiment import ExperimentError
from harness.mutate import Resources
from harness.search import initial_population
from harness.stats import paired_compare
from test_search import LIBRARY, RAW, config


def test_generation_zero_holds_one_prompt_per_set_of_clauses():
    cfg = config({**RAW, "search": {"population": 3, "generations": 0}})
    variants = [Variant("a castle, ", {"tail": ", "}), Variant("a castle", {"tail": ""}),
                Variant("a castle, moat", {"tail": "m"})]
    pop = initial_population(variants, cfg, Resources.load(LIBRARY))
    initial = [c for c in pop if c.operator == "initial"]
    assert [c.prompt for c in initial] == ["a castle, ", "a castle, moat"]  # the first spelling kept
    assert initial[0].args == {"factors": {"tail": ", "}}
    assert len(pop) == 3 and pop[2].operator != "initial"  # the freed slot goes to a mutant


def test_ablation_studies_a_prompt_once_whatever_its_trailing_comma():
    arms, single = arms_for([Variant("a castle, oil painting, ", {}), Variant("a castle, oil painting", {}),
                             Variant("a castle,  oil painting", {})])
    assert {a.base for a in arms} == {"a castle, oil painting, "}
    assert arms[0].label == FULL and len(arms) == 3 and single == []


def test_ablate_measures_a_metric_named_twice_once(tmp_path):
    exp = tmp_path / "ab.toml"
    exp.write_text('prompt = "a castle, oil painting{, |}"\nseeds = [1, 2]\ncheckpoints = ["tiny"]\nsteps = 1\n'
                   'width = 64\nheight = 64\n')
    r = CliRunner().invoke(app, ["ablate", str(exp), "--out", str(tmp_path / "out"), "-m", "clip_score:model=tiny",
                                 "-m", "clip_score:model=tiny,pretrained=tiny", "-m", "clip_score:model=tiny"])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "out" / "tables" / "ablation.csv")
    assert len(table) == 2  # one prompt (the trailing comma is no second study), two clauses, one metric
    assert table["metric"].nunique() == 1 and "(#1)" not in r.output


def test_search_operators_that_are_not_names_are_named_without_a_traceback():
    with pytest.raises(ExperimentError) as e:
        config({**RAW, "search": {**RAW["search"], "operators": [["swap"], ["swap"]]}})
    assert any("search.operators" in p and "a table of operator = rate, or a list of operator names" in p
               for p in e.value.problems), e.value.problems


def test_checker_names_repeated_entries_that_cannot_be_hashed():
    from harness.checks import Checker

    checker = Checker(Path("e.toml"))
    checker.distinct("k", [["a"], ["a"], {"b": 1}])
    assert checker.problems == ["key 'k': got [['a'], ['a'], {'b': 1}], expected each entry once (repeated: ['a'])"]


@pytest.mark.parametrize("command", ["compare", "ablate"])
def test_a_negative_bootstrap_seed_is_refused_by_name(command, tmp_path):
    args = ([command, str(tmp_path), "--factor", "x"] if command == "compare" else [command, str(tmp_path / "e.toml")])
    r = CliRunner().invoke(app, [*args, "--seed", "-1"], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and "Invalid value for '--seed'" in r.output and "greater than or equal to 0" in r.output


def test_no_pairs_note_says_why_when_no_column_or_level_is_to_blame():
    """Every pair column takes its values at both levels, but never in one combination (an unmerged shard)."""
    rows = [{"key": f"{c}-{s}-{a}", "f.color": c, "f.artist": a, "checkpoint": "tiny", "seed": s, "stage": "main",
             "m.score": float(s), "healthy": True}
            for (c, s, a) in [("red", 1, "x"), ("blue", 2, "x"), ("red", 2, "y"), ("blue", 1, "y")]]
    c = paired_compare(pd.DataFrame(rows), factor="f.artist", metric="score", rng=np.random.default_rng(0), n_boot=100)
    note = c.rows[0].note
    assert c.rows[0].n_pairs == 0
    assert note.startswith("no complete pairs: no combination of ") and "f.color" in note and "seed" in note
    assert "shard" in note
