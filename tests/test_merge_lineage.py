"""`harness merge` and the lineage of later stages: a parent this folder lost, repaired from the source, takes
the source's children with it and this folder's children of the lost copy leave the plan; children of a
parent the source holds damaged wait for it. Either way one parent has one child per slot."""

import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from harness.ledger import Ledger
from harness.run import merge_runs, run_experiment
from harness.tables import image_table

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

EXP = """
name = "repair"
prompt = "a {red|blue} cat"
seeds = [1, 2, 3]
checkpoints = ["tiny"]
steps = 2
width = 64
height = 64

[[stages]]
name = "refine"
prompt = "__parent__, sharp"
strengths = [0.5]
"""


def _pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def _runs_a_level_apart(tmp_path):
    """Runs `a` and `b` of EXP that batch apart, so some main images are a level apart (as overlapping
    shards make them) and their children, keyed by the parent's pixels, have other keys; returns such a
    main image's job."""
    exp = tmp_path / "exp.toml"
    exp.write_text(EXP)
    run_experiment(exp, out=tmp_path / "a", batch_size=1, progress=False, log=lambda m: None)
    run_experiment(exp, out=tmp_path / "b", batch_size=6, progress=False, log=lambda m: None)
    with Ledger.open(tmp_path / "a", readonly=True) as a:
        main = [j for j in a.done_jobs() if j.meta.get("stage") == "main"]
    return next(j for j in main if (_pixels(tmp_path / "a" / "images" / f"{j.key}.png")
                                    != _pixels(tmp_path / "b" / "images" / f"{j.key}.png")).any())


def _one_child_per_slot(run, children: int) -> None:
    with Ledger.open(run, readonly=True) as led:
        table = image_table(led)
    refine = table[table["stage"] == "refine"]
    slots = Counter(zip(refine["parent_key"], refine["prompt"], refine["seed"], refine["strength"]))
    assert max(slots.values()) == 1, {k[0][:12]: n for k, n in slots.items() if n > 1}
    assert len(refine) == children


def test_a_merge_that_repairs_a_lost_parent_leaves_one_child_per_parent_slot(tmp_path):
    lost = _runs_a_level_apart(tmp_path)
    shutil.copytree(tmp_path / "a", tmp_path / "run")
    (tmp_path / "run" / "images" / f"{lost.key}.png").unlink()  # the folder lost a parent image

    said = []
    merge_runs(tmp_path / "run", [tmp_path / "b"], log=said.append)
    assert "1 images this folder had lost" in said[0] and "1 later-stage images of this folder taken out" in said[0]

    run_image = _pixels(tmp_path / "run" / "images" / f"{lost.key}.png")
    assert (run_image == _pixels(tmp_path / "b" / "images" / f"{lost.key}.png")).all()  # repaired from b
    _one_child_per_slot(tmp_path / "run", 6)


def test_remaking_a_damaged_parent_in_its_shard_and_merging_again_leaves_one_child_per_parent_slot(tmp_path):
    """The README's way: merge skips the shard's damaged parent and what was made from it, the shard's folder
    remakes the parent (a level apart: it is batched alone now) and refines it again, and the shard is merged
    again: the merged folder holds the new parent with its one child."""
    damaged = _runs_a_level_apart(tmp_path)
    path = tmp_path / "b" / "images" / f"{damaged.key}.png"
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF
    path.write_bytes(bytes(data))

    said = []
    first = merge_runs(tmp_path / "run", [tmp_path / "b"], log=said.append)
    assert first["bad"] == 1 and "1 later-stage images left out: made from a damaged image" in said[0]
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert not any(j.meta.get("parent_key") == damaged.key for j in led.done_jobs())
    run_experiment(tmp_path / "b" / "experiment.toml", out=tmp_path / "b", progress=False, log=lambda m: None)
    merge_runs(tmp_path / "run", [tmp_path / "b"], log=lambda m: None)
    _one_child_per_slot(tmp_path / "run", 6)
