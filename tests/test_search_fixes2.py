"""Prompt search fixes: repeated [search] modifiers are refused, a fitness metric that scores none of
generation 0's images stops the search (and the fixed experiment resumes on the images made), and the
trajectory's population-mean interval stays in the fitness's range."""

import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from harness.experiment import ExperimentError, experiment_from_dict
from harness.ledger import Ledger
from harness.metrics.base import Metric, MetricInfo, Option, register
from harness.search import Candidate, Generation, SearchError, evolve, rank, search_config, unscored_fitness
from harness.search_report import trajectory_frame
from harness.stats import t_interval
from harness.wildcards import WildcardLibrary

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = WildcardLibrary([ROOT / "grammars"])
RAW = {"prompt": "a castle, oil painting", "metrics": ["clip_score:model=tiny"],
       "search": {"population": 4, "generations": 2}}


@register
class PromptWord(Metric):
    """1 if the prompt holds the word, else 0 (the image is ignored): a known fitness per prompt."""

    INFO = MetricInfo(name="fixes2_word", description="1 if the prompt holds the word", unit="flag",
                      range=(0.0, 1.0), higher_is_better=True, needs=frozenset({"prompt"}))
    OPTIONS = {"word": Option("red", "the word to look for")}

    def _score(self, items):
        return [(float(self.options["word"] in item.prompt.split()), {}) for item in items]


@pytest.fixture(autouse=True)
def shipped_lists(monkeypatch):
    monkeypatch.setenv("HARNESS_GRAMMARS", str(ROOT / "grammars"))


def config(raw):
    return search_config(experiment_from_dict(raw, Path("/tmp/study.toml")), LIBRARY)


# ----------------------------------------------------------------------------- [search] modifiers


def test_a_repeated_search_modifier_is_refused_like_repeated_operators_and_metrics():
    with pytest.raises(ExperimentError) as e:
        config({**RAW, "search": {**RAW["search"], "modifiers": ["styles", "mediums", "styles"]}})
    assert e.value.problems == [("key 'search.modifiers': got ['styles', 'mediums', 'styles'], expected each "
                                 "entry once (repeated: 'styles')")]
    assert config({**RAW, "search": {**RAW["search"], "modifiers": ["styles", "mediums"]}}).modifiers == (
        "styles", "mediums")


def test_an_empty_modifier_list_is_refused_like_an_empty_lists_option():
    with pytest.raises(ExperimentError) as e:
        config({**RAW, "search": {**RAW["search"], "modifiers": []}})
    assert e.value.problems == ["key 'search.modifiers': got [], expected one or more wildcard list names such as "
                                "[\"styles\", \"colours\"] (leave the key out for the default lists)"]


def test_a_missing_modifier_given_twice_is_reported_as_repeated_and_missing_once():
    with pytest.raises(ExperimentError) as e:
        config({**RAW, "search": {**RAW["search"], "modifiers": ["nope", "nope"]}})
    text = str(e.value)
    assert "each entry once (repeated: 'nope')" in text and text.count("no wildcard list 'nope'") == 1


# ----------------------------------------------------------------------------- trajectory interval


def test_the_population_mean_interval_is_cut_to_the_fitness_range():
    """Three CLIP scores (range 0-100) far apart: the t interval of their mean goes below 0 (it was in
    tables/search_trajectory.md); cut to the range, as each candidate's interval is."""
    fits = [0.5, 1.0, 90.0]
    gen = Generation(0, tuple(rank([Candidate(f"p{i}", "initial", {}, (), 0, f) for i, f in enumerate(fits)])), 3)
    assert t_interval(fits)[0] < 0  # what the table showed
    row = trajectory_frame([gen], bounds=(0.0, 100.0)).iloc[0]
    assert row["mean_ci_low"] == 0.0 and row["mean"] < row["mean_ci_high"] <= 100.0
    assert trajectory_frame([gen]).iloc[0]["mean_ci_low"] == pytest.approx(t_interval(fits)[0])  # no range known


# ----------------------------------------------------------------------------- a fitness metric scoring nothing


def test_unscored_fitness_names_only_metrics_without_any_finite_score_with_their_reasons():
    cfg = config({**RAW, "search": {**RAW["search"], "metrics": ["clip_score:model=tiny", "watermark",
                                                                 "fixes2_word"]}})
    clip, mark, word = (f.id for f in cfg.fitness)
    small = '{"detected": null, "reason": "image smaller than 256x256"}'
    scores = pd.DataFrame({"key": ["a", "b", "a", "b", "a", "other"],
                           "metric": [clip, clip, mark, mark, word, word],
                           "value": [math.nan, 30.0, math.nan, math.nan, math.nan, 1.0],
                           "detail": ["{}", "{}", small, small, '{"reason": "no prompt"}', "{}"]})
    assert unscored_fitness(scores, cfg, {"a", "b"}) == [
        ("watermark", ["image smaller than 256x256"]),  # clip_score scored b: a fitness for b
        ("fixes2_word", ["no prompt", "not scored (the metric could not run; see its log lines)"])]


EXP = """
name = "fixes2"
prompt = "a {red|blue|green} castle"
seeds = [1]
checkpoints = ["tiny"]
steps = 1
guidance = 1.0
width = 64
height = 64

[search]
population = 3
generations = 1
metrics = ["watermark"]
operators = { swap = 1 }
modifiers = ["styles"]
seed = 1
"""


def test_a_fitness_metric_that_scores_nothing_stops_the_search_and_the_fixed_one_resumes_on_its_images(
        tmp_path, one_cpu_thread):
    """`watermark` cannot read a 64 px image: every candidate went n/a and selection was random, exit 0. Now
    the search stops after generation 0 is scored, naming the metric and its reason; nothing is recorded, and
    the experiment with another metric runs on the images already made."""
    exp, run = tmp_path / "exp.toml", tmp_path / "run"
    exp.write_text(EXP)
    with pytest.raises(SearchError) as e:
        evolve(exp, out=run, log=lambda m: None)
    text = str(e.value)
    assert text.startswith(f"{exp}: key 'search.metrics': no finite score from 'watermark' "
                           "(image smaller than 256x256 in area: under 65536 pixels, the dwtDct codec's minimum) for any of "
                           "generation 0's 3 images")
    assert "drop it from [search] metrics" in text
    with Ledger.open(run, readonly=True) as led:
        assert len(led.done_keys()) == 3
        assert led.get_meta("search/current") is None  # the folder's search is as it was: none
    with sqlite3.connect(run / "ledger.sqlite") as conn:  # a rerun does not replay a generation without fitness
        assert conn.execute("SELECT COUNT(*) FROM meta WHERE name LIKE 'search/%/gen/%'").fetchone() == (0,)
    assert not (run / "tables" / "search_trajectory.csv").exists()

    exp.write_text(EXP.replace('metrics = ["watermark"]', 'metrics = ["fixes2_word:word=red"]'))
    logs = []
    result = evolve(exp, out=run, log=logs.append)
    assert any(m.startswith("generation 0: best 1 'a red castle' (0 images made") for m in logs), logs
    assert sorted(c.fitness for c in result.generations[0].candidates) == [0.0, 0.0, 1.0]
    # the mean of [0, 0, 1] has a t interval reaching below 0; the table's stays in the metric's 0-1 range
    assert t_interval([0.0, 0.0, 1.0])[0] < 0
    traj = pd.read_csv(run / "tables" / "search_trajectory.csv")
    assert (traj["mean_ci_low"] >= 0).all() and (traj["mean_ci_high"] <= 1).all()
