"""Prompt search fixes: an edit of a wildcard file the search reads is another search (not a resumed one),
a metric of weight 0 adds nothing to fitness, generation 0 holds no two prompts with the same clauses, and
`harness mutate` refuses options that would be ignored."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.experiment import experiment_from_dict
from harness.metrics.base import Metric, MetricInfo, Option, register
from harness.mutate import Resources, normalise
from harness.search import candidate_fitness, evolve, initial_population, search_config
from harness.wildcards import WildcardLibrary

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = WildcardLibrary([ROOT / "grammars"])


@register
class HasWord(Metric):
    """1 if the prompt holds the word as a clause, else 0 (the image is ignored)."""

    INFO = MetricInfo(name="fixes3_word", description="1 if a clause of the prompt is the word", unit="flag",
                      range=(0.0, 1.0), higher_is_better=True, needs=frozenset({"prompt"}))
    OPTIONS = {"word": Option("watercolor", "the clause to look for")}

    def _score(self, items):
        return [(float(self.options["word"] in item.prompt.split(", ")), {}) for item in items]


STUDY = """
prompt = "a castle, __mood__"
negative_prompt = "__neg__"
seeds = [1]
checkpoints = ["tiny"]
steps = 1
guidance = 2.0
width = 64
height = 64
metrics = ["fixes3_word"]
[search]
population = 3
generations = 1
operators = { insert = 1 }
modifiers = ["looks"]
"""


@pytest.fixture(autouse=True)
def shipped_lists(monkeypatch):
    monkeypatch.setenv("HARNESS_GRAMMARS", str(ROOT / "grammars"))


@pytest.mark.parametrize("edited", ["mood.txt", "neg.txt"])
def test_editing_a_one_line_wildcard_of_the_prompt_or_negative_starts_another_search(tmp_path, edited):
    for name, text in {"mood.txt": "gloomy\n", "neg.txt": "blurry\n", "looks.txt": "watercolor\nposter art\n",
                       "exp.toml": STUDY}.items():
        (tmp_path / name).write_text(text)
    first = evolve(tmp_path / "exp.toml", out=tmp_path / "run", log=lambda m: None)
    (tmp_path / edited).write_text("sunny\n")
    logs: list[str] = []
    second = evolve(tmp_path / "exp.toml", out=tmp_path / "run", log=logs.append)
    assert second.search_id != first.search_id
    assert not any("resuming" in m for m in logs), logs
    assert not any("made again" in m for m in logs), logs
    assert second.generated == first.generated  # every image is new: its prompt or negative prompt changed
    texts = {c.text for c in second.generations[0].candidates}
    assert ("a castle, sunny" in texts) == (edited == "mood.txt") and ("a castle, gloomy" in texts) != (
        edited == "mood.txt")


def config(weights):
    raw = {"prompt": "a castle", "metrics": ["fixes3_word", "fixes3_word:word=castle"],
           "search": {"population": 2, "generations": 1, "weights": weights}}
    return search_config(experiment_from_dict(raw, Path("/tmp/study.toml")), LIBRARY)


def test_a_metric_of_weight_zero_leaves_images_it_does_not_score_with_a_fitness():
    cfg = config([1, 0])
    one, two = (f.id for f in cfg.fitness)
    jobs = [SimpleNamespace(key="k1", seed=1), SimpleNamespace(key="k2", seed=2)]
    frame = {("k1", one): 1.0, ("k1", two): math.nan, ("k2", one): 0.0}
    fitness, _, seeds = candidate_fitness(frame, cfg, jobs)
    assert (fitness, seeds) == (0.5, 2)
    # weighted, the same missing scores leave those images out
    assert candidate_fitness(frame, config([1, 1]), jobs)[0] is None


def test_generation_zero_holds_no_two_prompts_with_the_same_clauses():
    """`{oil painting|}` gives "red car, " (its empty option): deleting a clause of "red car, oil painting"
    gives "red car", the same clauses, which would take a slot and make images of the same prompt."""
    from harness.expand import compile_template

    variants = list(compile_template("{red car|blue car}, {oil painting|}").expand())
    raw = {"prompt": "{red car|blue car}, {oil painting|}", "metrics": ["fixes3_word"],
           "search": {"population": 8, "generations": 1, "operators": {"delete": 1}}}
    for seed in range(6):
        cfg = search_config(experiment_from_dict({**raw, "search": {**raw["search"], "seed": seed}},
                                                 Path("/tmp/study.toml")), LIBRARY)
        population = initial_population(variants, cfg, Resources.load(LIBRARY))
        prompts = [c.prompt for c in population]
        assert len({normalise(p) for p in prompts}) == len(prompts), (seed, prompts)
        assert "red car, " in prompts and "red car" not in prompts and "blue car" not in prompts


@pytest.mark.parametrize("extra, named", [(["--ops", "nosuch"], "--ops does not change"),
                                          (["--lists", "styles", "--partner", "a dog"],
                                           "--lists and --partner do not change")])
def test_leave_one_out_refuses_the_options_it_would_ignore(extra, named):
    result = CliRunner().invoke(app, ["mutate", "a cat, dog", "--leave-one-out", *extra])
    assert result.exit_code == 2 and named in result.output, result.output


def test_an_empty_lists_option_is_an_error_not_the_default_lists():
    result = CliRunner().invoke(app, ["mutate", "a cat, dog", "--lists", ""])
    assert result.exit_code == 2 and "--lists '': no list named" in result.output, result.output
