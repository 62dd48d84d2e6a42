"""Watermark fixes: the codec's own size limit (area, not side), the robustness script's detection of the
embedded message, embed_file keeping EXIF orientation and the ICC profile, errors naming the file, and
repeated messages refused."""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
imwatermark = pytest.importorskip("imwatermark")
pytest.importorskip("skimage.data", reason="scikit-image provides the natural test photos")

from PIL import Image, ImageCms, ImageOps  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from harness.cli import app  # noqa: E402
from harness.metrics.watermark import TOO_SMALL, detect, embed, embed_file, resolve_message  # noqa: E402
from harness.metrics.watermark_robustness import natural_images  # noqa: E402

SDV1 = b"StableDiffusionV1"


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """512x512 views of two photos that carry every mark fully (astronaut, Hubble deep field): others lose
    bits where embedding clips saturated pixels, which is not what these tests are about."""
    views = natural_images(5, 512, gray=False)
    return [views[0][1], views[4][1]]


@pytest.fixture(scope="module")
def wide(photos) -> list[np.ndarray]:
    """512 wide x 192 high: 98,304 pixels, over the codec's 65,536, though one side is under 256."""
    return [np.ascontiguousarray(rgb[160:352]) for rgb in photos]


def sd_scripts_watermark(rgb: np.ndarray) -> np.ndarray:
    """What the SD 1.x scripts do, straight through imwatermark (bytes, dwtDct, BGR uint8)."""
    encoder = imwatermark.WatermarkEncoder()
    encoder.set_watermark("bytes", SDV1)
    return cv2.cvtColor(encoder.encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "dwtDct"), cv2.COLOR_BGR2RGB)


def imwatermark_read(rgb: np.ndarray) -> bytes:
    return imwatermark.WatermarkDecoder("bytes", len(SDV1) * 8).decode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "dwtDct")


# -- 1. the codec's size limit is an area ----------------------------------------
def test_a_512x192_image_marked_by_the_reference_code_is_detected(wide):
    for rgb in wide:
        assert rgb.shape == (192, 512, 3)
        result = detect(sd_scripts_watermark(rgb))
        assert result["detected"] is True and result["best"] == "sdv1", result.get("reason")


def test_embed_marks_a_512x192_image_that_imwatermark_reads_back(wide):
    marked = [embed(rgb, "sdv1") for rgb in wide]
    assert all(m.shape == (192, 512, 3) for m in marked)
    assert all(imwatermark_read(m) == SDV1 for m in marked)
    assert all(detect(m)["best"] == "sdv1" for m in marked)


def test_diffusers_sdxl_watermark_on_a_wide_short_image_is_detected(wide):
    """diffusers skips only images under 256 px wide: a 512x192 SDXL image carries the mark."""
    torch = pytest.importorskip("torch")
    watermark = pytest.importorskip("diffusers.pipelines.stable_diffusion_xl.watermark")
    images = torch.from_numpy(np.stack(wide)).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = watermark.StableDiffusionXLWatermarker().apply_watermark(images)
    assert not torch.equal(out, images)  # marked, not skipped
    for tensor in out:
        rgb = np.round((tensor.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        assert detect(rgb)["best"] == "sdxl"


@pytest.mark.parametrize("height, width", [(100, 512), (255, 256), (8, 8191)])
def test_an_image_under_the_codec_area_gets_the_clear_reason(height, width):
    rgb = np.zeros((height, width, 3), np.uint8)
    assert detect(rgb) == {"detected": None, "reason": TOO_SMALL, "size": [width, height], "messages": {}}
    with pytest.raises(ValueError, match=rf"embed: image smaller than 256x256 in area: .*\(got {width}x{height}\)"):
        embed(rgb)


def test_a_thin_image_with_no_block_per_bit_is_refused_not_silently_unmarked(photos):
    """imwatermark accepts 16384x4 (its area is 65536) but has no 8x8 block there: it writes nothing and reads
    zeros (under 4 px it fails inside PyWavelets). Refused with the reason, as is a message longer than the
    image's blocks; 8 px is enough."""
    thin = np.full((4, 16384, 3), 120, np.uint8)
    reason = "image has 0 blocks of 8x8 px, fewer than the 136 bits of the message"
    assert detect(thin)["detected"] is None and detect(thin)["reason"].startswith(reason)
    with pytest.raises(ValueError, match=rf"embed: {reason}: .*a side under 8 px has none \(got 16384x4\)"):
        embed(thin)
    square = np.ascontiguousarray(photos[1][:256, :256])  # 1024 blocks
    with pytest.raises(ValueError, match="1024 blocks of 8x8 px, fewer than the 1032 bits"):
        embed(square, "x" * 129)
    assert detect(square, ["x" * 129])["reason"].startswith("image has 1024 blocks")
    strip = np.ascontiguousarray(np.concatenate([photos[1][8 * i:8 * i + 8] for i in range(16)], axis=1))
    assert strip.shape == (8, 8192, 3)  # 1024 blocks in one row
    marked = embed(strip, "sdv1")
    assert imwatermark_read(marked) == SDV1 and detect(marked)["best"] == "sdv1"


# -- 2. the robustness script detects the message it embedded ---------------------
def test_robustness_rows_detect_a_text_message_of_ones_own():
    from harness.metrics.watermark_robustness import measure

    rows = {row["condition"]: row for row in measure(2, 256, "lab-7 watermark")}
    assert rows["lab-7 watermark embedded, PNG"]["detected"] == 2
    assert rows["clean (false positives)"]["detected"] == 0


def test_robustness_counts_a_detection_as_another_message_as_a_miss(photos):
    from harness.metrics.watermark_robustness import _row, looked_for

    as_sdxl = embed(photos[0], "sdxl")
    assert detect(as_sdxl)["best"] == "sdxl"
    assert _row("sdv2?", resolve_message("sdv2"), [as_sdxl], True)["detected"] == 0
    assert _row("sdxl", resolve_message("sdxl"), [as_sdxl], True)["detected"] == 1
    assert _row("clean", resolve_message("sdv2"), [as_sdxl], False)["detected"] == 1  # any flag is a false positive
    assert looked_for(resolve_message("sdv2")) == ["sdv1", "sdv2", "sdxl"]
    assert [m.name for m in looked_for(resolve_message("lab-7"))] == ["text:lab-7"]


# -- 3. embed_file keeps orientation and the ICC profile --------------------------
def test_embed_file_marks_the_pixels_as_displayed_under_exif_orientation(tmp_path):
    stored = natural_images(1, 512, gray=False)[0][1][:320]  # 512 wide x 320 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: 320 wide x 512 high
    Image.fromarray(stored).save(tmp_path / "phone.jpg", quality=98, exif=exif)
    with Image.open(tmp_path / "phone.jpg") as src:
        shown = np.asarray(ImageOps.exif_transpose(src).convert("RGB"))
    assert shown.shape == (512, 320, 3)
    with Image.open(embed_file(tmp_path / "phone.jpg", tmp_path / "marked.png")) as out:
        assert out.size == (320, 512) and out.getexif().get(0x0112) in (None, 1)
        marked = np.asarray(out.convert("RGB"))
    assert np.abs(marked.astype(int) - shown).mean() < 3  # the same picture, upright
    assert detect(marked)["best"] == "sdv1"


def test_embed_file_keeps_the_icc_profile(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = natural_images(1, 256, gray=False)[0][1]
    Image.fromarray(rgb).save(tmp_path / "tagged.png", icc_profile=icc)
    for name in ("marked.png", "marked.jpg"):
        with Image.open(embed_file(tmp_path / "tagged.png", tmp_path / name)) as out:
            assert out.info.get("icc_profile") == icc, name
    with Image.open(embed_file(tmp_path / "marked.png", tmp_path / "again.png")) as again:
        assert again.info.get("icc_profile") == icc
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    with Image.open(embed_file(tmp_path / "plain.png", tmp_path / "plain-marked.png")) as out:
        assert "icc_profile" not in out.info
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # describes other pixels than RGB
    Image.fromarray(rgb[:, :, 1]).save(tmp_path / "grey.png", icc_profile=lab)
    with Image.open(embed_file(tmp_path / "grey.png", tmp_path / "grey-marked.png")) as out:
        assert out.mode == "RGB" and "icc_profile" not in out.info


# -- 4. the embed error names the file ---------------------------------------------
def test_embed_cli_error_for_a_too_small_image_names_the_file(tmp_path):
    src = tmp_path / "small.png"
    Image.new("RGB", (300, 200), (10, 120, 200)).save(src)
    r = CliRunner().invoke(app, ["watermark", "embed", str(src), str(tmp_path / "out.png")])
    assert r.exit_code == 2, r.output
    assert r.stderr == (f"error: {src}: image smaller than 256x256 in area: under 65536 pixels, the dwtDct codec's "
                        "minimum (got 300x200)\n")
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(ValueError, match=r"^embed_file: path='float16'; expected one of uint8, float32$"):
        embed_file(src, tmp_path / "out.png", path="float16")  # an argument error is not the file's


# -- 5. a message looked for twice is refused --------------------------------------
@pytest.mark.parametrize("spec, repeated", [
    ("sdv1+sdv1", "message 'sdv1' is given twice"),
    ("sdv2+lab-7+text:lab-7", "message 'text:lab-7' is given twice"),
    ("text:hi+hi", "message 'hi' (text:hi) is given twice"),
])
def test_a_repeated_message_is_refused_by_the_metric(spec, repeated):
    from harness.metrics import metric_from_spec

    with pytest.raises(ValueError) as err:
        metric_from_spec(f"watermark:messages={spec}")
    assert f"option messages='{spec}': '{spec}': {repeated}; give each message once" in str(err.value)
    assert metric_from_spec("watermark:messages=sdv1+text:sdv1").id.startswith("watermark[messages=sdv1+text:sdv1,")


def test_a_repeated_message_is_refused_by_detect_and_the_cli(tmp_path):
    photo = natural_images(1, 256, gray=False)[0][1]
    with pytest.raises(ValueError, match="message 'sdv1' is given twice; give each message once"):
        detect(photo, ["sdv1", "sdxl", "sdv1"])
    Image.fromarray(photo).save(tmp_path / "photo.png")
    r = CliRunner().invoke(app, ["watermark", "detect", str(tmp_path / "photo.png"), "--message", "sdv1",
                                 "--message", "sdv1"])
    assert r.exit_code == 2 and r.stderr == "error: --message: message 'sdv1' is given twice; give each message once\n"
