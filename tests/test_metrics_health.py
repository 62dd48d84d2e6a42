"""Health flags on synthetic broken images and on a natural photo."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from harness.metrics import Item, get_metric
from harness.metrics.health import check_array


@pytest.fixture
def photo() -> np.ndarray:
    skdata = pytest.importorskip("skimage.data")
    return skdata.astronaut()


def test_natural_photo_is_healthy(photo):
    assert check_array(photo) == (True, [])


def test_black_image_is_flagged():
    ok, flags = check_array(np.zeros((64, 64, 3), np.uint8))
    assert not ok and "all_black" in flags


def test_dim_noise_below_two_levels_mean_is_black():
    rng = np.random.default_rng(0)
    ok, flags = check_array(rng.integers(0, 4, (64, 64, 3)).astype(np.uint8))
    assert not ok and "all_black" in flags


def test_a_small_moon_in_a_black_sky_is_dark_but_not_black():
    yy, xx = np.mgrid[:256, :256]
    moon = (yy - 60) ** 2 + (xx - 180) ** 2 <= 36
    sky = np.where(moon[..., None], np.uint8(225), np.uint8(0)).astype(np.uint8)
    assert sky.mean() < 2  # the mean alone would call it black
    assert check_array(sky) == (True, [])


def test_a_watermarked_black_image_is_still_black():
    from harness.metrics.watermark import embed

    for path in ("uint8", "float32"):
        marked = embed(np.zeros((256, 256, 3), np.uint8), "sdv1", path=path)
        assert 2 < marked.max() <= 32  # the mark lifts some pixels past the plain black threshold
        assert "all_black" in check_array(marked)[1]


def test_arrays_under_two_blocks_are_not_judged_flat():
    """The runner's in-memory check agrees with the metric, which gives NaN for images under 16 px:
    an 8 px image's one block cannot spread, so flatness is not judged; black still is."""
    rng = np.random.default_rng(2)
    assert check_array(rng.integers(0, 256, (8, 64, 3)).astype(np.uint8)) == (True, [])
    assert check_array(np.full((8, 8, 3), 128, np.uint8)) == (True, [])
    assert check_array(np.zeros((8, 8, 3), np.uint8)) == (False, ["all_black"])


def test_uniform_grey_is_flagged_but_not_black():
    ok, flags = check_array(np.full((64, 64, 3), 128, np.uint8))
    assert not ok and flags == ["near_uniform"]


def test_nan_pixels_in_float_output_are_flagged(photo):
    image = photo.astype(np.float32) / 255
    image[10:20, 10:20] = np.nan
    ok, flags = check_array(image)
    assert not ok and flags == ["nonfinite"]


def test_float_image_in_unit_range_is_judged_in_levels(photo):
    assert check_array(photo.astype(np.float32) / 255) == (True, [])
    assert check_array(np.full((16, 16, 3), 0.001, np.float32))[1] == ["all_black", "near_uniform"]
    assert check_array(photo.astype(np.float32) / 127.5 - 1, value_range=(-1, 1)) == (True, [])


def test_channels_first_array_is_refused():
    with pytest.raises(ValueError, match="HxW or HxWxC"):
        check_array(np.zeros((3, 64, 64), np.uint8))


def test_health_metric_scores_files_and_leaves_unreadable_ones_unscored(tmp_path, photo):
    paths = {}
    for name, array in {"photo": photo, "black": np.zeros((64, 64, 3), np.uint8),
                        "grey": np.full((64, 64, 3), 90, np.uint8)}.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(array).save(paths[name])
    paths["corrupt"] = tmp_path / "corrupt.png"
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    metric = get_metric("health")
    items = [Item(name, path) for name, path in paths.items()] + [Item("missing", tmp_path / "missing.png")]
    scores = {s.key: s for s in metric.score(items)}
    assert metric.id == "health"
    assert scores["photo"].value == 1.0 and scores["photo"].detail["flags"] == []
    assert scores["black"].value == 0.0 and "all_black" in scores["black"].detail["flags"]
    assert scores["grey"].value == 0.0 and scores["grey"].detail["flags"] == ["near_uniform"]
    assert math.isnan(scores["corrupt"].value) and scores["corrupt"].detail["reason"].startswith(
        f"image unreadable: {paths['corrupt']}: ")
    assert math.isnan(scores["missing"].value) and "not found" in scores["missing"].detail["reason"]


@pytest.mark.parametrize("colour", [(128, 128, 128), (200, 30, 30), (250, 250, 250)])
def test_an_invisible_watermark_does_not_hide_a_flat_image(tmp_path, colour, photo):
    """The sdv1 watermark adds a fine pattern (up to ~4 levels' std at full resolution); the runner checks
    the image before embedding, the metric the saved PNG after: both must call a flat image flat."""
    from harness.metrics.watermark import embed
    flat = np.zeros((256, 256, 3), np.uint8)
    flat[:] = colour
    marked = np.asarray(embed(flat, "sdv1"))
    assert max(marked.astype(float).reshape(-1, 3).std(axis=0)) > 1  # the mark is there
    assert check_array(flat)[1] == check_array(marked)[1] == ["near_uniform"]
    Image.fromarray(marked).save(tmp_path / "marked.png")
    score, = get_metric("health").score([Item("marked", tmp_path / "marked.png")])
    assert score.value == 0.0 and score.detail["flags"] == ["near_uniform"]
    assert check_array(np.asarray(embed(photo[:256, :256], "sdv1"))) == (True, [])


def test_float_image_files_are_read_in_the_range_their_values_lie_in(tmp_path, photo):
    """A float TIFF (Pillow mode F) of a picture holding 0..1 values is as healthy as its 0..255 copy; a
    dark 0..1 one is still black; a CLIP metric reads both alike."""
    gray = photo.mean(axis=2).astype(np.float32)
    for name, values in (("unit", gray / 255), ("levels", gray), ("dark", np.full_like(gray, 0.002))):
        Image.fromarray(values, "F").save(tmp_path / f"{name}.tiff")
    health = get_metric("health")
    scores = {n: health.score([Item(n, tmp_path / f"{n}.tiff")])[0] for n in ("unit", "levels", "dark")}
    assert scores["unit"].value == scores["levels"].value == 1.0
    assert scores["unit"].detail["mean"] == pytest.approx(scores["levels"].detail["mean"], rel=1e-4)
    assert scores["dark"].value == 0.0 and "all_black" in scores["dark"].detail["flags"]
    from harness.images import to_rgb

    with Image.open(tmp_path / "unit.tiff") as a, Image.open(tmp_path / "levels.tiff") as b:
        assert np.abs(np.asarray(to_rgb(a), float) - np.asarray(to_rgb(b), float)).max() <= 1


@pytest.mark.parametrize("pattern", ["stripes", "checkerboard"])
def test_a_full_contrast_pattern_finer_than_a_block_is_not_flat(pattern):
    """1-pixel stripes and a 4-pixel checkerboard have the same mean in every 8x8 block, yet their pixels
    spread across the whole range: a pattern, not a collapsed image."""
    a = np.zeros((64, 64, 3), np.uint8)
    if pattern == "stripes":
        a[:, ::2] = 255
    else:
        yy, xx = np.mgrid[:64, :64]
        a[((yy // 4) + (xx // 4)) % 2 == 0] = 255
    assert check_array(a) == (True, [])
    flat = np.full((64, 64, 3), 128, np.uint8)
    flat[::2, ::2] += 4  # a fine pattern as faint as a watermark's leaves a flat image flat
    assert check_array(flat) == (False, ["near_uniform"])
