"""Prompt search: [search] validation, deterministic breeding, finding a known optimum on the
tiny model, and a SIGKILLed `evolve` that resumes to the same final population."""

import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core import Variant
from harness.experiment import ExperimentError, experiment_from_dict
from harness.mutate import Resources
from harness.search import (
    Candidate,
    Generation,
    breed,
    evolve,
    generation_rng,
    initial_population,
    rank,
    search_config,
    select,
)
from harness.wildcards import WildcardLibrary

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = WildcardLibrary([ROOT / "grammars"])

# A test-only metric with a known optimum: 1 if the prompt contains the word, else 0 (the image
# is ignored). The same source registers it here and in the child process of the kill test.
METRIC_SOURCE = '''
from harness.metrics.base import Metric, MetricInfo, Option, register

@register
class TargetWord(Metric):
    INFO = MetricInfo(name="target_word", description="1 if the prompt contains the word", unit="flag",
                      range=(0.0, 1.0), higher_is_better=True, needs=frozenset({"prompt"}))
    OPTIONS = {"word": Option("watercolor", "the word to look for")}

    def _score(self, items):
        return [(float(self.options["word"] in item.prompt.split(", ")), {}) for item in items]
'''
exec(METRIC_SOURCE)

BASE = """
name = "search-test"
prompt = "a {red|blue|green} castle on a hill, oil painting"
seeds = [1]
checkpoints = ["tiny"]
steps = 1
guidance = 1.0
width = 64
height = 64
"""

FIND = BASE + """
[search]
population = 3
generations = 3
metrics = ["target_word:word=watercolor"]
elitism = 1
operators = { insert = 1, swap = 1 }
modifiers = ["looks"]
budget = 10
seed = 1
"""
LOOKS = "watercolor\ncharcoal sketch\nposter art\noil painting\n"


@pytest.fixture(autouse=True)
def shipped_lists(monkeypatch):
    monkeypatch.setenv("HARNESS_GRAMMARS", str(ROOT / "grammars"))


def write(tmp_path, text, name="exp.toml"):
    (tmp_path / "looks.txt").write_text(LOOKS)  # the experiment's folder is first on the wildcard search path
    p = tmp_path / name
    p.write_text(text)
    return p


def config(raw, tmp_path=Path("/tmp/x.toml")):
    return search_config(experiment_from_dict(raw, tmp_path), LIBRARY)


RAW = {"prompt": "a castle, oil painting", "metrics": ["clip_score:model=tiny"],
       "search": {"population": 4, "generations": 2}}


def test_search_table_problems_are_reported_together_naming_the_file():
    raw = {**RAW, "search": {"populaton": 4, "generations": -1, "selection": "roulette", "elitism": 9,
                             "operators": {"swapp": 1}, "weights": [1, 2], "modifiers": ["medium", "my list"]}}
    with pytest.raises(ExperimentError) as e:
        config(raw, Path("/tmp/study.toml"))
    text = str(e.value)
    assert text.startswith("/tmp/study.toml:")
    for expected in ("unknown key 'search.populaton'; did you mean 'search.population'?",
                     "key 'search.population': missing", "key 'search.generations': got -1",
                     "key 'search.selection': got 'roulette'", "unknown operator 'search.operators.swapp'; "
                     "did you mean 'swap'?", "key 'search.weights': got [1, 2], expected a list of 1",
                     "no wildcard list 'medium'", "key 'search.modifiers': 'my list' is not a list name: a list is "
                     "read as the wildcard __my list__"):
        assert expected in text


def test_a_bad_population_is_reported_once_not_also_as_missing_or_as_a_bound_of_other_keys():
    with pytest.raises(ExperimentError) as e:
        config({**RAW, "search": {"population": 1, "generations": 2, "tournament_size": 3, "elitism": 2}},
               Path("/tmp/study.toml"))
    assert e.value.problems == ["key 'search.population': got 1, expected an integer >= 2"]


def test_search_metrics_left_out_with_no_fitness_metric_in_the_experiment_says_so():
    with pytest.raises(ExperimentError) as e:
        config({**RAW, "metrics": ["health"]}, Path("/tmp/study.toml"))
    assert e.value.problems == [
        "key 'search.metrics': missing, and the experiment's metrics hold none to search for (health and "
        "watermark are not fitness metrics); set [search] metrics = [\"clip_score:model=tiny\"] or add one to "
        "the experiment's metrics"]


def test_missing_search_table_says_what_evolve_needs():
    with pytest.raises(ExperimentError, match=r"table \[search\]: missing"):
        config({"prompt": "a castle"})
    with pytest.raises(ExperimentError, match=r"table \[search\]: got 3, expected a table; harness evolve needs"):
        config({"prompt": "a castle", "search": 3})


def test_selection_option_for_the_other_method_is_an_error():
    with pytest.raises(ExperimentError, match="top_k': set but selection is 'tournament'"):
        config({**RAW, "search": {**RAW["search"], "top_k": 2}})


def test_fitness_defaults_to_the_experiments_quality_metrics_with_their_direction():
    cfg = config({**RAW, "metrics": ["clip_score:model=tiny", "health"]})
    assert [(f.id.split("[")[0], f.weight, f.higher_is_better) for f in cfg.fitness] == [("clip_score", 1.0, True)]


def scored(prompts, fitness, g=0):
    return Generation(g, tuple(rank([Candidate(p, "initial", {}, (), 0, f) for p, f in zip(prompts, fitness)])), 0)


def test_breeding_is_a_pure_function_of_the_seed_and_generation():
    cfg = config({**RAW, "search": {"population": 6, "generations": 2, "seed": 7, "elitism": 2}})
    res = Resources.load(LIBRARY)
    prev = scored(["a castle, oil painting", "a dog, watercolor", "a cat", "a hill, 8k"], [0.5, 0.9, None, 0.1])
    a, b = breed(prev, cfg, res), breed(prev, cfg, res)
    assert [c.to_dict() for c in a] == [c.to_dict() for c in b] and len(a) == 6
    assert [c.prompt for c in a[:2]] == ["a dog, watercolor", "a castle, oil painting"]  # elites, best first
    assert all(c.born == 1 and c.operator != "initial" for c in a[2:])
    other = breed(prev, config({**RAW, "search": {"population": 6, "generations": 2, "seed": 8, "elitism": 2}}), res)
    assert [c.prompt for c in other] != [c.prompt for c in a]


def test_lineage_follows_the_birth_of_a_prompt_that_was_made_again():
    """'a, b' is an initial prompt, dropped after generation 0 and made again by reorder in generation 2:
    the winner's lineage is the reorder of generation 2 from its parent of generation 1, not the initial."""
    from harness.mutate import prompt_key
    from harness.search_report import lineage_frame

    g0 = Generation(0, (Candidate("a, b", "initial", {}, (), 0, 1.0), Candidate("c", "initial", {}, (), 0, 0.5)), 2)
    g1 = Generation(1, (Candidate("b, a", "reorder", {"from": 1, "to": 0}, (prompt_key("a, b"),), 1, 2.0),
                        Candidate("c", "initial", {}, (), 0, 0.5)), 3)
    g2 = Generation(2, (Candidate("a, b", "reorder", {"from": 1, "to": 0}, (prompt_key("b, a"),), 2, 3.0),
                        Candidate("b, a", "reorder", {"from": 1, "to": 0}, (prompt_key("a, b"),), 1, 2.0)), 3)
    frame = lineage_frame([g0, g1, g2], winners=1)
    assert [(r.depth, r.generation, r.prompt, r.operator) for r in frame.itertuples()] == [
        (0, 2, "a, b", "reorder"), (1, 1, "b, a", "reorder"), (2, 0, "a, b", "initial")]


def test_the_best_prompt_is_the_best_of_the_whole_search_with_its_lineage_back_to_generation_0():
    """With elitism = 0 the best prompt (generation 1's) is not in the last generation: the result, the
    summary line and the lineage still name it, and a generation-0 mutant's parent is its initial prompt."""
    from harness.mutate import prompt_key
    from harness.search import SearchResult
    from harness.search_report import lineage_frame

    g0 = Generation(0, (Candidate("a, b", "initial", {}, (), 0, 1.0),
                        Candidate("a", "delete", {"clause": 1}, (prompt_key("a, b"),), 0, 0.5)), 2)
    g1 = Generation(1, (Candidate("a, c", "insert", {"at": 1}, (prompt_key("a"),), 1, 5.0),
                        Candidate("b, a", "reorder", {}, (prompt_key("a, b"),), 1, 2.0)), 4)
    g2 = Generation(2, (Candidate("c, a", "reorder", {}, (prompt_key("a, c"),), 2, 3.0),
                        Candidate("a, d", "insert", {}, (prompt_key("a, c"),), 2, 1.5)), 6)
    result = SearchResult(Path("."), "id", [g0, g1, g2], "generations")
    assert result.best.prompt == "a, c" and result.final.best.prompt == "c, a"
    frame = lineage_frame([g0, g1, g2], winners=2)
    assert [(r.winner, r.depth, r.prompt, r.operator) for r in frame.itertuples()] == [
        (1, 0, "a, c", "insert"), (1, 1, "a", "delete"), (1, 2, "a, b", "initial"),
        (2, 0, "c, a", "reorder"), (2, 1, "a, c", "insert"), (2, 2, "a", "delete"), (2, 3, "a, b", "initial")]


def test_fitness_leaves_unhealthy_images_out_as_every_statistic_does():
    from types import SimpleNamespace

    from harness.search import candidate_fitness

    cfg = config(RAW)
    (metric,) = [f.id for f in cfg.fitness]
    jobs = [SimpleNamespace(key=f"k{s}", seed=s) for s in (1, 2, 3)]
    frame = {("k1", metric): 30.0, ("k2", metric): 0.0, ("k3", metric): 20.0}  # k2: a black image
    assert candidate_fitness(frame, cfg, jobs)[0] == pytest.approx(50 / 3)
    fitness, _, seeds = candidate_fitness(frame, cfg, jobs, unhealthy={"k2"})
    assert (fitness, seeds) == (25.0, 2)
    assert candidate_fitness(frame, cfg, jobs, unhealthy={"k1", "k2", "k3"}) == (None, (None, None), 0)


def test_tournament_and_top_k_select_from_the_best():
    ranked = list(scored(list("abcdef"), [6, 5, 4, 3, 2, 1]).candidates)
    top = config({**RAW, "search": {"population": 6, "generations": 1, "selection": "top_k", "top_k": 2}})
    rng = random.Random(0)
    assert {select(ranked, rng, top).prompt for _ in range(50)} == {"a", "b"}
    tour = config({**RAW, "search": {"population": 6, "generations": 1, "tournament_size": 6}})
    assert select(ranked, generation_rng(tour, 1), tour).prompt == "a"


def test_initial_population_samples_many_expansions_and_tops_up_few():
    cfg = config({**RAW, "search": {"population": 3, "generations": 1}})
    many = [Variant(f"a castle, style {i}", {"s": str(i)}) for i in range(10)]
    pop = initial_population(many, cfg, Resources.load(LIBRARY))
    assert len(pop) == 3 and all(c.operator == "initial" for c in pop)
    assert pop == initial_population(many, cfg, Resources.load(LIBRARY))
    few = initial_population([Variant("a castle, oil painting", {})], cfg, Resources.load(LIBRARY))
    assert len(few) == 3 and few[0].operator == "initial" and all(c.parents for c in few[1:])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted search on the tiny model, shared by the optimum and the kill/resume tests."""
    folder = tmp_path_factory.mktemp("search")
    exp = write(folder, FIND)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_GRAMMARS", str(ROOT / "grammars"))
        return exp, evolve(exp, out=folder / "run", log=lambda m: None)


def test_search_finds_the_known_optimum_within_the_budget(uninterrupted):
    exp, result = uninterrupted
    assert result.generations[0].best.fitness == 0.0
    assert result.best.fitness == 1.0 and "watercolor" in result.best.text.split(", ")
    assert result.final.images_used <= 10
    best = [g.best.fitness for g in result.generations]
    assert best == sorted(best)  # elitism: the best never gets worse
    run = result.run_dir
    for name in ("search_generations", "search_trajectory", "search_lineage"):
        assert all((run / "tables" / f"{name}.{ext}").is_file() for ext in ("csv", "parquet", "md"))
    assert (run / "plots" / "search_trajectory.png").stat().st_size > 1000
    import pandas as pd
    lineage = pd.read_csv(run / "tables" / "search_lineage.csv")
    winner = lineage[(lineage["winner"] == 1)]
    assert winner.iloc[0]["prompt"] == result.best.text and winner["operator"].iloc[-1] == "initial"
    assert set(winner["operator"]) <= {"initial", "insert", "swap"}


def test_rerunning_a_finished_search_replays_it_without_making_images(uninterrupted):
    exp, result = uninterrupted
    again = evolve(exp, out=result.run_dir, log=lambda m: None)
    assert again.generated == 0
    assert [g.to_dict() for g in again.generations] == [g.to_dict() for g in result.generations]
    from typer.testing import CliRunner

    from harness.cli import app

    cli = CliRunner().invoke(app, ["evolve", str(exp), "--out", str(result.run_dir)],
                             env={"HARNESS_GRAMMARS": str(ROOT / "grammars")})
    best = result.best
    assert cli.exit_code == 0 and f"best prompt: {best.text} (fitness 1" in cli.stdout, cli.stdout
    assert f", generation {best.born})" in cli.stdout


def test_a_lowered_budget_replays_only_the_generations_it_affords(uninterrupted, tmp_path):
    """Resuming with `budget` lowered ends where a fresh run with that budget would, and the reports plan
    only those generations' images."""
    import shutil

    from harness.ledger import Ledger

    exp, result = uninterrupted
    budget = result.generations[0].images_used
    assert result.generations[1].images_used > budget, "want a generation the lower budget cannot afford"
    shutil.copytree(result.run_dir, tmp_path / "run")
    lower = write(tmp_path, exp.read_text().replace("budget = 10", f"budget = {budget}"))
    again = evolve(lower, out=tmp_path / "run", log=lambda m: None)
    assert (again.generated, again.stopped) == (0, "budget")
    assert [g.to_dict() for g in again.generations] == [result.generations[0].to_dict()]
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert len(led.plan_keys(f"search:{again.search_id}")) == budget


def test_another_search_in_the_folder_leaves_the_plan_and_comes_back_when_undone(uninterrupted, tmp_path):
    """An edited [search] table starts another search: the report then describes it alone, while the
    earlier one's images stay in the ledger, so undoing the edit replays it without making an image."""
    import shutil

    from harness.ledger import Ledger

    exp, result = uninterrupted
    shutil.copytree(result.run_dir, tmp_path / "run")
    other = write(tmp_path, exp.read_text().replace("seed = 1\n", "seed = 2\n"))
    second = evolve(other, out=tmp_path / "run", log=lambda m: None)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert [p for p in led.plan_parts() if p.startswith("search:")] == [f"search:{second.search_id}"]
    back = evolve(write(tmp_path, exp.read_text(), "back.toml"), out=tmp_path / "run", log=lambda m: None)
    assert back.generated == 0 and back.search_id == result.search_id
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert [p for p in led.plan_parts() if p.startswith("search:")] == [f"search:{result.search_id}"]
    # a search that stops at generation 0 (a fitness metric that scores nothing) leaves the folder's as it was
    from harness.search import SearchError

    failing = write(tmp_path, exp.read_text().replace('metrics = ["target_word:word=watercolor"]',
                                                      'metrics = ["target_word:word=watercolor", "watermark"]'),
                    "failing.toml")
    with pytest.raises(SearchError, match="no finite score from 'watermark'"):
        evolve(failing, out=tmp_path / "run", log=lambda m: None)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert [p for p in led.plan_parts() if p.startswith("search:")] == [f"search:{result.search_id}"]
        assert led.get_meta("search/current") == result.search_id


# killed by itself at a fixed point, whatever the machine's load: right after the first batch of
# generation 2 is recorded (generation 1 is closed, generation 2 is not)
KILLED_IN_GEN2 = METRIC_SOURCE + '''
import os, signal, sys
from harness.cli import app
from harness.ledger import Ledger

set_meta, mark_done_many, gen1 = Ledger.set_meta, Ledger.mark_done_many, []

def noting(self, name, value):
    set_meta(self, name, value)
    if name.startswith("search/") and name.endswith("/gen/1"):
        gen1.append(name)

def killing(self, rows):
    mark_done_many(self, rows)
    if gen1:
        os.kill(os.getpid(), signal.SIGKILL)

Ledger.set_meta, Ledger.mark_done_many = noting, killing
app(["evolve", sys.argv[1], "--out", sys.argv[2]], prog_name="harness")
'''


def _meta(db: Path, pattern: str) -> int:
    try:
        with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM meta WHERE name LIKE ?", (pattern,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def _done_in(db: Path, stage: str) -> int:
    try:
        with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM jobs WHERE stage = ? AND status = 'done'",
                                (stage,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sigkilled_evolve_resumes_to_the_same_final_population(uninterrupted, tmp_path):
    exp, reference = uninterrupted
    run = tmp_path / "killed"
    db = run / "ledger.sqlite"
    log = tmp_path / "child.log"
    with open(log, "w") as err:
        child = subprocess.run([sys.executable, "-c", KILLED_IN_GEN2, str(exp), str(run)],
                               stdout=subprocess.DEVNULL, stderr=err, timeout=300)
    assert child.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    assert _meta(db, "search/%/gen/1") == 1 and _meta(db, "search/%/gen/2") == 0 and _done_in(db, "gen2") > 0
    with sqlite3.connect(db) as conn:
        done_at_kill = conn.execute("SELECT count(*) FROM jobs WHERE status = 'done'").fetchone()[0]

    resumed = evolve(exp, out=run, log=lambda m: None)
    assert [g.to_dict() for g in resumed.generations] == [g.to_dict() for g in reference.generations]
    assert resumed.final.candidates == reference.final.candidates
    assert resumed.generated == reference.final.images_used - done_at_kill  # nothing made twice


def test_report_of_a_search_run_shows_generations_lineage_and_trajectory(uninterrupted):
    from harness.report import build_report
    exp, result = uninterrupted
    r = build_report(result.run_dir)
    page = r.index.read_text()
    assert "Prompt search: best prompts per generation" in page and "the winners&#39; lineage" in page
    assert "plots/search_trajectory.png" in page
    assert result.best.text in page


def test_a_recorded_generations_lost_image_is_made_again_and_the_factor_order_is_kept(uninterrupted, tmp_path):
    """An image of a finished search deleted from images/ is made again by the next `evolve` (which says so),
    and evolving does not wipe the template's factor order from the run."""
    import json
    import shutil

    from harness.ledger import Ledger

    exp, result = uninterrupted
    shutil.copytree(result.run_dir, tmp_path / "run")
    lost = result.best.image_keys[0]
    with Ledger.open(tmp_path / "run") as led:
        led.set_meta("factors", json.dumps(["red|blue|green"]))  # as `harness run` records it
        (led.image_path(lost)).unlink()
    logs = []
    again = evolve(exp, out=tmp_path / "run", log=logs.append)
    assert again.generated == 1 and any("made again" in m for m in logs), logs
    assert [g.to_dict() for g in again.generations] == [g.to_dict() for g in result.generations]
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert lost in led.done_keys() and led.image_path(lost).is_file()
        assert json.loads(led.get_meta("factors")) == ["red|blue|green"]


def test_an_edit_that_plans_the_images_again_drops_the_earlier_searchs_tables_from_the_report(uninterrupted,
                                                                                              tmp_path):
    import shutil

    from typer.testing import CliRunner

    from harness.cli import app
    from harness.report import build_report
    from harness.run import run_experiment

    exp, result = uninterrupted
    shutil.copytree(result.run_dir, tmp_path / "run")
    edited = write(tmp_path, exp.read_text().replace("steps = 1", "steps = 2"))
    run_experiment(edited, out=tmp_path / "run", progress=False)
    r = build_report(tmp_path / "run")
    assert r.dropped == ["search"]
    page = r.index.read_text()
    assert "Prompt search" not in page and "search_trajectory.png" not in page
    assert not list((tmp_path / "run" / "tables").glob("search_*"))
    assert build_report(result.run_dir).dropped == []  # the unedited run keeps them
    cli = CliRunner().invoke(app, ["report", str(result.run_dir)])
    assert cli.exit_code == 0 and "removed the search tables" not in cli.stdout


@pytest.mark.parametrize("search, words", [
    ({"metrics": ["clip_image_similarity:model=tiny"]}, "compares an image with its init image"),
    ({"metrics": ["clip_score:model=tiny", "clip_score:model=tiny,pretrained=tiny"]}, "each entry once"),
    ({"metrics": ["clip_score:model=tiny"], "operators": ["swap", "swap"]}, "repeated: 'swap'"),
])
def test_search_metrics_that_score_nothing_or_twice_are_refused(search, words):
    raw = {**RAW, "search": {"population": 4, "generations": 2, **search}}
    with pytest.raises(ExperimentError, match=words):
        config(raw)


def test_default_fitness_of_a_txt2img_experiment_leaves_out_metrics_that_need_an_init_image():
    raw = {**RAW, "metrics": ["clip_score:model=tiny", "clip_image_similarity:model=tiny", "health"]}
    assert [f.spec for f in config(raw).fitness] == ["clip_score:model=tiny"]


def test_a_generation_without_candidates_says_why_and_keeps_the_report(tmp_path):
    from harness.search import SearchError

    exp = write(tmp_path, BASE.replace('{red|blue|green} ', '') + """
[search]
population = 2
generations = 2
metrics = ["target_word:word=watercolor"]
elitism = 0
operators = ["delete"]
""")
    with pytest.raises(SearchError, match="no operator changed any parent into a new prompt, and elitism = 0"):
        evolve(exp, out=tmp_path / "run", log=lambda m: None)
    assert (tmp_path / "run" / "tables" / "search_generations.csv").is_file()


def test_a_candidates_interval_stays_in_the_range_its_fitness_can_take():
    """Two seeds give a wide t interval: cut to the fitness's range (a CLIP score's 0-100 times its weight),
    as the report's intervals are; it was [-225.7, 271.2] on a 0-100 score."""
    from types import SimpleNamespace

    from harness.search import candidate_fitness, fitness_bounds

    cfg = config(RAW)
    (metric,) = [f.id for f in cfg.fitness]
    (term,) = cfg.fitness
    lo_end, hi_end = sorted(term.weight * (v if term.higher_is_better else -v) for v in (0.0, 100.0))
    assert fitness_bounds(cfg) == (lo_end, hi_end)
    jobs = [SimpleNamespace(key=f"k{s}", seed=s) for s in (1, 2)]
    fitness, (lo, hi), _ = candidate_fitness({("k1", metric): 2.0, ("k2", metric): 60.0}, cfg, jobs)
    assert lo_end <= lo < fitness < hi <= hi_end and (lo == lo_end or hi == hi_end)


def test_an_interrupted_rerun_of_a_finished_search_leaves_its_plan_whole(uninterrupted, tmp_path):
    """A rerun stopped while it replays (here as it remakes a lost image of generation 1) leaves the plan as
    the finished search had it, so `harness report` still describes the whole search."""
    import shutil

    from harness.ledger import Ledger

    exp, result = uninterrupted
    shutil.copytree(result.run_dir, tmp_path / "run")
    with Ledger.open(tmp_path / "run") as led:
        whole = led.plan_keys(f"search:{result.search_id}")
        led.image_path(result.generations[1].candidates[-1].image_keys[0]).unlink()
    assert len(whole) == result.final.images_used

    def stop_at_the_remake(message: str) -> None:
        if message.startswith("generation 1:") and "made again" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evolve(exp, out=tmp_path / "run", log=stop_at_the_remake)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert led.plan_keys(f"search:{result.search_id}") == whole
