"""CLIP metrics on the built-in tiny CLIP: values, truncation, cache, conventions, bad items."""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("open_clip")
skdata = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

from harness.metrics import Item, get_metric  # noqa: E402
from harness.metrics.clip_embed import EmbeddingCache  # noqa: E402
from harness.metrics.clip_models import TINY_ARCH, TINY_WEIGHTS, ensure_tiny_clip  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon")
PROMPTS = ("a photo of an astronaut", "a cup of coffee", "a cat", "a rocket on the launch pad",
           "a man with a camera", "the moon")
LONG_PROMPT = " ".join(["a highly detailed matte painting of a castle on a hill"] * 10)  # 100 words


@pytest.fixture(scope="module")
def harness_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((96, 96), Image.BICUBIC)
        path = folder / f"{name}.png"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture
def items(photos) -> list[Item]:
    return [Item(key=path.stem, image_path=path, prompt=prompt) for path, prompt in zip(photos, PROMPTS)]


def tiny(metric: str, tmp_path: Path, **options):
    return get_metric(metric, model="tiny", cache=str(tmp_path / "embeddings.sqlite"), **options)


def reference_cosines(items: list[Item]) -> list[float]:
    """cos(image, prompt) straight from open_clip, without any harness code but the weights' location."""
    import open_clip
    import torch

    folder = ensure_tiny_clip()
    open_clip.add_model_config(folder / f"{TINY_ARCH}.json")
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_ARCH, pretrained=str(folder / TINY_WEIGHTS))
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_ARCH)
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(item.image_path).convert("RGB")) for item in items])
        image_features = model.encode_image(images)
        text_features = model.encode_text(tokenizer([item.prompt for item in items]))
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return (image_features * text_features).sum(dim=-1).tolist()


def test_clip_score_equals_independent_open_clip_computation(harness_cache, items, tmp_path):
    expected = [max(100 * cos, 0.0) for cos in reference_cosines(items)]
    scores = tiny("clip_score", tmp_path).score(items)
    assert [s.key for s in scores] == [item.key for item in items]
    assert [s.value for s in scores] == pytest.approx(expected, abs=1e-4)
    assert any(v == 0.0 for v in expected) and any(v > 0 for v in expected), "want both clamped and positive cases"


def test_clip_score_id_names_model_and_conventions(harness_cache, items, tmp_path):
    metric = tiny("clip_score", tmp_path)
    assert metric.id == "clip_score[model=tiny,pretrained=tiny,scale=100,clamp=image]"
    assert all(s.metric == metric.id for s in metric.score(items[:1]))
    assert tiny("clip_score", tmp_path, scale="2.5").id != metric.id


def test_fixed_text_probe_scores_every_image_against_that_text(harness_cache, items, tmp_path):
    probe = "a red circle on a white background"
    metric = tiny("clip_score", tmp_path, text=probe)
    assert metric.id == "clip_score[model=tiny,pretrained=tiny,scale=100,clamp=image,text=a red circle on a white background]"
    same_prompt = [Item(key=item.key, image_path=item.image_path, prompt=probe) for item in items]
    assert [s.value for s in metric.score(items)] == pytest.approx(
        [s.value for s in tiny("clip_score", tmp_path).score(same_prompt)], abs=1e-6)


def test_long_prompt_is_truncated_and_flagged(harness_cache, photos, tmp_path):
    metric = tiny("clip_score", tmp_path)
    long_score, short_score = metric.score([Item("long", photos[0], prompt=LONG_PROMPT),
                                            Item("short", photos[0], prompt="a castle on a hill")])
    assert long_score.detail["truncated"] is True
    assert long_score.detail["tokens"] > 75
    assert long_score.detail["limit"] == metric.embedder.clip.context_length - 2  # what the model read
    assert not math.isnan(long_score.value)
    assert not short_score.detail.get("truncated") and "limit" not in short_score.detail
    assert short_score.detail["tokens"] == 5


def test_rescoring_hits_the_embedding_cache(harness_cache, items, tmp_path):
    cache = EmbeddingCache(tmp_path / "run" / "embeddings.sqlite")
    first = get_metric("clip_score", model="tiny", cache=cache).score(items)
    assert cache.hits == 0 and cache.misses == 2 * len(items)
    again = get_metric("clip_score", model="tiny", cache=cache, scale=2.5).score(items)
    assert cache.hits == 2 * len(items) and cache.misses == 2 * len(items)
    assert [a.value for a in again] == pytest.approx([f.value * 2.5 / 100 for f in first], abs=1e-6)
    assert len(cache) == 2 * len(items)


def test_a_cache_path_that_cannot_be_opened_names_the_option(harness_cache, items, tmp_path):
    (tmp_path / "a-file").write_text("")
    metric = get_metric("clip_score", model="tiny", cache=str(tmp_path / "a-file" / "x.sqlite"))
    (score,) = metric.score(items[:1])
    assert math.isnan(score.value) and score.detail["retry"]
    assert score.detail["reason"].startswith(f"cache={tmp_path / 'a-file' / 'x.sqlite'}: cannot open the embedding cache")
    assert "cache=none" in score.detail["reason"]


def test_cache_persists_on_disk_between_processes(harness_cache, items, tmp_path):
    path = tmp_path / "embeddings.sqlite"
    get_metric("clip_score", model="tiny", cache=EmbeddingCache(path)).score(items)
    reopened = EmbeddingCache(path)
    get_metric("clip_score", model="tiny", cache=reopened).score(items)
    assert reopened.misses == 0 and reopened.hits == 2 * len(items)


def test_scale_2_5_is_the_clipscore_paper_convention(harness_cache, items, tmp_path):
    cosines = reference_cosines(items)
    scores = tiny("clip_score", tmp_path, scale=2.5).score(items)
    assert [s.value for s in scores] == pytest.approx([2.5 * max(c, 0.0) for c in cosines], abs=1e-5)


def test_batch_mean_clamp_reproduces_torchmetrics(harness_cache, items, tmp_path):
    cosines = reference_cosines(items)
    metric = tiny("clip_score", tmp_path, clamp="batch_mean")
    values = [s.value for s in metric.score(items)]
    assert values == pytest.approx([100 * c for c in cosines], abs=1e-4)  # unclamped per image
    assert min(values) < 0
    assert metric.aggregate(values) == pytest.approx(max(100 * float(np.mean(cosines)), 0.0), abs=1e-4)
    per_image = tiny("clip_score", tmp_path)
    assert per_image.aggregate([s.value for s in per_image.score(items)]) > metric.aggregate(values)


def test_batch_size_does_not_change_scores(harness_cache, items, tmp_path):
    one = get_metric("clip_score", model="tiny", cache="none", batch_size=1).score(items)
    many = get_metric("clip_score", model="tiny", cache="none", batch_size=4).score(items)
    assert [s.value for s in one] == pytest.approx([s.value for s in many], abs=1e-4)


def test_image_similarity_of_an_image_with_itself_is_one(harness_cache, photos, tmp_path):
    metric = tiny("clip_image_similarity", tmp_path)
    same, other = metric.score([Item("same", photos[0], init_image_path=photos[0]),
                                Item("other", photos[0], init_image_path=photos[1])])
    assert same.value == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= other.value < 1.0 - 1e-3


def test_image_similarity_compares_with_the_init_image_as_the_pipeline_saw_it(harness_cache, photos, tmp_path):
    """An init JPEG with EXIF rotation, another size and aspect: the output that is exactly the image the
    pipeline received scores 1 against it, and the raw file (unrotated, uncropped) is not what is compared.
    A missing init file is not stored (retried by the next eval)."""
    from PIL import Image

    from harness.images import load_init_image

    init = tmp_path / "init.jpg"
    with Image.open(photos[0]) as im:
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        im.convert("RGB").resize((96, 64)).save(init, quality=95, exif=exif)
    seen = tmp_path / "seen.png"
    load_init_image(init, 64, 64).save(seen)
    metric = tiny("clip_image_similarity", tmp_path)
    fitted, raw, gone = metric.score([Item("fitted", seen, init_image_path=init, init_size=(64, 64)),
                                      Item("raw", seen, init_image_path=init),
                                      Item("gone", seen, init_image_path=tmp_path / "moved.jpg", init_size=(64, 64))])
    assert fitted.value == pytest.approx(1.0, abs=1e-5)
    assert raw.value < 1.0 - 1e-3
    assert math.isnan(gone.value) and gone.detail["retry"] is True and "not found" in gone.detail["reason"]


@pytest.mark.parametrize("metric", ["clip_image_similarity", "clip_directional"])
def test_a_damaged_init_image_is_not_stored_with_or_without_its_hash(harness_cache, photos, tmp_path, metric):
    """An init file cut short may be restored: not stored (retried by the next eval), whether the item has
    the init's hash to check (refused before scoring) or not (the metric's own read fails)."""
    from harness.images import init_hash

    damaged = tmp_path / "init.png"
    shutil.copy(photos[1], damaged)
    good = init_hash(damaged, 64, 64)
    damaged.write_bytes(damaged.read_bytes()[:600])
    edit = {"prompt": "a cat", "source_prompt": "a photo of an astronaut"}
    hashed, bare = tiny(metric, tmp_path).score([
        Item("hashed", photos[0], init_image_path=damaged, init_size=(64, 64), init_hash=good, **edit),
        Item("bare", photos[0], init_image_path=damaged, **edit)])
    assert all(math.isnan(s.value) and s.detail["retry"] is True for s in (hashed, bare)), (hashed, bare)
    assert hashed.detail["reason"].startswith(f"file unreadable: init image {damaged} (")
    assert bare.detail["reason"].startswith(f"init image unreadable: {damaged}: ")


def test_image_similarity_needs_an_init_image(harness_cache, photos, tmp_path):
    (score,) = tiny("clip_image_similarity", tmp_path).score([Item("txt2img", photos[0], prompt="a cat")])
    assert math.isnan(score.value)
    assert "init image" in score.detail["reason"]


def test_directional_is_nan_without_source_prompt(harness_cache, photos, tmp_path):
    metric = tiny("clip_directional", tmp_path)
    missing, scored = metric.score([
        Item("no-source", photos[0], prompt="a cat", init_image_path=photos[1]),
        Item("edit", photos[0], prompt="a photo of an astronaut", init_image_path=photos[1], source_prompt="a cat"),
    ])
    assert math.isnan(missing.value) and "source prompt" in missing.detail["reason"]
    assert -1.0 <= scored.value <= 1.0
    # An item that can never be scored gets its lasting NaN even while its init file is gone (not a retry).
    (gone,) = metric.score([Item("no-source", photos[0], prompt="a cat", init_image_path=tmp_path / "gone.png")])
    assert "source prompt" in gone.detail["reason"] and not gone.detail.get("retry")


def test_directional_matches_its_definition(harness_cache, photos, tmp_path):
    metric = tiny("clip_directional", tmp_path)
    item = Item("edit", photos[0], prompt="a photo of an astronaut", init_image_path=photos[1], source_prompt="a cat")
    (score,) = metric.score([item])
    out, init = metric.embedder.images([photos[0], photos[1]])
    new, old = metric.embedder.texts(["a photo of an astronaut", "a cat"])
    a, b = out - init, new.vector - old.vector
    assert score.value == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-5)


def test_directional_without_image_change_is_nan(harness_cache, photos, tmp_path):
    (score,) = tiny("clip_directional", tmp_path).score(
        [Item("same", photos[0], prompt="a dog", init_image_path=photos[0], source_prompt="a cat")])
    assert math.isnan(score.value) and "identical" in score.detail["reason"]


def test_corrupt_png_is_nan_while_the_rest_of_the_batch_is_scored(harness_cache, items, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    batch = [items[0], Item("broken", broken, prompt="a cat"), Item("missing", tmp_path / "nope.png", prompt="x"),
             Item("no-prompt", items[1].image_path), items[2]]
    scores = tiny("clip_score", tmp_path).score(batch)
    assert [s.key for s in scores] == [item.key for item in batch]
    assert not math.isnan(scores[0].value) and not math.isnan(scores[4].value)
    assert math.isnan(scores[1].value) and "unreadable" in scores[1].detail["reason"]
    assert math.isnan(scores[2].value) and "not found" in scores[2].detail["reason"] and scores[2].detail["retry"]
    assert math.isnan(scores[3].value) and "no prompt" in scores[3].detail["reason"] and "retry" not in scores[3].detail


def test_model_that_cannot_load_gives_nan_for_all_with_reason(items, broken_clip):
    metric = get_metric("clip_score", model="x", pretrained=str(broken_clip), cache="none")
    scores = metric.score(items[:3])
    assert all(math.isnan(s.value) and s.detail.get("retry") for s in scores)
    assert all("could not load CLIP" in s.detail["reason"] and "broken" in s.detail["reason"] for s in scores)


@pytest.mark.parametrize("options, expected", [
    ({"model": "ViT-B-3"}, "unknown CLIP architecture 'ViT-B-3'"),
    ({"model": "ViT-B-32", "pretrained": "/no/such/weights.safetensors"}, "CLIP weights file not found"),
    ({"model": "tiny", "pretrained": "openai"}, "model='tiny' has only its built-in weights"),
    ({"model": "toy", "pretrained": "openai"}, "model='toy' has only its built-in weights"),
    ({"model": "ViT-B-32", "pretrained": "tiny"}, "pretrained='tiny' goes with model='tiny' only"),
    ({"model": "tiny", "device": "gpu0"}, "device='gpu0' is not a torch device"),
    ({"model": "ViT-B-32", "pretrained": "laion9"}, "unknown pretrained tag 'laion9' for CLIP model 'ViT-B-32'"),
    ({"model": "ViT-B-32", "pretrained": "opneai"}, "did you mean 'openai'?"),
    ({"model": "mine", "pretrained": "myclip"}, "a pretrained folder or weights file is looked for from"),
])
def test_what_is_wrong_before_loading_is_a_spec_error(options, expected, tmp_path):
    """A misspelt architecture, absent weights or a device torch cannot parse fail when the metric is checked
    (experiment load, `harness eval -m`), not after the images are generated; making the metric, as a report
    does to find its column on a machine without the weights, checks nothing."""
    metric = get_metric("clip_score", cache="none", **options)
    assert metric.id.startswith("clip_score[")
    with pytest.raises(ValueError, match="metric 'clip_score'") as info:
        metric.check()
    assert expected in str(info.value)
    from harness.experiment import ExperimentError, load_experiment
    from harness.metrics.spec import format_metric_spec

    (tmp_path / "exp.toml").write_text(f'prompt = "a"\nmetrics = [\'{format_metric_spec("clip_score", options)}\']\n')

    with pytest.raises(ExperimentError, match=re.escape(expected)):
        load_experiment(tmp_path / "exp.toml")


def test_unknown_pretrained_tag_lists_known_tags(items):
    (score,) = get_metric("clip_score", model="ViT-B-32", pretrained="no-such-tag", cache="none").score(items[:1])
    assert "unknown pretrained tag" in score.detail["reason"] and "openai" in score.detail["reason"]


def test_new_weights_in_a_clip_folder_are_not_scored_from_the_old_ones_cache(harness_cache, items, tmp_path):
    """The embedding cache is keyed by the weights: overwriting the weights file inside a folder (the folder's
    own size and time stay) must not bring back the old weights' embeddings."""

    from harness.metrics import clip_models

    folder = tmp_path / "myclip"
    shutil.copytree(ensure_tiny_clip(), folder)
    before = clip_models._stat_tag(folder)
    weights = folder / TINY_WEIGHTS
    weights.write_bytes(weights.read_bytes())  # the same bytes, rewritten in place
    os.utime(weights, ns=(1, 1))
    assert clip_models._stat_tag(folder) != before


def test_tiny_clip_is_built_once_and_loadable_as_a_local_folder(harness_cache, items, tmp_path):
    folder = ensure_tiny_clip()
    assert folder == harness_cache / "clip" / "tiny"
    assert {"open_clip_config.json", TINY_WEIGHTS} <= {p.name for p in folder.iterdir()}
    mtime = (folder / TINY_WEIGHTS).stat().st_mtime_ns
    assert ensure_tiny_clip() == folder and (folder / TINY_WEIGHTS).stat().st_mtime_ns == mtime
    via_folder = get_metric("clip_score", model="folder", pretrained=str(folder), cache="none").score(items)
    via_tiny = tiny("clip_score", tmp_path).score(items)
    assert [s.value for s in via_folder] == pytest.approx([s.value for s in via_tiny], abs=1e-4)


def test_a_weights_file_for_a_known_architecture_is_loaded(harness_cache, items, tmp_path):
    """`pretrained=/path/to/weights.safetensors` with the architecture in `model`: the file is loaded, not
    looked up as a pretrained tag."""
    from harness.metrics.clip_models import TINY_ARCH, register_tiny_config

    folder = ensure_tiny_clip()
    register_tiny_config(folder)
    weights = tmp_path / "mine.safetensors"
    shutil.copy(folder / TINY_WEIGHTS, weights)
    metric = get_metric("clip_score", model=TINY_ARCH, pretrained=str(weights), cache="none")
    metric.check()
    via_file = metric.score(items)
    assert all(math.isfinite(s.value) for s in via_file), [s.detail for s in via_file]
    via_tiny = tiny("clip_score", tmp_path).score(items)
    assert [s.value for s in via_file] == pytest.approx([s.value for s in via_tiny], abs=1e-4)


def test_weights_given_by_a_relative_path_are_named_by_their_absolute_path(harness_cache, tmp_path, monkeypatch):
    """Two folders reached as `pretrained=w` from two places are two models, with two ids; an experiment's
    path starts from its own folder, wherever the command runs."""
    from harness.experiment import load_experiment
    from harness.metrics import metric_from_spec

    for place in ("a", "b"):
        shutil.copytree(ensure_tiny_clip(), tmp_path / place / "w")
    monkeypatch.chdir(tmp_path / "a")
    first = metric_from_spec("clip_score:model=mine,pretrained=w")
    monkeypatch.chdir(tmp_path / "b")
    second = metric_from_spec("clip_score:model=mine,pretrained=w")
    assert first.id != second.id and f"pretrained={tmp_path / 'b' / 'w'}," in second.id
    assert metric_from_spec(second.id).id == second.id  # an id read back names the same weights
    assert metric_from_spec("clip_score:model=ViT-B-32,pretrained=openai").id.startswith(
        "clip_score[model=ViT-B-32,pretrained=openai,")  # a tag is no path
    (tmp_path / "a" / "exp.toml").write_text(
        'prompt = "a cat"\nmetrics = ["clip_score:model=mine,pretrained=w"]\n'
        'compare_metrics = ["clip_score:model=mine,pretrained=w"]\n')
    exp = load_experiment(tmp_path / "a" / "exp.toml")  # run from b: the weights beside the experiment
    assert exp.metrics == (f"clip_score:model=mine,pretrained={tmp_path / 'a' / 'w'}",)
    assert exp.compare_metrics == exp.metrics and metric_from_spec(exp.metrics[0]).id == first.id


def test_tiny_clip_is_deterministic_and_leaves_global_rng_alone(harness_cache, tmp_path):
    import torch

    first = (ensure_tiny_clip() / TINY_WEIGHTS).read_bytes()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE", str(tmp_path / "other-cache"))
        other = ensure_tiny_clip()
    assert torch.equal(torch.rand(1), expected_next)
    assert (other / TINY_WEIGHTS).read_bytes() == first
