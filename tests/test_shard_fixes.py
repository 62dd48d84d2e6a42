"""Shards of a staged experiment: merged or run into one folder they plan and report what one run does."""

import os
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.ledger import Ledger
from harness.run import merge_runs, run_experiment
from harness.tables import image_table

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

# `(circle:1)` is `circle` at weight 1: each color's two main images are one image under two keys, so the
# stage makes one child of both. The two `w` levels are two variants, and shards keep variants whole, not
# twins: with 2 shards the blue pair is split (its first key in shard 1), the red pair is shard 0's.
TWINS = """
name = "twins"
prompt = "a {@color: red|blue} {@w: (circle:1)|circle}"
seeds = [1]
checkpoints = ["tiny"]
steps = 2
width = 64
height = 64
exact = true

[[stages]]
name = "refine"
prompt = "a circle, detailed"
strengths = [0.5]
"""

# ranked by a metric that ties (every image healthy): each variant's seed 1 image is refined, so the blue pair's
# child again; a single run takes the variants in the order of their first keys, which here is not the order of
# the twins' own keys (the row is the first by key whatever the order: the rule a merge can follow too)
TWINS_TOP_K = TWINS.replace("red|blue", "blue").replace("seeds = [1]", "seeds = [1, 2]") + """top_k = 1
metric = "health"
"""

# a stage reading a wildcard file beside the experiment; 2 shards hold 2 and 1 of its variants
WILDCARD_STAGE = """
name = "wild"
prompt = "a {@animal: red fox|grey cat|white owl}"
seeds = [1]
checkpoints = ["tiny"]
steps = 2
width = 64
height = 64

[[stages]]
name = "refine"
prompt = "__parent__, __q__"
strengths = [0.5]
"""


def _run(exp, out, **kw):
    return run_experiment(exp, out=out, progress=False, log=lambda m: None, **kw)


def _reported(run_dir) -> dict[str, dict]:
    """The report's image table by key (less what says where and when an image was made), with each image's
    other parents."""
    with Ledger.open(run_dir, readonly=True) as led:
        table = image_table(led)
        table = table.astype(object).where(table.notna(), None)  # NaN (no strength, no parent) equals itself
        also = {j.key: j.meta.get("also_parent_keys") for j in led.done_jobs()}
    keep = ["stage", "prompt", "seed", "strength", "parent_key", "parent_seed", "parent_condition", "healthy",
            *(c for c in table.columns if c.startswith("f."))]
    return {row["key"]: {**{c: row[c] for c in keep}, "also_parent_keys": also[row["key"]]}
            for row in table.to_dict("records")}


def _twin_runs(tmp_path, text=TWINS, children=2):
    exp = tmp_path / "exp.toml"
    exp.write_text(text)
    _run(exp, tmp_path / "full")
    for i in range(2):
        _run(exp, tmp_path / f"s{i}", shard=(i, 2))
    full = _reported(tmp_path / "full")
    shared = [r for r in full.values() if r["also_parent_keys"]]
    assert len(shared) == children and all(len(r["also_parent_keys"]) == 1 for r in shared)
    assert all(r["parent_key"] < r["also_parent_keys"][0] for r in shared)  # the row: the first parent by key
    return exp, full


@pytest.mark.parametrize("text, children", [(TWINS, 2), (TWINS_TOP_K, 1)], ids=["all", "top_k"])
def test_merged_shards_give_a_child_of_identical_parents_the_row_one_run_gives_it_in_either_order(
        tmp_path, text, children):
    _, full = _twin_runs(tmp_path, text, children)
    for order in (("s0", "s1"), ("s1", "s0")):
        out = tmp_path / ("m-" + "-".join(order))
        merge_runs(out, [tmp_path / name for name in order], log=lambda m: None)
        assert _reported(out) == full, order


def test_shards_run_one_after_another_into_one_folder_plan_and_report_every_stage_image(tmp_path):
    """The second shard's stage keeps the first shard's children planned (they were hidden and called
    images of an earlier version), and the child both made is joined as one run plans it."""
    exp, full = _twin_runs(tmp_path)
    for i in range(2):
        _run(exp, tmp_path / "one", shard=(i, 2))
    assert _reported(tmp_path / "one") == full
    with Ledger.open(tmp_path / "one", readonly=True) as led:
        assert led.unplanned_done() == 0 and len(led.plan_keys("stage:refine")) == 2


def test_a_shard_run_after_a_stage_wildcard_file_changed_plans_the_stage_anew(tmp_path):
    """Another shard's children stay planned only while the stage's templates give the prompts they had:
    after an edit of the wildcard file the folder plans the new lines alone, as after an edit of the stage."""
    exp = tmp_path / "exp.toml"
    exp.write_text(WILDCARD_STAGE)
    (tmp_path / "q.txt").write_text("sharp\n")
    run = tmp_path / "run"

    def stage_prompts():
        return sorted(r["prompt"] for r in _reported(run).values() if r["stage"] == "refine")

    for i in range(2):
        _run(exp, run, shard=(i, 2))
    assert stage_prompts() == ["a grey cat, sharp", "a red fox, sharp", "a white owl, sharp"]
    (tmp_path / "q.txt").write_text("blurry\n")
    _run(exp, run, shard=(0, 2))
    first = stage_prompts()
    assert len(first) in (1, 2) and all(p.endswith(", blurry") for p in first)
    _run(exp, run, shard=(1, 2))
    assert stage_prompts() == ["a grey cat, blurry", "a red fox, blurry", "a white owl, blurry"]
    exp.write_text(WILDCARD_STAGE.replace('"__parent__, __q__"', '"__parent__, __q__, detailed"'))
    _run(exp, run, shard=(1, 2))
    assert stage_prompts() == [p + ", blurry, detailed" for p in ("a grey cat", "a red fox", "a white owl") if p not in
                               {q.removesuffix(", blurry") for q in first}]


def test_merge_refuses_shards_whose_stage_wildcard_file_held_other_text(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(WILDCARD_STAGE)
    for i, word in enumerate(("sharp", "blurry")):
        (tmp_path / "q.txt").write_text(word + "\n")
        _run(exp, tmp_path / f"s{i}", shard=(i, 2))
    r = CliRunner().invoke(app, ["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2, r.output
    assert ("one experiment whose wildcard files held other text for stage 'refine' (other prompts from its "
            "templates) and cannot be merged into one") in r.output
    assert str(tmp_path / "s1") in r.output and not (tmp_path / "m" / "images").exists()


class _Ref:
    """A finished task's result, as Ray's ObjectRef names it (hashable: the driver keys batches by it)."""

    def __init__(self, value):
        self.value = value


class _FakeRay(types.ModuleType):
    """Just enough of Ray to run `generate_with_ray` in this process: each actor call runs in `worker_cwd`,
    as a worker on another node runs in its own working folder."""

    def __init__(self, worker_cwd: Path):
        super().__init__("ray")
        self.worker_cwd, self.images_dirs = worker_cwd, []
        errors = ("RayActorError", "WorkerCrashedError", "ActorDiedError", "RayTaskError")
        self.exceptions = types.SimpleNamespace(**{name: type(name, (Exception,), {}) for name in errors})

    def _on_worker(self, fn, *args):
        here = os.getcwd()
        os.chdir(self.worker_cwd)
        try:
            return fn(*args)
        finally:
            os.chdir(here)

    def remote(self, cls):
        fake = self

        class Actor:
            def __init__(self, *args):
                fake.images_dirs.append(args[1])
                self.obj = fake._on_worker(cls, *args)

            def __getattr__(self, name):
                method = getattr(self.obj, name)
                return types.SimpleNamespace(remote=lambda *a: _Ref(fake._on_worker(method, *a)))

        return types.SimpleNamespace(options=lambda **kw: types.SimpleNamespace(remote=Actor))

    def is_initialized(self):
        return True

    def cluster_resources(self):
        return {"CPU": 2.0}

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value

    def kill(self, actor, **kw):
        pass


def test_ray_workers_write_into_the_run_folder_given_as_a_relative_out(tmp_path, monkeypatch):
    fake = _FakeRay(tmp_path / "worker")
    (tmp_path / "worker").mkdir()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.chdir(tmp_path)
    Path("exp.toml").write_text(WILDCARD_STAGE.split("[[stages]]")[0])
    r = _run("exp.toml", "rel", executor="ray", executor_options={"workers": 1})
    assert r.generated == 3 and fake.images_dirs and all(Path(d).is_absolute() for d in fake.images_dirs)
    assert fake.images_dirs[0] == str((tmp_path / "rel" / "images").resolve())
    assert len(list((tmp_path / "rel" / "images").glob("*.png"))) == 3
    assert not (tmp_path / "worker" / "rel").exists()
