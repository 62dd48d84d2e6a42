"""Invisible watermark: decoder fidelity, detection, false positives, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
imwatermark = pytest.importorskip("imwatermark")
skdata = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

from harness.metrics import Item, get_metric  # noqa: E402
from harness.metrics.watermark import (  # noqa: E402
    ALPHA, PRESETS, TOO_SMALL, bits_from_votes, block_votes, column_pvalue, detect, detect_paths, embed,
    embed_file, resolve_message,
)
from harness.metrics.watermark_robustness import natural_images  # noqa: E402


def sd_scripts_watermark(rgb: np.ndarray) -> np.ndarray:
    """What SD 1.x scripts/txt2img.py does, written against imwatermark directly."""
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", b"StableDiffusionV1")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(encoder.encode(bgr, "dwtDct"), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [rgb for _, rgb in natural_images(6, 512, gray=False)]


def test_vectorised_decoder_equals_imwatermark_on_both_dtype_paths(photos):
    from imwatermark import WatermarkDecoder

    for rgb in (photos[0], sd_scripts_watermark(photos[1]), embed(photos[2], "sdxl", path="float32")):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        for array in (bgr, bgr.astype(np.float32)):
            for n_bits in (136, 32, 48):
                reference = np.asarray(WatermarkDecoder("bits", n_bits).decode(array, "dwtDct"), dtype=bool)
                assert np.array_equal(bits_from_votes(block_votes(array), n_bits), reference)


def test_preset_messages_have_the_documented_lengths():
    assert len(resolve_message("sdv1").bits) == 136 and PRESETS["sdv1"] == b"StableDiffusionV1"
    assert len(resolve_message("sdv2").bits) == 32
    assert resolve_message("sdxl").bits == tuple(int(b) for b in bin(0xB3EC907BB19E)[2:])
    assert resolve_message("hello").name == "text:hello"
    assert resolve_message("text:sdv1").bits != resolve_message("sdv1").bits


def test_sd_v1_script_watermark_is_detected_on_natural_photos(photos):
    for rgb in photos:
        result = detect(sd_scripts_watermark(rgb))
        evidence = result["messages"]["sdv1"]
        assert result["detected"] is True and result["best"] == "sdv1"
        assert evidence["p_corrected"] < 1e-3 and evidence["p_value"] < 1e-3
        assert evidence["accuracy"] > 0.68


def test_clean_photos_are_not_detected(photos):
    images = natural_images(56, 256)  # 7 colour + 5 grey sources, crops and mirror images
    assert len({rgb.tobytes() for _, rgb in images}) == 56
    flagged = [name for name, rgb in images if detect(rgb)["detected"]]
    assert flagged == []  # calibrated rate is <= 1e-3 per image: one hit in 56 would already be suspicious


def test_clean_photo_evidence_is_reported_per_message(photos):
    result = detect(photos[0])
    assert result["detected"] is False and result["best"] is None
    assert set(result["messages"]) == {"sdv1", "sdv2", "sdxl"}
    assert result["attempts"] == 18  # 2 dtype paths x 9 grid offsets for a 512x512 image
    for evidence in result["messages"].values():
        assert 0 <= evidence["matched"] <= evidence["bits"]
        assert evidence["p_corrected"] >= evidence["p_value"]


def test_zero_heavy_text_message_is_not_a_false_positive(photos):
    # Clean photos read (almost) all bits as 0, so a message that is mostly 0 bits
    # "matches" by accident; the balance-conditioned p-value guards against it.
    message = "0" * 40  # 0x30 = 00110000: 75 % zero bits
    result = detect(photos[0], messages=[message])
    evidence = result["messages"][f"text:{message}"]
    assert evidence["p_binomial"] < 1e-6
    assert result["detected"] is False


def test_column_pvalue_is_the_exact_tail_of_the_column_permutation_null():
    # Brute force: every placement of each column's ones read among 3 bytes, all equally likely.
    import itertools

    sent = np.unpackbits(np.frombuffer(b"Ab7", dtype=np.uint8)).astype(bool)
    read = np.unpackbits(np.frombuffer(b"Ac5", dtype=np.uint8)).astype(bool)
    observed = int((sent == read).sum())
    columns_sent, columns_read = sent.reshape(3, 8).T, read.reshape(3, 8).T
    per_column = []
    for col_sent, col_read in zip(columns_sent, columns_read):
        placements = {tuple(p) for p in itertools.permutations(col_read)}
        per_column.append([int((np.array(p) == col_sent).sum()) for p in placements])
    totals = [sum(combo) for combo in itertools.product(*per_column)]
    exact = sum(t >= observed for t in totals) / len(totals)
    assert column_pvalue(sent, read) == pytest.approx(exact, rel=1e-12)
    assert column_pvalue(sent, sent) < column_pvalue(sent, read) <= 1.0


def test_exact_binomial_and_hypergeometric_tails_agree_with_scipy():
    from scipy.stats import binom, hypergeom

    from harness.metrics.watermark import _p_binomial, _p_hypergeometric

    for n, matched in [(136, 0), (136, 68), (136, 93), (136, 136), (32, 28), (48, 39)]:
        assert _p_binomial(matched, n) == pytest.approx(binom.sf(matched - 1, n, 0.5), rel=1e-9)
    for n, sent, read, shared in [(136, 61, 70, 40), (136, 61, 0, 0), (32, 13, 20, 12), (48, 25, 48, 25)]:
        assert _p_hypergeometric(shared, n, sent, read) == pytest.approx(
            hypergeom.sf(shared - 1, n, sent, read), rel=1e-9)


def test_the_read_with_the_smallest_p_value_is_reported(photos):
    """Reads are ranked by p-value, not by matched bits: with the column null a read with fewer
    matches can be stronger evidence. The reported read's p is the least over every read."""
    from harness.metrics.watermark import _evidence, _paddings
    from harness.metrics.watermark_codec import u_channel, votes_from_u

    image = stripes(32, 24, (6, 27, 35), (227, 232, 126))  # its most-matching read is its weakest evidence
    sdv1 = resolve_message("sdv1")
    every = []
    for path in ("uint8", "float32"):
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        u = u_channel(bgr if path == "uint8" else bgr.astype(np.float32))
        for _, padding in _paddings(*image.shape[:2]):
            bits = bits_from_votes(votes_from_u(np.pad(u, padding, mode="edge")), 136)
            every.append(_evidence(sdv1, int((bits == sdv1.array).sum()), bits))
    most_matched = max(every, key=lambda e: e["matched"])
    reported = detect(image, ["sdv1"])["messages"]["sdv1"]
    assert reported["p_value"] == min(e["p_value"] for e in every) < most_matched["p_value"]


def stripes(period: int, phase: int, dark: tuple, light: tuple, size: int = 256) -> np.ndarray:
    mask = ((np.arange(size) + phase) // (period // 2)) % 2 == 1
    row = np.where(mask[:, None], np.array(dark, np.uint8), np.array(light, np.uint8))
    return np.ascontiguousarray(np.broadcast_to(row, (size, size, 3)))


def test_byte_periodic_reads_do_not_match_text_messages():
    # 32 px stripes read the same byte over and over; an ASCII payload's top bits
    # then match 71 % of sdv1, binomial p ~ 1e-6. The column null sees no position information.
    from scipy.stats import binom

    image = stripes(32, 24, (6, 27, 35), (227, 232, 126))
    sdv1 = resolve_message("sdv1").array
    read = bits_from_votes(block_votes(np.ascontiguousarray(image[:, :, ::-1])), len(sdv1))
    assert (read.reshape(-1, 8) == read[:8]).all()  # the same byte over and over
    matched = int((read == sdv1).sum())
    assert matched / len(sdv1) > 0.7 and binom.sf(matched - 1, len(sdv1), 0.5) < 1e-5
    assert column_pvalue(sdv1, read) > 0.5
    assert detect(image)["detected"] is False


def test_another_text_watermark_is_not_read_as_sdv1(photos):
    marked = embed(photos[0], "lab-7")
    assert detect(marked)["detected"] is False
    mine = detect(marked, ["lab-7", "sdv1"])
    assert mine["best"] == "text:lab-7" and mine["messages"]["sdv1"]["p_corrected"] > 0.5
    assert detect(embed(photos[0], "sdv1"))["messages"]["sdv1"]["p_columns"] < 1e-20


def test_short_messages_keep_the_binomial_null(photos):
    result = detect(embed(photos[1], "sdv2"))
    assert result["best"] == "sdv2" and result["messages"]["sdv2"]["p_columns"] is None


def test_embed_keeps_the_input_type_and_is_detected():
    rgb = natural_images(1, 320, gray=False)[0][1]
    marked_array = embed(rgb, "sdv2")
    assert isinstance(marked_array, np.ndarray) and marked_array.shape == rgb.shape
    assert marked_array.dtype == np.uint8
    marked_image = embed(Image.fromarray(rgb), "sdv2")
    assert isinstance(marked_image, Image.Image) and marked_image.size == (320, 320)
    assert np.array_equal(np.asarray(marked_image), marked_array)
    assert detect(marked_array)["best"] == "sdv2"


def test_embed_file_keeps_transparency_where_the_format_holds_it(tmp_path):
    from harness.metrics.watermark_codec import embed_file

    rgb = natural_images(1, 320, gray=False)[0][1]
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :160] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "cutout.png")
    with Image.open(embed_file(tmp_path / "cutout.png", tmp_path / "marked.png")) as marked:
        assert marked.mode == "RGBA" and np.array_equal(np.asarray(marked.getchannel("A")), alpha)
        assert detect(np.asarray(marked.convert("RGB")))["best"] == "sdv1"
    with Image.open(embed_file(tmp_path / "cutout.png", tmp_path / "marked.jpg")) as jpeg:
        assert jpeg.mode == "RGB"


def test_float_path_watermark_is_read_on_the_float_path(photos):
    marked = embed(photos[0], "sdxl", path="float32")  # diffusers' SDXL way
    sdxl = resolve_message("sdxl").array
    bgr = np.ascontiguousarray(marked[:, :, ::-1])
    on_uint8 = (bits_from_votes(block_votes(bgr), 48) == sdxl).mean()
    on_float = (bits_from_votes(block_votes(bgr.astype(np.float32)), 48) == sdxl).mean()
    assert on_float == 1.0 and on_uint8 < 0.9
    result = detect(marked)
    assert result["best"] == "sdxl" and result["messages"]["sdxl"]["path"] == "float32"


def test_small_crop_is_recovered_by_realignment(photos):
    cropped = np.ascontiguousarray(sd_scripts_watermark(photos[0])[2:, 2:])
    result = detect(cropped)
    assert result["detected"] is True and result["messages"]["sdv1"]["offset"] == [2, 2]


def test_image_smaller_than_256_gives_reason_and_nan(tmp_path):
    small = np.zeros((200, 300, 3), np.uint8)  # 60,000 pixels: under the codec's 256 x 256 area
    assert detect(small) == {"detected": None, "reason": TOO_SMALL, "size": [300, 200], "messages": {}}
    path = tmp_path / "small.png"
    Image.fromarray(small).save(path)
    (score,) = get_metric("watermark").score([Item("small", path)])
    assert math.isnan(score.value) and score.detail["reason"] == (
        "image smaller than 256x256 in area: under 65536 pixels, the dwtDct codec's minimum")
    with pytest.raises(ValueError, match=r"^embed: image smaller than 256x256 in area: .* \(got 300x200\)$"):
        embed(small)


def test_metric_and_file_helpers(tmp_path, photos):
    from PIL.PngImagePlugin import PngInfo

    clean = tmp_path / "clean.png"
    info = PngInfo()
    info.add_text("parameters", "a red fox\nSteps: 20, Seed: 1")
    Image.fromarray(photos[4]).save(clean, pnginfo=info)
    marked = embed_file(clean, tmp_path / "marked.png", "sdv1")
    assert Image.open(marked).text["parameters"].startswith("a red fox")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    metric = get_metric("watermark")
    assert metric.id == f"watermark[messages=sdv1+sdv2+sdxl,alpha={ALPHA:g}]"
    scores = metric.score([Item("clean", clean), Item("marked", marked), Item("broken", broken)])
    assert [s.value for s in scores[:2]] == [0.0, 1.0]
    assert scores[1].detail["best"] == "sdv1"
    assert math.isnan(scores[2].value) and "unreadable" in scores[2].detail["reason"]
    found = detect_paths([clean, marked, broken])
    assert [r["detected"] for r in found] == [False, True, None]
    assert found[2]["reason"] and found[1]["path"] == str(marked)


def test_unknown_embed_path_is_refused(photos):
    with pytest.raises(ValueError, match="uint8, float32"):
        embed(photos[0], "sdv1", path="float16")


def test_robustness_script_prints_a_row_per_condition(capsys):
    from harness.metrics.watermark_robustness import main, two_colour_patterns

    patterns = list(two_colour_patterns(6))
    assert len({rgb.tobytes() for _, rgb in patterns}) == 6
    assert all(len(np.unique(rgb.reshape(-1, 3), axis=0)) <= 2 for _, rgb in patterns)
    main(["--n", "2", "--size", "256", "--patterns", "3"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    table = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[2:]}
    assert len(table) == 9
    assert table["clean (false positives)"][:2] == ["2", "0"]
    assert table["sdv1 embedded, PNG"][:2] == ["2", "2"]
    assert table["two-colour stripes and checkerboards, 256 px (false positives)"][:2] == ["3", "0"]


@pytest.mark.parametrize("spec, expected", [
    ("watermark:messages=sdv1+", "'sdv1+' has an empty message between '+' signs"),
    ('watermark:messages="C++ rocks"', "a message cannot hold one"),
    ("watermark:messages=SDV1", "message 'SDV1' would be taken as that text; write sdv1 for the preset"),
])
def test_message_lists_that_would_look_for_something_else_are_refused(spec, expected):
    from harness.metrics import metric_from_spec

    with pytest.raises(ValueError) as err:
        metric_from_spec(spec)
    assert expected in str(err.value)
    assert metric_from_spec("watermark:messages=text:SDV1+sdv2").id.startswith("watermark[messages=sdv2+text:SDV1,")
