"""The toy world: determinism, captions, and the oracle metrics that read it back."""

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from harness.metrics import Item, get_metric
from harness.toy import oracle, world


def _samples(seed, n, size, **kwargs):
    rng = np.random.default_rng(seed)
    return [world.sample(rng, size, **kwargs) for _ in range(n)]


def test_same_seed_gives_same_image_bytes_and_caption():
    a = world.sample(np.random.default_rng(7), 64)
    b = world.sample(np.random.default_rng(7), 64)
    assert a.caption == b.caption and a.labels == b.labels
    assert a.image.tobytes() == b.image.tobytes()


def test_different_seeds_give_different_samples():
    captions = {world.sample(np.random.default_rng(seed), 32).caption for seed in range(20)}
    assert len(captions) > 15


def test_a_scene_renders_at_any_size_with_the_same_geometry():
    scene = world.sample_scene(np.random.default_rng(3))
    small, large = world.render(scene, 64), world.render(scene, 256)
    assert small.shape == (64, 64, 3) and large.shape == (256, 256, 3)
    down = np.asarray(Image.fromarray(large).resize((64, 64), Image.BOX), dtype=float)
    assert np.abs(down - small).mean() < 12


def test_background_is_never_the_shape_colour():
    with pytest.raises(ValueError, match="must differ"):
        world.Labels("circle", "red", "red")
    assert all(s.labels.color != s.labels.background for s in _samples(1, 200, 16))


def test_unknown_vocabulary_is_rejected_with_the_valid_words():
    with pytest.raises(ValueError, match="circle, square, triangle, star"):
        world.Labels("hexagon", "red", "white")


def test_captions_parse_back_to_their_labels():
    rng = np.random.default_rng(5)
    for _ in range(300):
        labels, phrasing = world.sample_labels(rng), world.sample_phrasing(rng)
        parsed = oracle.parse_prompt(world.caption(labels, phrasing))
        assert (parsed.color, parsed.shape, parsed.background, parsed.artist, parsed.medium) == \
            (labels.color, labels.shape, labels.background, labels.artist, labels.medium)


def test_captions_vary_word_order():
    labels = world.Labels("circle", "red", "blue", artist="greg rutkowski")
    texts = {world.caption(labels, world.Phrasing(t, False)) for t in range(len(world.TEMPLATES))}
    assert "a red circle on a blue background, by greg rutkowski" in texts
    assert "blue background with a red circle, by greg rutkowski" in texts


def test_swapped_changes_exactly_one_attribute():
    rng = np.random.default_rng(2)
    for attribute in ("color", "shape", "background", "artist"):
        labels = world.sample_labels(rng)
        other = world.swapped(labels, attribute, rng)
        assert getattr(other, attribute) != getattr(labels, attribute)
        assert replace(other, **{attribute: getattr(labels, attribute)}) == labels


def test_oracle_reads_world_images_at_99_percent_or_better():
    samples = _samples(11, 120, 128)
    right, style = Counter(), []
    for s in samples:
        found = oracle.analyze(s.image)
        right["color"] += found.color == s.labels.color
        right["shape"] += found.shape == s.labels.shape
        right["background"] += found.background == s.labels.background
        if s.labels.style:
            style.append(found.has_style(s.labels.style))
    for attribute, count in right.items():
        assert count / len(samples) >= 0.99, attribute
    assert np.mean(style) >= 0.99 and len(style) > 40


def test_style_signatures_are_absent_when_not_drawn():
    for style in world.STYLES:
        rng = np.random.default_rng(4)
        plain = [world.render(world.scene_for(replace(world.sample_labels(rng, p_artist=0), medium=None), rng), 128)
                 for _ in range(8)]
        assert not any(oracle.analyze(img).has_style(style) for img in plain), style


def test_a_softened_outline_is_still_an_outline_and_a_blurred_plain_shape_is_not():
    """A generated outline blends into the background at its outermost pixels; the detector looks for
    dark pixels within the outline's width of the boundary, so a softened outline is found and a
    softened shape without one is not."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(8)
    for i in range(12):
        labels = replace(world.sample_labels(rng), medium=None)
        scene = world.scene_for(replace(labels, artist="greg rutkowski"), rng)
        plain = replace(scene, labels=replace(labels, artist=None))
        for size in (128, 256):
            soft = [np.clip(gaussian_filter(world.render(s, size).astype(float), (1.0, 1.0, 0)), 0, 255)
                    .astype(np.uint8) for s in (scene, plain)]
            assert oracle.analyze(soft[0]).has_style("outline"), (i, size, labels)
            assert not oracle.analyze(soft[1]).has_style("outline"), (i, size, labels)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Oracle metric scores of world images written as PNG files, through the metric registry."""
    folder = tmp_path_factory.mktemp("toy-world")
    rng = np.random.default_rng(99)
    items = []
    for i in range(24):
        labels = world.sample_labels(rng, p_artist=1.0)
        path = folder / f"{i}.png"
        Image.fromarray(world.render(world.scene_for(labels, rng), 128)).save(path)
        items.append(Item(str(i), path, prompt=world.caption(labels, world.sample_phrasing(rng))))
    names = ("toy_color_match", "toy_shape_match", "toy_background_match", "toy_style_match")
    return {name: get_metric(name).score(items) for name in names}


@pytest.mark.parametrize("name", ["toy_color_match", "toy_shape_match", "toy_background_match", "toy_style_match"])
def test_oracle_metric_scores_world_images_as_matching(scored, name):
    values = [s.value for s in scored[name]]
    assert np.mean(values) >= 0.99


def test_oracle_metric_scores_a_mismatch_zero(tmp_path):
    path = tmp_path / "x.png"
    labels = world.Labels("star", "red", "white")
    Image.fromarray(world.render(world.scene_for(labels, np.random.default_rng(0)), 128)).save(path)
    [score] = get_metric("toy_color_match").score([Item("k", path, prompt="a blue star on a white background")])
    assert score.value == 0.0 and score.detail == {"wanted": "blue", "found": "red"}


def test_oracle_metric_with_want_asks_a_fixed_question(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(world.render(world.scene_for(world.Labels("star", "red", "white"), np.random.default_rng(0)),
                                 128)).save(path)
    items = [Item("k", path, prompt="a blue star on a white background"), Item("j", path, prompt="a star"),
             Item("e", path, prompt="")]
    red, blue = get_metric("toy_color_match", want="red"), get_metric("toy_color_match", want="blue")
    assert red.id == "toy_color_match[want=red]" and get_metric("toy_color_match").id == "toy_color_match"
    assert [s.value for s in red.score(items)] == [1.0, 1.0, 1.0]  # whatever the prompt says, or none
    assert [s.value for s in blue.score(items)] == [0.0, 0.0, 0.0]
    assert get_metric("toy_color_match").score(items[2:])[0].detail["reason"] == "item has no prompt"
    with pytest.raises(ValueError, match="want='crimson': expected one of"):
        get_metric("toy_color_match", want="crimson")
    # read as the prompt parser reads words: any case, grey as gray; one metric id for each spelling
    assert get_metric("toy_background_match", want="Grey").id == "toy_background_match[want=gray]"
    assert get_metric("toy_style_match", want="Ian McQue").id == "toy_style_match[want=ian mcque]"


@pytest.mark.parametrize("name,prompt", [
    ("toy_color_match", "a circle on a white background"),
    ("toy_shape_match", "a red thing on a white background"),
    ("toy_background_match", "a red circle"),
    ("toy_style_match", "a red circle on a white background"),
])
def test_oracle_metric_is_nan_with_a_reason_when_the_prompt_lacks_the_attribute(tmp_path, name, prompt):
    path = tmp_path / "x.png"
    Image.fromarray(world.render(world.sample_scene(np.random.default_rng(0)), 64)).save(path)
    [score] = get_metric(name).score([Item("k", path, prompt=prompt)])
    assert math.isnan(score.value) and "prompt names no" in score.detail["reason"]


@pytest.mark.parametrize("spec", ["toy_color_match", "toy_color_match:want=red", "toy_shape_match",
                                  "toy_style_match", "toy_style_match:want=ian mcque"])
def test_an_image_with_no_shape_is_a_miss_not_an_unscored_image(tmp_path, spec):
    """A prompt that breaks the model into drawing nothing must count against it, not drop out of the study."""
    from harness.metrics.spec import parse_metric_spec

    path = tmp_path / "empty.png"
    Image.fromarray((world.vignette(128, 128)[..., None] * np.array([245.0, 245, 245])).astype(np.uint8)).save(path)
    name, options = parse_metric_spec(spec)
    [score] = get_metric(name, **options).score(
        [Item("k", path, prompt="a red circle on a white background, 35mm photograph, by greg rutkowski")])
    assert score.value == 0.0 and score.detail["reason"] == "no foreground shape found"
    [background] = get_metric("toy_background_match").score([Item("k", path, prompt="a red circle on a white background")])
    assert background.value == 1.0


def test_prompt_parser_assigns_colours_by_the_noun_that_follows():
    parsed = oracle.parse_prompt("Blue background with a small red circle on the left, by Claude Monet")
    assert (parsed.color, parsed.background, parsed.shape, parsed.style) == ("red", "blue", "circle", "blur")
    assert oracle.parse_prompt("a 35mm photograph of a grey star").medium == "35mm photograph"


@pytest.mark.parametrize("prompt, color, background", [
    ("a circle in red on a white background", None, "white"),  # red names no noun: not guessed
    ("a red circle on a white background", "red", "white"),
    ("a white red circle on a gray background", "red", "gray"),
    ("red background with a blue star", "blue", "red"),
])
def test_a_colour_word_belongs_to_the_next_noun_only_with_no_other_colour_between(prompt, color, background):
    parsed = oracle.parse_prompt(prompt)
    assert (parsed.color, parsed.background) == (color, background)


def test_the_artist_and_medium_named_first_are_the_prompts():
    parsed = oracle.parse_prompt("a red circle, watercolor, by ian mcque and by greg rutkowski, photo")
    assert (parsed.artist, parsed.medium) == ("ian mcque", "watercolor")
