"""Multi-stage experiments: children of identical parents, a stage's negative prompt, a stage's provenance."""

import pytest

from harness.experiment import ExperimentError, load_experiment
from harness.ledger import Ledger
from harness.plan import make_plan
from harness.provenance import read_provenance
from harness.run import run_experiment
from harness.stages import stage_job_counts

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

# `(red:1)` is `red` at weight 1: the two main images of each color level are one image under two keys
TWIN_PARENTS = """
name = "twins"
prompt = "a {@color: red|blue} {@w: (circle:1)|circle}"
seeds = [1]
checkpoints = ["tiny"]
steps = 4
width = 64
height = 64
metrics = ["health"]

[[stages]]
name = "refine"
prompt = "a circle, detailed"
strengths = [0.5]
"""

NEGATIVES = """
name = "neg"
prompt = "a {@color: red|blue} fox"
negative_prompt = "{@n: blurry|ugly}"
seeds = [1]
checkpoints = ["tiny"]
steps = 4
width = 64
height = 64
"""


def _stage_counts(path):
    exp = load_experiment(path)
    plan = make_plan(exp)
    return stage_job_counts(exp, list(plan.jobs), plan.checkpoints)


def _done(run_dir, stage: str):
    with Ledger.open(run_dir, readonly=True) as led:
        return [j for j in led.all_jobs(status="done") if j.meta["stage"] == stage]


def test_children_of_identical_parents_are_one_image_that_plan_and_run_count_once(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    exp = tmp_path / "exp.toml"
    exp.write_text(TWIN_PARENTS)
    assert _stage_counts(exp) == {"refine": 2}
    logged: list[str] = []
    r = run_experiment(exp, out=tmp_path / "run", progress=False, log=logged.append)
    assert r.planned == r.generated == 4 + 2
    main = {j.key: j for j in _done(tmp_path / "run", "main")}
    refine = _done(tmp_path / "run", "refine")
    assert len(refine) == 2
    for child in refine:  # its row is one parent's; the other parent (the other weighting, same pixels) is named
        parents = [main[child.meta["parent_key"]], *(main[k] for k in child.meta["also_parent_keys"])]
        assert sorted(p.factors["w"] for p in parents) == ["(circle:1)", "circle"]
        assert len({p.factors["color"] for p in parents}) == 1
    assert any(m.startswith("stage refine: 2 children duplicate another's image") for m in logged), logged
    shown = CliRunner().invoke(app, ["plan", str(exp), "--out", str(tmp_path / "run")])
    assert f"2 jobs, planned in {tmp_path / 'run'}: 2 of its 2 jobs done" in shown.output, shown.output
    again = run_experiment(exp, out=tmp_path / "run", progress=False)
    assert again.generated == 0 and again.planned == again.already_done == 6


def test_plan_counts_once_the_children_of_parents_whose_emphasis_reads_alike(tmp_path):
    """`(a castle:1)` is `a castle` at weight 1: the two main images are one image, and a stage prompt
    without __parent__ gives them one child."""
    exp = tmp_path / "exp.toml"
    exp.write_text('prompt = "{@w: (a castle:1)|a castle}"\nseeds = [1]\nsteps = 4\nwidth = 64\nheight = 64\n\n'
                   '[[stages]]\nname = "refine"\nprompt = "a castle, detailed"\n')
    assert _stage_counts(exp) == {"refine": 1}
    r = run_experiment(exp, out=tmp_path / "run", progress=False, log=lambda m: None)
    assert r.planned == r.generated == 2 + 1 and len(_done(tmp_path / "run", "refine")) == 1


@pytest.mark.parametrize("stages, where", [
    ('[[stages]]\nname = "refine"\nprompt = "__parent__, sharp"\nnegative_prompt = "{@n: dark|light}"\n',
     ("key 'stages[0].negative_prompt' (stage 'refine'): negative-prompt factor 'n' is also a negative-prompt "
      "factor of the images it starts from (stage main; column f.negative:n)")),
    # through a stage that keeps its parents' negative prompts, and one that adds a factor of its own
    (('[[stages]]\nname = "a"\nprompt = "__parent__, sharp"\n\n[[stages]]\nname = "b"\nprompt = "__parent__, x"\n'
      'negative_prompt = "{@m: dark|light}"\n\n[[stages]]\nname = "c"\nprompt = "__parent__, y"\n'
      'negative_prompt = "{@n: grainy|noisy}"\n'),
     ("key 'stages[2].negative_prompt' (stage 'c'): negative-prompt factor 'n' is also a negative-prompt "
      "factor of the images it starts from (stage b; column f.negative:n)")),
])
def test_a_stage_negative_factor_named_like_its_parents_is_refused_at_load_time(tmp_path, stages, where):
    exp = tmp_path / "exp.toml"
    exp.write_text(NEGATIVES + "\n" + stages)
    with pytest.raises(ExperimentError) as caught:
        load_experiment(exp)
    assert str(exp) in str(caught.value) and any(where in p for p in caught.value.problems), caught.value.problems


def test_a_stage_negative_factor_may_share_a_name_with_a_prompt_factor(tmp_path):
    """`f.color` and `f.negative:color` are two columns: nothing is overwritten."""
    exp = tmp_path / "exp.toml"
    exp.write_text(NEGATIVES + '\n[[stages]]\nname = "refine"\nprompt = "__parent__"\n'
                               'negative_prompt = "{@color: dark|light}"\n')
    assert _stage_counts(exp) == {"refine": 4 * 2}


def test_a_stage_without_a_negative_prompt_keeps_each_parents_negative_and_its_level(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(NEGATIVES + '\n[[stages]]\nname = "refine"\nprompt = "__parent__, sharp"\n')
    assert _stage_counts(exp) == {"refine": 4}  # one child per parent, not one per negative level
    run_experiment(exp, out=tmp_path / "run", progress=False)
    main = {j.key: j for j in _done(tmp_path / "run", "main")}
    refine = _done(tmp_path / "run", "refine")
    assert len(refine) == 4 and {j.meta["parent_key"] for j in refine} == set(main)
    for child in refine:
        parent = main[child.meta["parent_key"]]
        assert child.negative_prompt == parent.negative_prompt == parent.factors["negative:n"]
        assert child.factors == parent.factors


def test_a_stage_after_one_with_an_empty_negative_prompt_is_not_said_to_read_the_experiments(tmp_path):
    """`b` keeps `a`'s empty negative prompt, so the experiment's is not read at the fixed guidance 1."""
    exp = tmp_path / "exp.toml"
    exp.write_text('prompt = "a fox"\nnegative_prompt = "blurry"\nguidance = 1.0\n[randomize]\nguidance = [1.0, 9.0]\n'
                   '\n[[stages]]\nname = "a"\nprompt = "__parent__, sharp"\nnegative_prompt = ""\n\n'
                   '[[stages]]\nname = "b"\nprompt = "__parent__, polished"\n')
    assert [s.name for s in load_experiment(exp).stages] == ["a", "b"]


def test_stage_images_record_their_own_templates_in_provenance(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(NEGATIVES.replace('"{@n: blurry|ugly}"', '"blurry"').replace("{@color: red|blue}", "red")
                   + '\n[[stages]]\nname = "refine"\nprompt = "__parent__, {@look: sharp|soft}"\n'
                     'negative_prompt = "{@tone: dark|light}"\n\n[[stages]]\nname = "polish"\n'
                     'prompt = "__parent__, polished"\n')
    run_experiment(exp, out=tmp_path / "run", progress=False)
    want = {"main": ("a red fox", "blurry"), "refine": ("__parent__, {@look: sharp|soft}", "{@tone: dark|light}"),
            "polish": ("__parent__, polished", "{@tone: dark|light}")}
    for stage, (template, negative) in want.items():
        jobs = _done(tmp_path / "run", stage)
        assert len(jobs) == {"main": 1, "refine": 4, "polish": 4}[stage]
        for job in jobs:
            record = read_provenance(tmp_path / "run" / "images" / f"{job.key}.png")
            assert (record["template"], record["negative_template"]) == (template, negative), stage
            assert record["job"]["meta"]["template"] == template


def test_plan_after_a_stage_is_renamed_says_the_next_run_plans_it_from_the_done_images(tmp_path):
    """Renaming a stage after main is done: the folder has no plan part under the new name, but its source
    is done, so the next run plans it at once; plan says that, not "once stage main is done"."""
    import subprocess
    import sys

    exp = tmp_path / "exp.toml"
    stage = '\n[[stages]]\nname = "refine"\nprompt = "__parent__, sharp"\nstrengths = [0.5]\n'
    exp.write_text(NEGATIVES + stage)
    run_experiment(exp, out=tmp_path / "run", progress=False)
    exp.write_text(NEGATIVES + stage.replace('"refine"', '"sharpen"'))
    r = subprocess.run([sys.executable, "-m", "harness", "plan", str(exp), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "planned by the next run from the 4 done images of stage main" in r.stdout, r.stdout
    assert "once stage main is done" not in r.stdout
