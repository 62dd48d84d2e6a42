"""The `toy` checkpoint and CLIP load like real models and measure what they claim."""

import numpy as np
import pytest
import torch
from PIL import Image

from harness import checkpoints
from harness.pipelines import load_pipeline
from harness.metrics import Item, get_metric
from harness.toy import acceptance, models, oracle, world


@pytest.fixture(scope="module")
def toy_pipe():
    ref = checkpoints.resolve("toy")
    return ref, load_pipeline(ref, "txt2img", device="cpu", scheduler="ddim")


def test_toy_resolves_as_a_builtin_with_a_content_fingerprint(toy_pipe):
    ref, _ = toy_pipe
    assert ref.kind == "builtin" and ref.native_size == 256 and len(ref.fingerprint) == 10
    assert checkpoints.resolve("toy").fingerprint == ref.fingerprint


def test_toy_generates_a_256_px_image_through_the_real_pipeline(toy_pipe):
    _, pipe = toy_pipe
    gen = torch.Generator(device="cpu").manual_seed(0)
    image = pipe("a red circle on a white background", height=256, width=256, num_inference_steps=4,
                 generator=gen).images[0]
    assert image.size == (256, 256)
    assert np.asarray(image).std() > 5  # not a flat or black image


def test_committed_weights_are_fp16_and_small():
    from safetensors import safe_open

    total = 0
    for part in models.PARTS:
        path = models.DATA_DIR / f"{part}.safetensors"
        total += path.stat().st_size
        with safe_open(str(path), "pt") as f:
            assert all(f.get_slice(k).get_dtype() in ("F16", "I32") for k in f.keys())
    assert total < 8_000_000


def test_toy_is_a_v_prediction_model_through_the_loading_path(toy_pipe):
    _, pipe = toy_pipe
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"


def test_red_and_blue_prompts_get_their_colour(toy_pipe):
    _, pipe = toy_pipe
    prompts = ["a large red circle on a white background", "a large blue circle on a white background"]
    images = acceptance.generate(prompts * 2, [1, 1, 2, 2], size=128, steps=20, pipe=pipe)
    found = [oracle.analyze(img).color for img in images]
    assert found == ["red", "blue", "red", "blue"]


def test_clip_score_toy_prefers_the_matching_caption(tmp_path):
    metric = get_metric("clip_score", model="toy", cache="none")
    assert metric.id.startswith("clip_score[model=toy,pretrained=toy")
    rng = np.random.default_rng(42)
    matched, swapped = [], []
    for i in range(6):
        labels = world.sample_labels(rng)
        path = tmp_path / f"{i}.png"
        Image.fromarray(world.render(world.scene_for(labels, rng), 256)).save(path)
        phrasing = world.sample_phrasing(rng)
        other = world.swapped(labels, ("color", "shape", "background")[i % 3], rng)
        items = [Item(f"{i}a", path, prompt=world.caption(labels, phrasing)),
                 Item(f"{i}b", path, prompt=world.caption(other, phrasing))]
        a, b = metric.score(items)
        matched.append(a.value)
        swapped.append(b.value)
    assert np.mean(matched) > np.mean(swapped)


def test_toy_clip_rejects_other_weights():
    from harness.metrics.clip_models import ClipLoadError, load_clip

    with pytest.raises(ClipLoadError, match="only its built-in weights"):
        load_clip("toy", "openai")


STUDY = """
name = "planted"
prompt = "a large {@color: red|blue} {@shape: circle|square} on a white background"
seeds = { count = 4, start = 11 }
checkpoints = ["toy"]
scheduler = "ddim"
steps = 12
width = 128
height = 128
metrics = ["toy_color_match:want=red", "clip_score:model=toy,text=a red circle on a white background", "health"]
"""


def test_a_study_on_toy_finds_the_planted_colour_effect(tmp_path):
    """prompt -> image -> score -> comparison: red vs blue prompts differ on "is it red?" by the oracle
    (CI excludes 0), and the toy CLIP probe agrees in sign."""
    from harness.ledger import Ledger
    from harness.report import compare
    from harness.tables import image_table
    from harness.run import run_experiment

    (tmp_path / "exp.toml").write_text(STUDY)
    result = run_experiment(tmp_path / "exp.toml", out=tmp_path / "run", progress=False, log=lambda m: None)
    assert result.generated == 16
    with Ledger.open(tmp_path / "run", readonly=True) as ledger:
        table = image_table(ledger)
    oracle_cmp = compare(table, "color", metric="toy_color_match:want=red", baseline="red")
    clip_cmp = compare(table, "color", metric="clip_score:model=toy,text=a red circle on a white background",
                       baseline="red")
    [blue] = oracle_cmp.rows
    [blue_clip] = clip_cmp.rows
    assert blue.level == "blue" and blue.n_pairs == 8
    assert blue.ci_high < 0, f"blue minus red on 'is it red' should be negative: {oracle_cmp.to_text()}"
    assert blue.mean_diff < -0.5
    assert blue_clip.mean_diff < 0, clip_cmp.to_text()


def test_toy_clip_meets_its_acceptance_target_on_held_out_images():
    """Toy CLIP picks the true caption over four attribute swaps for >= 90 % of held-out world images."""
    [all_swaps, *per_swap] = acceptance.clip_rows(100)
    assert all_swaps.value >= 0.9, all_swaps
    assert all(row.value >= 0.9 for row in per_swap), per_swap


def test_vae_round_trip_rows_read_the_committed_vae():
    """The acceptance script's VAE ceiling: colour survives a round trip at the demo size; the rows are
    proportions of the held-out images (the style row counts only images whose caption names a style)."""
    rows = {r.check: r for r in acceptance.vae_rows(24, size=128)}
    color = rows["VAE round trip: color right (128 px)"]
    style = rows["VAE round trip: named style detected (128 px)"]
    assert color.n == 24 and color.value >= 0.8
    assert 0 < style.n < 24 and 0.0 <= style.value <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("size", [128, 256])
def test_acceptance_generation_targets(size):
    rows = {r.check.split(" (")[0]: r.value for r in acceptance.generation_rows(96, size=size, steps=20)}
    assert rows["toy images: color right"] >= 0.9
    assert rows["toy images: shape right"] >= 0.7
    assert rows["toy images: named style detected"] >= 0.8
