"""PNG provenance: A1111 infotext, the harness JSON chunk, atomic writes, PNG checks."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from PIL import Image

from harness.core import Job
from harness.provenance import (
    a1111_parameters, check_png, is_temp_name, provenance_record, read_png_text, read_provenance,
    temp_path_for, write_png_atomic,
)
from infotext import parse_infotext, parse_pairs

FINGERPRINT = "1a2b3c4d5e6f" + "0" * 52


def make_job(**changes) -> Job:
    fields = dict(checkpoint="tiny", fingerprint=FINGERPRINT, mode="txt2img", prompt="a red fox",
                  negative_prompt="blurry", seed=42, steps=20, guidance=7.5, scheduler="euler_a",
                  width=512, height=512, factors={"animal": "fox"},
                  meta={"template": "a {color} {animal}", "prompt_seed": 7})
    fields.update(changes)
    return Job(**fields)


def pixels(size: int = 16) -> np.ndarray:
    return np.arange(size * size * 3, dtype=np.uint8).reshape(size, size, 3)


def write(path, job: Job, **extra) -> dict:
    record = provenance_record(job, **extra)
    write_png_atomic(path, pixels(), parameters=a1111_parameters(job, sampler="Euler a", model_name="tiny"),
                     provenance=record)
    return record


# ---------------------------------------------------------------- infotext text


def test_parameters_text_follows_a1111_layout():
    text = a1111_parameters(make_job(), sampler="Euler a", model_name="tiny")
    assert text == ("a red fox\n"
                    "Negative prompt: blurry\n"
                    "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x512, "
                    "Model hash: 1a2b3c4d5e, Model: tiny")


def test_negative_prompt_line_is_omitted_when_empty():
    text = a1111_parameters(make_job(negative_prompt=""), sampler="Euler a", model_name="tiny")
    assert "Negative prompt" not in text
    assert text.split("\n")[0] == "a red fox"
    assert parse_infotext(text).negative_prompt == ""


def test_denoising_strength_only_for_img2img():
    txt = parse_infotext(a1111_parameters(make_job(), sampler="DDIM", model_name="tiny"))
    img = parse_infotext(a1111_parameters(make_job(mode="img2img", strength=0.35, init_hash="ab"),
                                          sampler="DDIM", model_name="tiny"))
    assert "Denoising strength" not in txt.params
    assert img.params["Denoising strength"] == "0.35"


def test_img2img_without_strength_is_refused():
    with pytest.raises(ValueError, match="strength"):
        a1111_parameters(make_job(mode="img2img"), sampler="DDIM", model_name="tiny")


def test_model_hash_drops_algorithm_prefix():
    job = make_job(fingerprint="sha256:" + "abcdef0123" + "9" * 54)
    assert parse_infotext(a1111_parameters(job, sampler="x", model_name="y")).params["Model hash"] == "abcdef0123"


def test_values_with_commas_colons_and_newlines_are_json_quoted():
    name = 'v1-5, pruned: "emaonly"\nfinal'
    text = a1111_parameters(make_job(), sampler="DPM++ 2M Karras", model_name=name)
    last = text.split("\n")[-1]
    assert f"Model: {json.dumps(name, ensure_ascii=False)}" in last
    assert parse_pairs(last)["Model"] == name


def test_extra_pairs_cannot_overwrite_standard_keys():
    with pytest.raises(ValueError, match="Seed"):
        a1111_parameters(make_job(), sampler="x", model_name="y", extra={"Seed": 1})


@given(value=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
@settings(max_examples=150, deadline=None)
def test_any_parameter_value_reads_back_exactly(value):
    assume(value.strip())
    pairs = parse_pairs(a1111_parameters(make_job(), sampler=value, model_name=value).split("\n")[-1])
    assert pairs["Sampler"] == value and pairs["Model"] == value


# A1111's reader strips each prompt line and drops blank lines before the first
# text; a line starting with the negative label switches to the negative prompt.
def a1111_view(text: str) -> str:
    lines = [line.strip() for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines)


printable = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00")
                    | st.sampled_from(["\n", ",", ":", '"', " ", "(", ")", "\\"]), max_size=60)


def representable(text: str) -> bool:
    return not any(line.strip().startswith("Negative prompt:") for line in text.split("\n"))


@given(prompt=printable, negative=printable)
@settings(max_examples=300, deadline=None)
def test_infotext_round_trips_arbitrary_printable_prompts(prompt, negative):
    assume(representable(prompt) and representable(negative))
    text = a1111_parameters(make_job(prompt=prompt, negative_prompt=negative), sampler="Euler a",
                            model_name="tiny")
    info = parse_infotext(text)
    assert info.prompt == a1111_view(prompt)
    assert info.negative_prompt == a1111_view(negative)
    assert info.params["Seed"] == "42" and info.params["Model"] == "tiny"


@given(prompt=printable, negative=printable)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_infotext_round_trips_through_png_files(tmp_path, prompt, negative):
    assume(representable(prompt) and representable(negative))
    path = tmp_path / "x.png"
    write(path, make_job(prompt=prompt, negative_prompt=negative))
    info = parse_infotext(read_png_text(path)["parameters"])
    assert (info.prompt, info.negative_prompt) == (a1111_view(prompt), a1111_view(negative))


# ---------------------------------------------------------------- real PNG files


@pytest.mark.parametrize("prompt, negative", [
    ("a castle, at dusk, (detailed:1.2)", "ugly, blurry"),
    ("portrait: woman; style: oil", "text: watermark"),
    ("猫の写真, ünïcödé ✨ café", "низкое качество"),
    ("first line\nsecond, line\n\nfourth: line", "bad\nworse"),
    ("no negative here", ""),
])
def test_png_infotext_reads_back_every_setting(tmp_path, prompt, negative):
    job = make_job(prompt=prompt, negative_prompt=negative, mode="img2img", strength=0.5,
                   init_hash="c0ffee", seed=123456789, guidance=6.0, width=640, height=384, steps=31,
                   emphasis="a1111" if "(" in prompt else None)  # as the planner reads (detailed:1.2)
    path = tmp_path / f"{job.key}.png"
    write(path, job)
    info = parse_infotext(read_png_text(path)["parameters"])
    assert info.prompt == prompt
    assert info.negative_prompt == negative
    assert info.params == {"Steps": "31", "Sampler": "Euler a", "CFG scale": "6.0", "Seed": "123456789",
                           "Size": "640x384", "Model hash": "1a2b3c4d5e", "Model": "tiny",
                           "Denoising strength": "0.5"}


def chunk_types_with_keyword(path, keyword: bytes) -> set[bytes]:
    data = path.read_bytes()
    pos, found = 8, set()
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        ctype = data[pos + 4:pos + 8]
        if data[pos + 8:pos + 8 + length].startswith(keyword + b"\0"):
            found.add(ctype)
        pos += 12 + length
    return found


def test_latin1_parameters_use_text_chunk_and_others_itxt(tmp_path):
    write(tmp_path / "a.png", make_job(prompt="café au lait"))
    write(tmp_path / "b.png", make_job(prompt="猫"))
    assert chunk_types_with_keyword(tmp_path / "a.png", b"parameters") == {b"tEXt"}
    assert chunk_types_with_keyword(tmp_path / "b.png", b"parameters") == {b"iTXt"}


def test_provenance_round_trips_through_png(tmp_path):
    job = make_job(prompt="ünïcödé, prompt")
    path = tmp_path / "p.png"
    record = write(path, job, batch_size=8, slot=3, device="cuda:0", dtype="float16",
                   memory=["attention_slicing"])
    back = read_provenance(path)
    assert back == json.loads(json.dumps(record))
    assert back["key"] == job.key
    assert Job.from_dict(back["job"]) == job
    assert back["factors"] == {"animal": "fox"}
    assert back["template"] == "a {color} {animal}"
    assert back["seeds"] == {"image": 42, "prompt": 7}
    assert back["checkpoint"]["fingerprint"] == FINGERPRINT
    assert back["run"] == {"batch_size": 8, "slot": 3, "device": "cuda:0", "dtype": "float16",
                           "memory": ["attention_slicing"]}
    assert {"python", "harness", "torch", "diffusers", "transformers", "open_clip_torch"} <= set(back["versions"])


def test_read_provenance_of_foreign_png_explains(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(ValueError, match="not written by write_png_atomic"):
        read_provenance(path)


def test_modules_import_without_torch_pandas_or_pillow():
    code = ("import sys, harness.ledger, harness.provenance as p, harness.core as c\n"
            "job = c.Job('tiny', 'f' * 64, 'txt2img', 'x', '', 1, 2, 3.0, 's', 8, 8)\n"
            "r = p.provenance_record(job)\n"
            "bad = [m for m in ('torch', 'pandas', 'PIL', 'numpy', 'diffusers') if m in sys.modules]\n"
            "assert not bad, bad\n"
            "assert 'torch' in r['versions']\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_atomic_write_leaves_only_the_final_file(tmp_path):
    write(tmp_path / "img.png", make_job())
    assert [p.name for p in tmp_path.iterdir()] == ["img.png"]
    assert check_png(tmp_path / "img.png", decode=True) is None


def test_failed_rename_leaves_neither_final_nor_temp_file(tmp_path, monkeypatch):
    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write(tmp_path / "img.png", make_job())
    assert list(tmp_path.iterdir()) == []


def test_array_image_must_be_hxwx3_uint8(tmp_path):
    job = make_job()
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        write_png_atomic(tmp_path / "x.png", np.zeros((8, 8), np.uint8), parameters="", provenance={})
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        write_png_atomic(tmp_path / "x.png", np.zeros((8, 8, 3), np.float32), parameters="",
                         provenance=provenance_record(job))
    assert list(tmp_path.iterdir()) == []


def test_pil_images_are_written_unchanged(tmp_path):
    im = Image.fromarray(pixels(8))
    write_png_atomic(tmp_path / "x.png", im, parameters="p", provenance={"a": 1}, compress_level=9)
    with Image.open(tmp_path / "x.png") as back:
        assert np.array_equal(np.asarray(back), pixels(8))


def test_temp_names_are_recognised():
    final = Path("/x/images/abc.png")
    tmp = temp_path_for(final)
    assert tmp.parent == final.parent and tmp.name.startswith(".abc.png.tmp-")
    assert is_temp_name(tmp.name)
    assert not is_temp_name("abc.png") and not is_temp_name(".hidden.png")


def test_check_png_names_truncation_corruption_and_trailing_bytes(tmp_path):
    good = tmp_path / "good.png"
    write(good, make_job())
    data = good.read_bytes()
    cases = {"truncated": data[:-20], "corrupt": data[:60] + bytes([data[60] ^ 0xFF]) + data[61:],
             "trailing": data + b"junk", "empty": b""}
    reasons = {}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        reasons[name] = check_png(tmp_path / name)
    assert "truncated" in reasons["truncated"]
    assert "CRC mismatch" in reasons["corrupt"]
    assert "after IEND" in reasons["trailing"]
    assert "signature" in reasons["empty"]
    assert check_png(tmp_path / "absent.png") == "missing"


def test_write_atomic_replaces_whole_files_and_a_failed_write_leaves_the_old_one(tmp_path):
    from harness.atomic import write_atomic

    target = tmp_path / "comparisons.txt"
    write_atomic(target, lambda p: p.write_text("first"))

    def broken(p):
        p.write_text("half of the second")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, broken)
    assert target.read_text() == "first" and [f.name for f in tmp_path.iterdir()] == ["comparisons.txt"]

    def no_room(p):  # what a failed write() raises: an errno and no file name
        p.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        write_atomic(target, no_room)
    assert caught.value.filename == str(target)  # the file the user asked for, not the temp file
    assert target.read_text() == "first" and [f.name for f in tmp_path.iterdir()] == ["comparisons.txt"]


@pytest.mark.parametrize("writer", ["write_atomic", "write_durably"])
def test_on_a_read_only_disk_the_error_names_the_file_asked_for_not_the_temp_file(tmp_path, monkeypatch, writer):
    """On a read-only file system removing the temp file fails too: that second error must not replace the
    first, which names the file the user asked for."""
    import pathlib

    from harness.atomic import write_atomic
    from harness.provenance import write_durably

    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    def fail(target):
        raise OSError(errno.EROFS, "Read-only file system")

    target = tmp_path / "images" / "k.png"
    target.parent.mkdir()
    monkeypatch.setattr(pathlib.Path, "unlink", read_only)
    with pytest.raises(OSError) as caught:
        if writer == "write_atomic":
            write_atomic(target, fail)
        else:
            write_durably(target, fail)
    assert caught.value.errno == errno.EROFS and caught.value.filename == str(target)


def test_a_png_too_large_for_the_file_size_limit_fails_naming_the_image_and_leaves_nothing(tmp_path):
    """A failed write() names no file; the error names the image being written (the CLI shows it)."""
    code = ("import resource, sys, numpy as np\n"
            "from pathlib import Path\n"
            "from harness.provenance import write_png_atomic\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            "noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)\n"
            "try:\n"
            "    write_png_atomic(Path(sys.argv[1]) / 'img.png', noise, parameters='x', provenance={})\n"
            "except OSError as e:\n"
            "    print(e.errno, e.filename)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["27", str(tmp_path / "img.png")], out.stderr  # EFBIG
    assert list(tmp_path.iterdir()) == []


def test_generated_pngs_record_the_torch_thread_count_and_streams(tiny_ref, tmp_path):
    """CPU pixels of `exact` img2img depend on torch's intra-op thread count: it is in the provenance."""
    import torch

    from harness.worker import BatchMaker, Tuning

    from harness.images import init_hash

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "init.png")
    (tmp_path / "images").mkdir()
    job = Job("tiny", tiny_ref.fingerprint, "img2img", "a cat", "", 1, 2, 7.5, "ddim", 64, 64, strength=0.5,
              init_hash=init_hash(tmp_path / "init.png", 64, 64), init_image=str(tmp_path / "init.png"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        maker = BatchMaker({"tiny": tiny_ref}, tmp_path / "images", device="cpu",
                           tuning=Tuning(writers=0, streams=1), exact=True)
        maker.make([job])
        maker.close()
    finally:
        torch.set_num_threads(before)
    run = read_provenance(tmp_path / "images" / f"{job.key}.png")["run"]
    assert run["torch_threads"] == 1 and run["streams"] == 1


def test_an_init_image_replaced_after_planning_makes_no_image_under_the_old_pixels_key(tiny_ref, tmp_path):
    """The key holds the init's pixels: a file replaced while a run goes on (or other on a remote worker)
    would file an image of the new pixels under the old key. The batch stops, naming the file."""
    import pytest

    from harness.images import init_hash
    from harness.worker import BatchMaker, InitImageChanged, Tuning

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "init.png")
    (tmp_path / "images").mkdir()
    job = Job("tiny", tiny_ref.fingerprint, "img2img", "a cat", "", 1, 2, 7.5, "ddim", 64, 64, strength=0.5,
              init_hash=init_hash(tmp_path / "init.png", 64, 64), init_image=str(tmp_path / "init.png"))
    Image.new("RGB", (64, 64), (30, 30, 200)).save(tmp_path / "init.png")  # replaced after planning
    maker = BatchMaker({"tiny": tiny_ref}, tmp_path / "images", device="cpu", tuning=Tuning(writers=0, streams=1))
    with pytest.raises(InitImageChanged, match=f"init image {tmp_path / 'init.png'} changed since this run planned"):
        maker.make([job])
    maker.close()
    assert not list((tmp_path / "images").glob("*.png"))


def test_a_run_in_two_streams_records_both_and_the_threads_each_stream_used(tiny_ref, tmp_path):
    import torch

    from harness.run import run_experiment

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "init.png")
    (tmp_path / "exp.toml").write_text('prompt = "a {red|blue} cat"\nseeds = [1]\nmode = "img2img"\n'
                                       'init_images = "init.png"\nstrengths = [0.5]\nsteps = 2\nwidth = 64\n'
                                       'height = 64\nexact = true\nstreams = 2\ndevice = "cpu"\n')
    threads = torch.get_num_threads()
    run_experiment(tmp_path / "exp.toml", out=tmp_path / "run", progress=False)
    runs = [read_provenance(f)["run"] for f in (tmp_path / "run" / "images").glob("*.png")]
    assert len(runs) == 2 and torch.get_num_threads() == threads
    assert all(r["streams"] == 2 and r["torch_threads"] == max(1, threads // 2) for r in runs), runs


def test_control_characters_stay_out_of_the_text_chunk_and_exact_in_the_record(tmp_path):
    """A PNG text chunk may not hold NUL or other control characters (tab and line feed aside): the
    infotext shows them as U+FFFD, the harness record keeps the prompt exact."""
    job = make_job(prompt="a\x00cat\x07, tab\there", negative_prompt="bad\x1b")
    path = tmp_path / "c.png"
    write(path, job)
    info = parse_infotext(read_png_text(path)["parameters"])
    assert (info.prompt, info.negative_prompt) == ("a\ufffdcat\ufffd, tab\there", "bad\ufffd")
    assert b"a\x00cat" not in path.read_bytes()
    assert Job.from_dict(read_provenance(path)["job"]) == job


def test_schedule_type_follows_the_sampler_when_given():
    text = a1111_parameters(make_job(), sampler="DPM++ 2M", schedule="Uniform", model_name="tiny")
    assert "Steps: 20, Sampler: DPM++ 2M, Schedule type: Uniform, CFG scale: 7.5," in text
    assert parse_infotext(text).params["Schedule type"] == "Uniform"


def test_infotext_model_is_a_files_name_without_folder_or_extension_as_a1111_writes_it():
    from harness.provenance import a1111_model_name

    assert a1111_model_name("/home/me/models/dreamy-v2.safetensors", "file") == "dreamy-v2"
    assert a1111_model_name("m/a.ckpt", "file") == "a"
    assert a1111_model_name("../models/my-finetune", "folder") == "my-finetune"
    assert a1111_model_name("stabilityai/stable-diffusion-2-1", "hub") == "stabilityai/stable-diffusion-2-1"
    assert a1111_model_name("tiny", "builtin") == "tiny"
    assert a1111_model_name(".", "folder") == "."
