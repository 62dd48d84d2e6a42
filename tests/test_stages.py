"""Multi-stage experiments: later stages are img2img from earlier outputs, linked by parent key."""


from harness.ledger import Ledger
from harness.provenance import read_provenance
from harness.run import run_experiment

STAGED = """
name = "staged"
prompt = "a {red|blue} fox"
seeds = [1, 2]
checkpoints = ["tiny"]
steps = 4
width = 64
height = 64
metrics = ["clip_score:model=tiny"]

[[stages]]
name = "refine"
prompt = "__parent__, {highly detailed|sharp focus}"
strengths = [0.5]
top_k = 1
metric = "clip_score:model=tiny"

[[stages]]
name = "polish"
from = "refine"
prompt = "__parent__, masterpiece"
strengths = [0.3]
seeds = [7]
"""


def test_later_stages_link_every_image_to_an_existing_parent(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(STAGED)
    r = run_experiment(exp, out=tmp_path / "run", progress=False)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        jobs = {j.key: j for j in led.all_jobs(status="done")}
        frame = led.jobs_frame().set_index("key")
    by_stage = {}
    for j in jobs.values():
        by_stage.setdefault(j.meta["stage"], []).append(j)
    assert len(by_stage["main"]) == 4
    # top 1 of 2 seeds per main variant (2 variants), times 2 refine prompts
    assert len(by_stage["refine"]) == 2 * 2
    assert len(by_stage["polish"]) == 4
    for stage, source in (("refine", "main"), ("polish", "refine")):
        for j in by_stage[stage]:
            parent = jobs[j.meta["parent_key"]]
            assert parent.meta["stage"] == source
            assert j.mode == "img2img" and j.init_image == str(tmp_path / "run" / "images" / f"{parent.key}.png")
            assert j.prompt.startswith(parent.prompt) and j.meta["source_prompt"] == parent.prompt
            assert frame.loc[j.key, "parent_key"] == parent.key
            assert read_provenance(tmp_path / "run" / "images" / f"{j.key}.png")["job"]["meta"]["parent_key"] == parent.key
    assert {j.seed for j in by_stage["polish"]} == {7}
    assert r.generated == 12
    # `harness plan` counts them before anything is made
    from harness.experiment import load_experiment
    from harness.plan import make_plan
    from harness.stages import stage_job_counts

    loaded = load_experiment(exp)
    plan = make_plan(loaded)
    assert stage_job_counts(loaded, list(plan.jobs), plan.checkpoints) == {
        name: len(by_stage[name]) for name in ("refine", "polish")}
    again = run_experiment(exp, out=tmp_path / "run", progress=False)
    assert again.generated == 0 and again.already_done == 12


def test_after_an_edit_stages_grow_only_from_the_current_main_images(tmp_path):
    from harness.tables import image_table

    exp = tmp_path / "exp.toml"
    text = STAGED.replace('metrics = ["clip_score:model=tiny"]', "").replace("top_k = 1\n", "").replace(
        'metric = "clip_score:model=tiny"\n', "").replace("seeds = [1, 2]", "seeds = [1]")
    text = text[: text.index("[[stages]]\nname = \"polish\"")]
    exp.write_text(text)
    run_experiment(exp, out=tmp_path / "run", progress=False)
    exp.write_text(text.replace("steps = 4", "steps = 3", 1))
    r = run_experiment(exp, out=tmp_path / "run", progress=False)
    assert r.generated == 2 + 4 and r.unplanned == 6
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        table = image_table(led).set_index("key")
    assert sorted(table["stage"]) == ["main"] * 2 + ["refine"] * 4
    main = set(table.index[table["stage"] == "main"])
    assert set(table.loc[table["stage"] == "refine", "parent_key"]) == main
    assert set(table.loc[list(main), "steps"]) == {3}


def test_force_remakes_the_later_stages_too_and_counts_their_time(tmp_path):
    exp = tmp_path / "staged.toml"
    exp.write_text(STAGED.replace("metrics =", "streams = 1\nmetrics ="))
    first = run_experiment(exp, out=tmp_path / "run", progress=False)
    forced = run_experiment(exp, out=tmp_path / "run", force=True, progress=False)
    assert forced.generated == first.generated == forced.planned > 4  # the 4 main images and their stages
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        per_image = sum(led.jobs_frame()["seconds"])
    # images/s counts the time of every stage, not of the last alone
    assert forced.seconds >= 0.9 * per_image


def test_a_force_after_an_edit_remakes_everything_again_and_leaves_the_earlier_versions_images(tmp_path):
    """An edit of a stage leaves the earlier version's stage images in the folder, unplanned. A --force that
    marked them too could never finish (nothing remakes them), so the next --force remade nothing; and
    undoing the edit remade them though the force never covered that version."""
    exp = tmp_path / "staged.toml"
    plain = STAGED.replace("metrics =", "streams = 1\nmetrics =").replace('metric = "clip_score:model=tiny"\n', "") \
        .replace("top_k = 1\n", "")
    exp.write_text(plain)
    first = run_experiment(exp, out=tmp_path / "run", progress=False)
    exp.write_text(plain.replace("__parent__, masterpiece", "__parent__, award winning"))
    edited = run_experiment(exp, out=tmp_path / "run", progress=False)
    assert 0 < edited.generated < edited.planned
    for _ in range(2):  # the second force starts anew: every image again
        forced = run_experiment(exp, out=tmp_path / "run", force=True, progress=False)
        assert forced.generated == forced.planned == edited.planned
    exp.write_text(plain)  # undone: the first version's images are all still there
    undone = run_experiment(exp, out=tmp_path / "run", progress=False)
    assert undone.planned == first.planned and undone.generated == 0
    # an edit that keeps every image (another metric) drops the stages' plans to plan them again: a force
    # with it still remakes the later stages, which come back under the same keys
    exp.write_text(plain.replace('metrics = ["clip_score:model=tiny"]', 'metrics = ["clip_score:model=tiny", "health"]'))
    forced = run_experiment(exp, out=tmp_path / "run", force=True, progress=False)
    assert forced.generated == forced.planned == first.planned


def test_plan_of_a_finished_staged_run_says_its_stages_are_planned_and_done(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    exp = tmp_path / "staged.toml"
    exp.write_text(STAGED)
    before = CliRunner().invoke(app, ["plan", str(exp), "--out", str(tmp_path / "run")])
    assert "planned once stage main is done" in before.output and "jobs done" not in before.output
    run_experiment(exp, out=tmp_path / "run", progress=False)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        stages = led.jobs_frame()["stage"].value_counts().to_dict()
    after = CliRunner().invoke(app, ["plan", str(exp), "--out", str(tmp_path / "run")])
    assert after.exit_code == 0, after.output
    for name in ("refine", "polish"):
        assert f"planned in {tmp_path / 'run'}: {stages[name]} of its {stages[name]} jobs done" in after.output
    assert "planned once stage" not in after.output
    # edited: the folder's stage plans are the earlier version's, so their progress is not shown as this one's
    exp.write_text(STAGED.replace("strengths = [0.5]", "strengths = [0.75]"))
    edited = CliRunner().invoke(app, ["plan", str(exp), "--out", str(tmp_path / "run")])
    assert edited.exit_code == 0, edited.output
    assert edited.output.count("planned again by the next run (the experiment changed since") == 2
    assert "jobs done" not in edited.output


def test_randomize_draws_the_main_images_settings_and_leaves_the_stages_own(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(STAGED.replace("[[stages]]", "[randomize]\nseed = 3\ndraws = 2\nsteps = [2, 6]\n"
                                  "guidance = [3.0, 5.0]\n\n[[stages]]", 1))
    run_experiment(exp, out=tmp_path / "run", progress=False)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        jobs = led.all_jobs(status="done")
    main = [j for j in jobs if j.meta["stage"] == "main"]
    later = [j for j in jobs if j.meta["stage"] != "main"]
    assert len(main) == 8 and {j.meta["draw"] for j in main} == {0, 1}
    assert all(2 <= j.steps <= 6 and 3.0 <= j.guidance <= 5.0 for j in main)
    assert len({(j.steps, j.guidance) for j in main}) > 1
    # the stages: their own strengths, the experiment's steps and guidance, one image per parent and prompt
    assert len(later) == 8 and all("draw" not in j.meta and j.steps == 4 and j.guidance == 7.5 for j in later)
    assert {(j.meta["stage"], j.strength) for j in later} == {("refine", 0.5), ("polish", 0.3)}


def _refine_only(text: str) -> str:
    return text[: text.index("[[stages]]\nname = \"polish\"")]


def test_stage_parents_come_from_the_current_main_plan_not_an_ablations_images(tmp_path):
    """An ablation in the folder keeps plan keys of its own; after an edit they belong to the earlier
    version and are dropped with it, and parents are only ever the source stage's planned images."""
    from harness.tables import image_table

    exp = tmp_path / "exp.toml"
    exp.write_text(_refine_only(STAGED))
    run_experiment(exp, out=tmp_path / "run", progress=False)
    with Ledger.open(tmp_path / "run") as led:  # as `harness ablate` leaves it: its own plan part
        led.set_plan("ablation", [j.key for j in led.done_jobs() if j.seed == 1 and j.meta["stage"] == "main"])
    exp.write_text(_refine_only(STAGED).replace("seeds = [1, 2]", "seeds = [2]"))
    r = run_experiment(exp, out=tmp_path / "run", progress=False)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        table = image_table(led).set_index("key")
        assert "ablation" not in led.plan_parts()
    assert set(table["seed"]) == {2} and r.unplanned > 0
    assert set(table.loc[table["stage"] == "refine", "parent_key"]) == set(table.index[table["stage"] == "main"])


def test_a_wildcard_edit_drops_the_stages_planned_from_the_earlier_main_images(tmp_path):
    from harness.experiment import load_experiment
    from harness.plan import make_plan
    from harness.run import prepare_run

    (tmp_path / "hue.txt").write_text("red\nblue\n")
    exp = tmp_path / "exp.toml"
    exp.write_text(_refine_only(STAGED).replace("{red|blue}", "__hue__"))
    run_experiment(exp, out=tmp_path / "run", progress=False)
    (tmp_path / "hue.txt").write_text("red\ngreen\n")
    loaded = load_experiment(exp)
    ledger, pending = prepare_run(loaded, make_plan(loaded), tmp_path / "run")  # a run cut off after this
    try:
        assert "stage:refine" not in ledger.plan_parts() and {j.prompt for j in pending} == {"a green fox"}
    finally:
        ledger.close()


def test_a_stage_whose_metric_scores_no_source_image_says_so(tmp_path):
    from harness.metrics.base import Metric, MetricInfo, register

    @register
    class NeverScores(Metric):
        INFO = MetricInfo(name="never_scores", description="NaN for every image", unit="", range=(0.0, 1.0),
                          higher_is_better=True, needs=frozenset({"image"}))

        def _score(self, items):
            return [(float("nan"), {"reason": "never"}) for _ in items]

    exp = tmp_path / "exp.toml"
    exp.write_text(_refine_only(STAGED).replace('metric = "clip_score:model=tiny"', 'metric = "never_scores"'))
    logged: list[str] = []
    r = run_experiment(exp, out=tmp_path / "run", progress=False, log=logged.append)
    assert r.generated == 4
    assert any(m.startswith("stage refine: 2 of the 2 variants of stage main have no never_scores score, so top_k "
                            "refines none of their images; give the stage a metric that scores them") for m in logged)


def test_plan_counts_stage_jobs_from_top_k_prompts_negatives_seeds_and_strengths(tmp_path):
    """4 main variants (2 prompts x 2 negatives) of 3 seeds; top 2 each = 8 parents, each refined with
    2 prompts x 2 negatives of its own x 2 strengths x 2 seeds."""
    from harness.experiment import load_experiment
    from harness.plan import make_plan
    from harness.stages import stage_job_counts

    exp = tmp_path / "exp.toml"
    exp.write_text('name = "s"\nprompt = "a {red|blue} fox"\nnegative_prompt = "{blurry|ugly}"\nseeds = [1, 2, 3]\n'
                   'checkpoints = ["tiny"]\nsteps = 4\nmetrics = ["health"]\n\n[[stages]]\nname = "refine"\n'
                   'prompt = "__parent__, {x|y}"\nnegative_prompt = "{dark|light}"\nstrengths = [0.3, 0.5]\n'
                   'seeds = [7, 8]\ntop_k = 2\n'
                   'metric = "health"\n\n[[stages]]\nname = "polish"\nfrom = "refine"\nprompt = "__parent__"\n'
                   'strengths = [0.5]\ntop_k = 1\nmetric = "health"\n')
    loaded = load_experiment(exp)
    plan = make_plan(loaded)
    counts = stage_job_counts(loaded, list(plan.jobs), plan.checkpoints)
    # polish: refine's variants are its prompts x negatives x strengths (16; a variant holds the children of
    # both main negatives, 8 images), top 1 each; without a negative prompt of its own each polish image takes
    # its parent's, one each
    assert counts == {"refine": 4 * 2 * 2 * 2 * 2 * 2, "polish": 16}


def test_two_stages_that_would_make_the_same_image_are_refused_before_anything_is_made(tmp_path):
    """`b` sweeps strengths that include `a`'s: their images at 0.5 would be one image claimed by two stages
    (and `c`, from `a`, lost its parents when `b` relabelled them)."""
    import pytest

    from harness.experiment import ExperimentError

    exp = tmp_path / "exp.toml"
    exp.write_text(_refine_only(STAGED).split("[[stages]]")[0] + (
        '[[stages]]\nname = "a"\nfrom = "main"\nprompt = "__parent__, detailed"\nstrengths = [0.5]\n\n'
        '[[stages]]\nname = "b"\nfrom = "main"\nprompt = "__parent__, detailed"\nstrengths = [0.75, 0.5]\n\n'
        '[[stages]]\nname = "c"\nfrom = "a"\nprompt = "__parent__, polished"\n'))
    with pytest.raises(ExperimentError, match="stages 'a' and 'b' would both make the image of prompt 'a red fox, "
                                              "detailed', seed 1, strength 0.5 from the same parent"):
        run_experiment(exp, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    exp.write_text(exp.read_text().replace("strengths = [0.75, 0.5]", "strengths = [0.75]"))
    r = run_experiment(exp, out=tmp_path / "run", progress=False)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        stages = [j.meta["stage"] for j in led.all_jobs(status="done")]
    assert r.generated == 4 * 4 and {s: stages.count(s) for s in set(stages)} == {"main": 4, "a": 4, "b": 4, "c": 4}


def test_plan_counts_only_the_parents_a_stage_metric_can_rank(tmp_path):
    """A metric that compares with the init image scores only the img2img images of a txt2img + img2img
    source: the txt2img variants get no children, in the plan's count as in the run."""
    from PIL import Image

    from harness.experiment import load_experiment
    from harness.plan import make_plan
    from harness.stages import stage_job_counts

    Image.new("RGB", (64, 64), "red").save(tmp_path / "init.png")
    exp = tmp_path / "exp.toml"
    exp.write_text('prompt = "a {red|blue} fox"\nseeds = [1, 2]\nmode = ["txt2img", "img2img"]\n'
                   'init_images = "init.png"\nstrengths = [0.5]\nsteps = 4\nwidth = 64\nheight = 64\n\n'
                   '[[stages]]\nname = "refine"\nprompt = "__parent__, sharp"\ntop_k = 1\n'
                   'metric = "clip_image_similarity:model=tiny"\n')
    loaded = load_experiment(exp)
    plan = make_plan(loaded)
    assert stage_job_counts(loaded, list(plan.jobs), plan.checkpoints) == {"refine": 2}  # 2 img2img variants


def test_an_edit_that_changes_no_main_image_keeps_the_ablation_planned_in_the_folder(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(_refine_only(STAGED))
    run_experiment(exp, out=tmp_path / "run", progress=False)
    with Ledger.open(tmp_path / "run") as led:  # as `harness ablate` leaves it: its own plan part
        led.set_plan("ablation", [j.key for j in led.done_jobs() if j.meta["stage"] == "main"][:2])
    exp.write_text(_refine_only(STAGED).replace('metrics = ["clip_score:model=tiny"]',
                                                'metrics = ["clip_score:model=tiny", "health"]\nbatch_size = 2'))
    r = run_experiment(exp, out=tmp_path / "run", progress=False)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert "ablation" in led.plan_parts() and len(led.plan_keys("ablation")) == 2
    assert r.generated == 0 and r.unplanned == 0
