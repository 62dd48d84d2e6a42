"""`harness watermark detect/embed` on real files, as a user runs them."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from commands import harness

ROOT = Path(__file__).resolve().parents[1]
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the natural test photos")


def photo(tmp_path) -> Path:
    rgb = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((512, 512), Image.LANCZOS))
    path = tmp_path / "clean.png"
    Image.fromarray(rgb).save(path)
    return path


def sd_v1_style(src: Path, dst: Path) -> None:
    """Embed exactly as the reference SD v1 scripts do, straight through imwatermark."""
    import cv2
    from imwatermark import WatermarkEncoder
    bgr = cv2.cvtColor(np.asarray(Image.open(src).convert("RGB")), cv2.COLOR_RGB2BGR)
    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", b"StableDiffusionV1")
    marked = encoder.encode(bgr, "dwtDct")
    Image.fromarray(cv2.cvtColor(marked, cv2.COLOR_BGR2RGB)).save(dst)


def test_detect_finds_an_sd_v1_mark_and_not_on_the_clean_photo(tmp_path):
    clean = photo(tmp_path)
    marked = tmp_path / "marked.png"
    sd_v1_style(clean, marked)
    r = harness("watermark", "detect", marked, clean, "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows[0]["path"].endswith("marked.png") and rows[0]["detected"] is True
    assert rows[0]["best"] == "sdv1" and rows[0]["messages"]["sdv1"]["p_corrected"] < 1e-3
    assert rows[1]["detected"] is False
    text = harness("watermark", "detect", marked, clean).stdout.splitlines()
    assert "DETECTED sdv1" in text[0] and "not detected" in text[1]


def test_embed_then_detect_round_trip_and_small_images_are_undecidable(tmp_path):
    clean = photo(tmp_path)
    out = tmp_path / "v2.png"
    assert harness("watermark", "embed", clean, out, "--message", "sdv2").returncode == 0
    row = json.loads(harness("watermark", "detect", out, "--format", "jsonl").stdout)
    assert row["detected"] is True and row["best"] == "sdv2"
    from typer.testing import CliRunner

    from harness.cli import app

    cli = CliRunner()  # in process: the subprocess calls above already cover start-up
    mine = tmp_path / "mine.png"  # a message of one's own is detected when asked for
    embedded = cli.invoke(app, ["watermark", "embed", str(clean), str(mine), "--message", "lab-7"])
    assert embedded.exit_code == 0 and "did not take" not in embedded.stderr
    Image.new("RGB", (256, 256), (200, 30, 30)).save(tmp_path / "flat.png")  # a colour the codec cannot mark
    flat = cli.invoke(app, ["watermark", "embed", str(tmp_path / "flat.png"), str(tmp_path / "flat-v1.png")])
    assert flat.exit_code == 0 and (tmp_path / "flat-v1.png").is_file()
    assert "warning: the mark did not take on this image: detection reads 68 of 136 bits of 'sdv1'" in flat.stderr
    r = cli.invoke(app, ["watermark", "detect", str(mine), "--message", "lab-7", "--message", "sdv1", "--format", "jsonl"])
    assert r.exit_code == 0 and json.loads(r.stdout)["best"] == "text:lab-7", r.stderr
    assert set(json.loads(r.stdout)["messages"]) == {"text:lab-7", "sdv1"}
    lossy = cli.invoke(app, ["watermark", "embed", str(clean), str(tmp_path / "v1.jpg")])
    assert lossy.exit_code == 0 and "warning: .jpg compression removes most of the mark" in lossy.stderr
    Image.new("RGB", (128, 128), (10, 200, 30)).save(tmp_path / "small.png")
    small = json.loads(harness("watermark", "detect", tmp_path / "small.png", "--format", "jsonl").stdout)
    assert small["detected"] is None and "256x256" in small["reason"]


def test_detect_refuses_a_missing_file_before_reading_any(tmp_path):
    Image.new("RGB", (128, 128)).save(tmp_path / "there.png")
    r = harness("watermark", "detect", tmp_path / "there.png", tmp_path / "nosuch.png")
    assert r.returncode == 2 and "no such image file" in r.stderr and "nosuch.png" in r.stderr
    assert r.stdout == ""


def test_a_preset_name_in_other_case_is_refused_by_embed_and_detect(tmp_path):
    """`--message SDXL` would embed or look for the text "SDXL", not the SD XL preset: refused, as the metric
    refuses `messages=SDXL`, before any file is written."""
    src = photo(tmp_path)
    r = harness("watermark", "embed", src, tmp_path / "out.png", "--message", "SDXL")
    assert r.returncode == 2 and "write sdxl for the preset, or text:SDXL for the text" in r.stderr
    assert not (tmp_path / "out.png").exists()
    r = harness("watermark", "detect", src, "--message", "sdv1", "--message", "SDV1")
    assert r.returncode == 2 and "--message: message 'SDV1' would be taken as that text" in r.stderr


def test_embed_refuses_a_missing_output_folder_and_warns_that_gif_loses_the_mark(tmp_path):
    """A mistyped output folder is an error naming it (not created where nobody looks); a .gif's palette
    loses the mark as JPEG compression does, so it gets the same warning."""
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.metrics.watermark_codec import embed_file

    clean = photo(tmp_path)
    cli = CliRunner()
    typo = cli.invoke(app, ["watermark", "embed", str(clean), str(tmp_path / "ouput" / "marked.png")])
    assert typo.exit_code == 2, typo.output
    assert typo.stderr == (f"error: {tmp_path / 'ouput' / 'marked.png'}: the output folder {tmp_path / 'ouput'} "
                           "does not exist; create it first or fix the path\n")
    with pytest.raises(ValueError, match="the output folder .*ouput does not exist"):
        embed_file(clean, tmp_path / "ouput" / "marked.png")
    assert not (tmp_path / "ouput").exists()
    gif = cli.invoke(app, ["watermark", "embed", str(clean), str(tmp_path / "marked.gif")])
    assert gif.exit_code == 0 and (tmp_path / "marked.gif").is_file(), gif.output
    assert gif.stderr.startswith("warning: .gif palette (256 colours) removes most of the mark"), gif.stderr


def test_embed_into_a_folder_writes_the_source_name_there_and_never_over_the_source(tmp_path):
    """OUT a folder means into it under IN's name, as cp does; the source's own folder would overwrite the
    source, which is refused (naming the source itself overwrites it on purpose). IN a folder is named."""
    from typer.testing import CliRunner

    from harness.cli import app

    clean = photo(tmp_path)
    before = clean.read_bytes()
    (tmp_path / "out").mkdir()
    cli = CliRunner()
    done = cli.invoke(app, ["watermark", "embed", str(clean), str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    assert done.stdout == f"wrote {tmp_path / 'out' / 'clean.png'} with message sdv1\n"
    r = harness("watermark", "detect", tmp_path / "out" / "clean.png", "--format", "jsonl")
    assert json.loads(r.stdout)["detected"] is True, r.stdout
    same = cli.invoke(app, ["watermark", "embed", str(clean), str(tmp_path)])
    assert same.exit_code == 2 and same.stderr == (
        f"error: {tmp_path}: marking clean.png into its own folder would overwrite it; name the output file "
        "(give the source's own name to overwrite it on purpose)\n"), same.output
    assert clean.read_bytes() == before
    folder = cli.invoke(app, ["watermark", "embed", str(tmp_path / "out"), str(tmp_path / "x.png")])
    assert folder.exit_code == 2 and folder.stderr == f"error: {tmp_path / 'out'}: a folder; expected the image file to mark\n"
    assert not (tmp_path / "x.png").exists()
    (tmp_path / "in-the-way" / "clean.png").mkdir(parents=True)
    blocked = cli.invoke(app, ["watermark", "embed", str(clean), str(tmp_path / "in-the-way")])
    assert blocked.exit_code == 2 and blocked.stderr == (
        f"error: {tmp_path / 'in-the-way' / 'clean.png'}: a folder of that name is in the way; name the output file\n")
    typo = cli.invoke(app, ["watermark", "embed", str(clean), str(tmp_path / "ouy") + "/"])
    assert typo.exit_code == 2 and typo.stderr == (
        f"error: {tmp_path / 'ouy'}: no such folder, and the name has no image suffix to write a file by; give an "
        "existing folder or a file name such as marked.png\n"), typo.output
    gone = cli.invoke(app, ["watermark", "embed", str(tmp_path / "gone.png"), str(tmp_path)])
    assert gone.exit_code == 2 and gone.stderr == f"error: {tmp_path / 'gone.png'}: no such file\n"


def test_embed_warns_when_the_mark_is_found_alone_but_not_among_the_presets(tmp_path):
    """A noisy saturated red carries sdv1 weakly: looked for alone it is found (p just under 1e-3), but
    `detect` without --message looks for three presets and corrects for them, and does not find it. The
    read-back after embed says so rather than staying silent."""
    noise = np.random.default_rng(1).normal(0, 1, (256, 256, 3))
    Image.fromarray(np.clip(np.array((230, 20, 20)) + noise * 24, 0, 255).astype(np.uint8)).save(tmp_path / "red.png")
    r = harness("watermark", "embed", tmp_path / "red.png", tmp_path / "out.png")
    assert r.returncode == 0 and "warning: the mark took only weakly on this image" in r.stderr, r.stderr
    assert "`detect --message sdv1` finds it, but `detect` without --message" in r.stderr
    alone = json.loads(harness("watermark", "detect", tmp_path / "out.png", "--message", "sdv1", "--format",
                               "jsonl").stdout)
    among = json.loads(harness("watermark", "detect", tmp_path / "out.png", "--format", "jsonl").stdout)
    assert alone["detected"] is True and among["detected"] is False


def test_a_message_too_long_for_the_image_is_set_aside_and_the_others_are_read(tmp_path):
    from harness.metrics.watermark import detect

    rgb = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((256, 256), Image.LANCZOS))
    Image.fromarray(rgb).save(tmp_path / "clean.png")
    r = harness("watermark", "embed", tmp_path / "clean.png", tmp_path / "marked.png", "--message", "sdv1")
    assert r.returncode == 0, r.stderr
    long = "x" * 130  # 1,040 bits: more than the 1,024 blocks of 256 x 256 px
    r = harness("watermark", "detect", tmp_path / "marked.png", "--message", "sdv1", "--message", long)
    assert r.returncode == 0 and "DETECTED sdv1" in r.stdout, r.stdout + r.stderr
    assert f"not read: text:{long}: image has 1024 blocks of 8x8 px, fewer than the 1040 bits" in r.stdout
    result = detect(Image.open(tmp_path / "marked.png"), ["sdv1", long])
    assert set(result["messages"]) == {"sdv1"} and set(result["not_read"]) == {f"text:{long}"}
    alone = detect(Image.open(tmp_path / "marked.png"), [long])  # nothing it can read: no decision
    assert alone["detected"] is None and "fewer than the 1040 bits" in alone["reason"]
