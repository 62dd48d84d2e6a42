"""A1111 emphasis: the parser, the weighted embeddings with the real tiny pipeline, and what the planner and
the metrics make of prompts that hold it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from harness.emphasis import EmphasisError, UP, has_emphasis, parse, plain


@pytest.mark.parametrize("prompt, runs", [
    ("a castle", [("a castle", 1.0)]),
    ("a (castle:1.2), dusk", [("a ", 1.0), ("castle", 1.2), (", dusk", 1.0)]),
    ("(castle)", [("castle", UP)]),
    ("((castle))", [("castle", UP * UP)]),
    ("[castle]", [("castle", 1 / UP)]),
    ("x (a (b:0.5) c) y", [("x ", 1.0), ("a ", UP), ("b", UP * 0.5), (" c", UP), (" y", 1.0)]),
    ("((a):1.3)", [("a", UP * 1.3)]),
    ("(std::vector:1.5)", [("std::vector", 1.5)]),   # the weight is the last `:N` only
    ("(a castle: .5 )", [("a castle", 0.5)]),
    (r"a \(b\) \[c\] \\", [(r"a (b) [c] \ ".rstrip(), 1.0)]),
    ("(a castle:1)", [("a castle", 1.0)]),
    # as A1111 reads them: a weight is written at its own bracket's level, a `:` or `|` inside a nested
    # bracket is not prompt editing, and a backslash is dropped before any character
    ("(a:(1.5))", [("a:", UP), ("1.5", UP * UP)]),
    ("[(a:b)]", [("a:b", 1.0)]),
    ("[(fog:1.2)] sky", [("fog", 1.2 / UP), (" sky", 1.0)]),
    (r"[a\:b] [c\|d]", [("a:b", 1 / UP), (" ", 1.0), ("c|d", 1 / UP)]),
    ("a\\b c\\", [("ab c", 1.0)]),
    (r"(a\:1.5)", [("a", 1.5)]),
])
def test_runs_and_weights(prompt, runs):
    got = parse(prompt)
    assert [t for t, _ in got] == [t for t, _ in runs]
    assert [w for _, w in got] == pytest.approx([w for _, w in runs])


@pytest.mark.parametrize("prompt, column, words", [
    ("a (b", 3, "'(' is never closed by ')'"),
    ("a b) c", 4, "')' closes no '('"),
    ("(a]", 3, "']' closes no '['"),
    ("x [a:b:0.5]", 3, "prompt editing"),
    ("[a|b]", 1, "alternation"),
    ("[(a) : b:2]", 1, "prompt editing"),
])
def test_malformed_emphasis_names_its_column(prompt, column, words):
    with pytest.raises(EmphasisError) as e:
        parse(prompt)
    assert e.value.column == column and words in str(e.value) and f"column {column}:" in str(e.value)


def escape(text: str) -> str:
    return "".join("\\" + c if c in "()[]\\" else c for c in text)


@given(st.text(alphabet="ab ()[]:\\.1", max_size=30))
def test_escaped_text_reads_as_itself_at_weight_one(text):
    runs = parse(escape(text))
    assert plain(escape(text)) == text and all(w == 1 for _, w in runs)
    assert not has_emphasis(text) or any(c in text for c in "()[]\\")


@given(st.lists(st.tuples(st.text(alphabet="abc ,", min_size=1, max_size=6),
                          st.sampled_from([0.5, 0.9, 1.0, 1.25, 2.0])), max_size=5))
def test_written_weights_are_read_back(pieces):
    prompt = "".join(f"({t}:{w})" for t, w in pieces)
    assert plain(prompt).replace(" ", "") == "".join(t for t, _ in pieces).replace(" ", "")
    per_char = [w for text, w in parse(prompt) for _ in text]
    assert per_char == [w for t, w in pieces for _ in t]


@pytest.fixture(scope="module")
def tokenizer(tiny_ref):
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(tiny_ref.source, subfolder="tokenizer")


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.text(alphabet="ab ,!", min_size=1, max_size=5),
                          st.sampled_from([0.5, 1.0, 1.25])), max_size=5))
def test_the_plain_text_tokenizes_as_the_model_read_the_runs(tokenizer, pieces):
    """Each run of one weight is tokenized on its own: `(red)circle` is read as red + circle, and a metric
    scoring `plain()` must see those tokens, not one word `redcircle`."""
    prompt = "".join(f"({t}:{w})" for t, w in pieces)
    seen = [i for text, _ in parse(prompt) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert tokenizer(plain(prompt), add_special_tokens=False)["input_ids"] == seen
    assert plain("a (red)circle") == "a red circle" and plain("a [blue]star,(gray background)") == (
        "a blue star,gray background")
    assert plain("a (red) circle") == "a red circle" and plain("(a:1)(b:1)") == "ab"  # one run: one word


# ---------------------------------------------------------------- embeddings (the real tiny pipeline)

@pytest.fixture(scope="module")
def pipe(tiny_ref):
    from harness.generate import PipelineCache

    return PipelineCache("cpu", memory="none").get(tiny_ref, "txt2img", "ddim")


def test_weights_of_one_give_the_pipelines_own_embeddings_bit_for_bit(pipe):
    from harness.weighted import weighted_embeddings

    for prompt, same_as in [("(a red castle:1)", "a red castle"), ("a (red:1) castle", "a red castle"),
                            ("", ""), (" ".join(["castle"] * 100), " ".join(["castle"] * 100))]:
        mine = weighted_embeddings(pipe, prompt, "cpu")
        theirs, _ = pipe.encode_prompt(same_as, "cpu", 1, False)
        assert mine.shape == theirs.shape and torch.equal(mine, theirs), prompt


def test_a_weight_scales_its_own_tokens_only(pipe):
    """The tiny encoder's last LayerNorm has no bias, so its outputs average to float noise: scaling back to
    that mean would blow the embedding up or flip it; the weights apply without it."""
    from harness.weighted import weighted_embeddings

    plain_z, _ = pipe.encode_prompt("a red castle", "cpu", 1, False)
    for prompt, token, weight in [("a (red:1.5) castle", 2, 1.5), ("(a castle:1.5)", 1, 1.5),
                                  ("a [red] castle", 2, 1 / 1.1)]:
        z = weighted_embeddings(pipe, prompt, "cpu")
        assert torch.isfinite(z).all(), prompt
        ratio = (z / weighted_embeddings(pipe, prompt.replace(f":{weight}", ":1"), "cpu"))[0, :, 0]
        if "[" in prompt:
            ratio = (z / plain_z)[0, :, 0]
        assert ratio[token].item() == pytest.approx(weight, rel=1e-5), prompt
        assert ratio[-1].item() == pytest.approx(1.0), prompt  # padding keeps its weight and scale


def test_the_mean_is_restored_where_it_is_not_noise():
    from harness.weighted import _restorable

    rng = torch.Generator().manual_seed(0)
    plain = torch.randn(1, 77, 8, generator=rng) + 0.5  # an encoder with a LayerNorm bias: a real mean
    weighted = plain * torch.linspace(0.8, 1.3, 77)[None, :, None]
    restore = plain.mean() / weighted.mean()
    assert _restorable(plain, restore)
    assert (weighted * restore).mean().item() == pytest.approx(plain.mean().item(), rel=1e-5)
    centred = plain - plain.mean(dim=-1, keepdim=True)  # every token averages to 0 (no bias)
    assert not _restorable(centred, centred.mean() / (centred * 1.5).mean())
    assert not _restorable(plain, torch.tensor(float("inf"))) and not _restorable(plain, torch.tensor(-2.0))


# ---------------------------------------------------------------- the planner and the run

EXP = """
name = "emph"
prompt = "{{a castle|(a castle:1)|(a castle:1.5)|a [castle]}}"
seeds = [1]
checkpoints = ["tiny"]
steps = 2
width = 64
height = 64
{extra}
"""


def test_emphasis_changes_the_image_only_where_a_weight_is_not_one(tmp_path):
    from harness.ledger import Ledger
    from harness.run import run_experiment
    from PIL import Image

    (tmp_path / "e.toml").write_text(EXP.format(extra='metrics = ["clip_score:model=tiny,clamp=batch_mean"]'))
    run_experiment(tmp_path / "e.toml", out=tmp_path / "run", progress=False)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        jobs = {j.prompt: j for j in led.all_jobs()}
        pixels = {p: np.asarray(Image.open(led.image_path(j.key)), dtype=np.int16) for p, j in jobs.items()}
        scores = led.scores_frame().set_index("key")["value"]
    assert {p: j.emphasis for p, j in jobs.items()} == {
        "a castle": None, "(a castle:1)": "a1111", "(a castle:1.5)": "a1111", "a [castle]": "a1111"}
    assert np.array_equal(pixels["(a castle:1)"], pixels["a castle"])  # the brackets are not tokens
    assert not np.array_equal(pixels["(a castle:1.5)"], pixels["a castle"])
    assert not np.array_equal(pixels["a [castle]"], pixels["a castle"])
    assert all(p.std() > 1 for p in pixels.values())  # weighted prompts make images, not black squares
    # CLIP scores each image against the words, not the brackets: equal pixels, equal score
    assert scores[jobs["(a castle:1)"].key] == pytest.approx(scores[jobs["a castle"].key])


def test_literal_emphasis_keeps_the_keys_brackets_had_before(tmp_path):
    from harness.experiment import load_experiment
    from harness.plan import make_plan

    (tmp_path / "a.toml").write_text(EXP.format(extra=""))
    (tmp_path / "l.toml").write_text(EXP.format(extra='emphasis = "literal"'))
    read = {j.prompt: j for j in make_plan(load_experiment(tmp_path / "a.toml")).jobs}
    literal = {j.prompt: j for j in make_plan(load_experiment(tmp_path / "l.toml")).jobs}
    assert all(j.emphasis is None for j in literal.values())
    assert read["a castle"].key == literal["a castle"].key  # no brackets: the key is what it always was
    assert read["(a castle:1.5)"].key != literal["(a castle:1.5)"].key


def test_a_malformed_prompt_is_refused_at_plan_time_with_its_column(tmp_path):
    from harness.experiment import ExperimentError, load_experiment
    from harness.plan import make_plan

    (tmp_path / "e.toml").write_text(EXP.format(extra="").replace("a [castle]", "a (castle"))
    with pytest.raises(ExperimentError) as e:
        make_plan(load_experiment(tmp_path / "e.toml"))
    text = str(e.value)
    assert "e.toml" in text and "prompt 'a (castle' (expanded with factor " in text
    assert "(a castle:1.5)|a (castle = 'a (castle'), column 3: '(' is never closed" in text  # the level to mend
    assert 'emphasis = "literal"' in text
    (tmp_path / "e.toml").write_text(EXP.format(extra='emphasis = "bold"'))
    with pytest.raises(ExperimentError, match="key 'emphasis'.*'a1111', 'literal'"):
        load_experiment(tmp_path / "e.toml")


def test_a_malformed_negative_prompt_is_refused_even_when_the_prompt_holds_emphasis(tmp_path):
    from harness.experiment import ExperimentError, load_experiment
    from harness.plan import make_plan

    (tmp_path / "e.toml").write_text(EXP.format(extra='negative_prompt = "[blurry:sharp:0.5]"'))
    with pytest.raises(ExperimentError, match=r"negative prompt '\[blurry:sharp:0.5\]', column 1: prompt editing"):
        make_plan(load_experiment(tmp_path / "e.toml"))


def test_a_literal_jobs_infotext_tells_the_web_ui_to_read_brackets_as_text():
    from harness.core import Job
    from harness.provenance import a1111_parameters

    base = dict(checkpoint="tiny", fingerprint="f" * 64, mode="txt2img", negative_prompt="", seed=1, steps=2,
                guidance=7.5, scheduler="ddim", width=64, height=64)
    literal = a1111_parameters(Job(prompt="(a castle:1.5)", **base), sampler="DDIM", model_name="tiny")
    weighted = a1111_parameters(Job(prompt="(a castle:1.5)", emphasis="a1111", **base), sampler="DDIM",
                                model_name="tiny")
    plain = a1111_parameters(Job(prompt="a castle", **base), sampler="DDIM", model_name="tiny")
    assert "Emphasis: None" in literal and "Emphasis" not in weighted and "Emphasis" not in plain
