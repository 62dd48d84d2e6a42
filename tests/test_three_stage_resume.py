"""A three-stage run (a middle and a last stage with seeds of their own, top_k in the last) cut off in its
middle or last stage, then run again: nothing redone, nothing missed, and the chain columns right."""

import pytest

import harness.run as run_module
from harness.ledger import Ledger
from harness.run import run_experiment
from harness.tables import image_table

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

EXP = """
name = "chain3"
prompt = "a {red|blue} fox"
seeds = [1, 2]
checkpoints = ["tiny"]
steps = 4
width = 64
height = 64
metrics = ["clip_score:model=tiny"]

[[stages]]
name = "refine"
prompt = "__parent__, {detailed|sharp}"
strengths = [0.5]
seeds = [7, 8]

[[stages]]
name = "polish"
from = "refine"
prompt = "__parent__, masterpiece"
strengths = [0.5]
seeds = [9]
top_k = 1
metric = "clip_score:model=tiny"
"""


@pytest.mark.parametrize("cut_at_call", [2, 3])
def test_a_three_stage_run_cut_off_resumes_without_redoing_or_missing(tmp_path, monkeypatch, cut_at_call):
    exp = tmp_path / "exp.toml"
    exp.write_text(EXP)
    real = run_module.generate_jobs
    calls = []

    def cut(exp_, plan, ledger, pending, result, **kw):
        calls.append(len(pending))
        if len(calls) == cut_at_call:  # make half of this stage's images, then stop
            real(exp_, plan, ledger, pending[: len(pending) // 2], result, **kw)
            raise KeyboardInterrupt
        return real(exp_, plan, ledger, pending, result, **kw)

    monkeypatch.setattr(run_module, "generate_jobs", cut)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, out=tmp_path / "run", progress=False, log=lambda m: None)
    monkeypatch.setattr(run_module, "generate_jobs", real)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        before = led.done_keys()
    resumed = run_experiment(exp, out=tmp_path / "run", progress=False, log=lambda m: None)
    assert resumed.already_done == len(before) and resumed.generated == resumed.planned - len(before)
    again = run_experiment(exp, out=tmp_path / "run", progress=False, log=lambda m: None)
    assert again.generated == 0 and again.planned == resumed.planned
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        table = image_table(led).set_index("key")
        assert led.unplanned_done() == 0
    counts = table["stage"].value_counts().to_dict()
    # 4 main; refine: 4 parents x 2 prompts x 2 seeds = 16; polish: top 1 of each refine variant (4 variants
    # of 4 images: 2 main seeds x 2 refine seeds) x 1 seed
    assert counts == {"main": 4, "refine": 16, "polish": 4}
    polish = table[table["stage"] == "polish"]
    for key, row in polish.iterrows():
        parent = table.loc[row["parent_key"]]
        root = table.loc[parent["parent_key"]]
        assert (row["seed"], row["parent_seed"], row["root_seed"]) == (9, parent["seed"], root["seed"])
        assert row["parent_condition"] == "refine img2img 0.5 of (txt2img)"
