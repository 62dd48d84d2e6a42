"""Checkpoint registry: built-in tiny model, resolution, fingerprints, single files, schedulers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from harness import checkpoints as ck
from harness import pipelines, schedulers


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_ref):
    return pipelines.load_pipeline(tiny_ref, "txt2img")


def fake_hub_snapshot(hf_cache: Path, repo: str, source: Path, commit: str = "0" * 40) -> Path:
    """Lay out `source` the way huggingface_hub caches a downloaded repo."""
    root = hf_cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    shutil.copytree(source, snapshot)
    return snapshot


# ---------------------------------------------------------------- built-in tiny

def test_tiny_resolves_to_a_builtin_diffusers_folder_in_the_cache(tiny_ref, harness_cache):
    assert tiny_ref.kind == "builtin" and tiny_ref.family == "tiny" and tiny_ref.native_size == 512
    folder = Path(tiny_ref.source)
    assert folder.is_relative_to(harness_cache) and (folder / "model_index.json").is_file()
    assert len(tiny_ref.fingerprint) == 10 and tiny_ref.model_hash == tiny_ref.fingerprint


def test_tiny_is_built_once_and_leaves_no_temporary_folders(tiny_ref):
    folder = Path(tiny_ref.source)
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    again = ck.resolve("tiny")
    assert again == tiny_ref
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []


def test_tiny_loads_through_from_pretrained_as_a_stable_diffusion_pipeline(tiny_pipe, tiny_ref):
    assert type(tiny_pipe).__name__ == "StableDiffusionPipeline"
    assert tiny_pipe.vae_scale_factor == 8
    assert tiny_pipe.safety_checker is None
    assert tiny_pipe.harness_fingerprint == tiny_ref.fingerprint
    assert tiny_pipe.text_encoder.config.vocab_size == 49408
    assert tiny_pipe.tokenizer.model_max_length == 77


def test_tiny_fingerprint_is_the_same_when_built_in_another_cache(tiny_ref, tmp_path, monkeypatch):
    monkeypatch.setenv(ck.CACHE_ENV, str(tmp_path / "other-cache"))
    rebuilt = ck.resolve("tiny")
    assert rebuilt.source != tiny_ref.source
    assert rebuilt.fingerprint == tiny_ref.fingerprint


def test_tiny_tokenizer_ids_equal_open_clip_simple_tokenizer(tiny_pipe):
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    for text in ["a photo of an astronaut riding a horse, by greg rutkowski",
                 "Octane render, 35mm photograph!! 8k", "café au lait, (masterpiece:1.2)"]:
        ours = tiny_pipe.tokenizer(text).input_ids
        assert ours == [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]


def test_builtin_build_tolerates_another_process_finishing_first(harness_cache, monkeypatch):
    def builder(path: Path) -> None:
        path.mkdir(parents=True)
        (path / "model_index.json").write_text("{}")
        # meanwhile another process published the same built-in
        target = ck.cache_dir() / "models" / "race-v1"
        target.mkdir(parents=True, exist_ok=True)
        (target / "model_index.json").write_text('{"winner": true}')
        (target / "other").write_text("x")

    monkeypatch.setitem(ck.BUILTINS, "race", ck.Builtin("race", builder, "race-v1", 512, "tiny"))
    folder = ck.builtin_folder("race")
    assert json.loads((folder / "model_index.json").read_text()) == {"winner": True}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".race")]


def test_a_damaged_builtin_folder_is_rebuilt_and_an_abandoned_build_is_cleared(harness_cache, monkeypatch):
    """A built-in folder missing its model_index.json (a file deleted by hand) is rebuilt in place, not an
    ENOTEMPTY error on every run; a staging folder a killed build left a day ago is removed."""
    builds = []

    def builder(path: Path) -> None:
        builds.append(path)
        path.mkdir(parents=True)
        (path / "model_index.json").write_text('{"built": %d}' % len(builds))

    monkeypatch.setitem(ck.BUILTINS, "mend", ck.Builtin("mend", builder, "mend-v1", 512, "tiny"))
    folder = ck.builtin_folder("mend")
    (folder / "model_index.json").unlink()
    (folder / "leftover").write_text("x")
    abandoned, fresh = folder.parent / ".mend-v1.building-old", folder.parent / ".mend-v1.building-now"
    abandoned.mkdir(), fresh.mkdir()
    os.utime(abandoned, (time.time() - 2 * 86400,) * 2)
    assert ck.builtin_folder("mend") == folder
    assert json.loads((folder / "model_index.json").read_text()) == {"built": 2}
    assert not (folder / "leftover").exists() and len(builds) == 2
    assert not abandoned.exists() and fresh.exists()  # a build in progress elsewhere is left alone


def test_register_builtin_rejects_names_that_are_not_simple_identifiers():
    with pytest.raises(ck.CheckpointError, match="register_builtin"):
        ck.register_builtin("My Model", lambda p: None, folder="x")


# ---------------------------------------------------------------- resolve

def test_unknown_name_lists_builtins_and_aliases(harness_cache):
    with pytest.raises(ck.CheckpointError) as err:
        ck.resolve("stable-diffusion-99")
    message = str(err.value)
    assert "'stable-diffusion-99'" in message
    for name in ("tiny", "sd15", "sd21-base"):
        assert name in message


def test_alias_not_in_hf_cache_says_where_it_looked_and_how_to_fix(empty_hf_cache):
    with pytest.raises(ck.CheckpointError) as err:
        ck.resolve("sd15")
    message = str(err.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "Hugging Face cache" in message and str(empty_hf_cache) in message
    assert "huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5" in message


def test_aliases_accept_dotted_spellings():
    assert ck.ALIASES["sd1.5"] == ck.ALIASES["sd15"]
    assert ck.ALIASES["sd2.1-base"] == "stabilityai/stable-diffusion-2-1-base"
    assert ck.ALIASES["sd14"] == "CompVis/stable-diffusion-v1-4"


def test_hub_id_found_in_hf_cache_resolves_with_the_folder_fingerprint(tiny_ref, empty_hf_cache):
    fake_hub_snapshot(empty_hf_cache, "someone/tiny-copy", Path(tiny_ref.source))
    ref = ck.resolve("someone/tiny-copy")
    assert (ref.kind, ref.source) == ("hub", "someone/tiny-copy")
    assert ref.fingerprint == tiny_ref.fingerprint
    pipe = pipelines.load_pipeline(ref, "img2img", scheduler="ddim")
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"


def test_relative_folder_resolves_against_base_dir(tiny_ref, tmp_path):
    shutil.copytree(tiny_ref.source, tmp_path / "models" / "mine")
    ref = ck.resolve("models/mine", base_dir=tmp_path)
    assert ref.kind == "folder" and ref.source == str((tmp_path / "models" / "mine").resolve())
    assert ref.name == "models/mine" and ref.fingerprint == tiny_ref.fingerprint


def test_folder_without_model_index_is_rejected_with_its_path(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ck.CheckpointError, match="no model_index.json"):
        ck.resolve(str(tmp_path / "weights"))


@pytest.mark.parametrize("damage, expected", [
    (lambda f: (f / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline",\n'),
     "model_index.json is not valid JSON (Expecting property name enclosed in double quotes: line 2 column 1"),
    (lambda f: (f / "unet" / "config.json").unlink(), "unet/config.json is missing"),
    (lambda f: (f / "scheduler" / "scheduler_config.json").write_text("[1, 2]"), "holds list, not a JSON object"),
])
def test_a_damaged_pipeline_folder_is_named_at_resolve_with_the_file_and_the_fix(tiny_ref, tmp_path, damage, expected):
    import shutil

    copy = tmp_path / "tiny-copy"
    shutil.copytree(tiny_ref.source, copy)
    damage(copy)
    with pytest.raises(ck.CheckpointError) as err:
        ck.resolve(str(copy))
    assert expected in str(err.value) and "download or copy the checkpoint again" in str(err.value)


def test_missing_path_is_reported_as_a_path(tmp_path):
    with pytest.raises(ck.CheckpointError, match="no file or folder"):
        ck.resolve("./nowhere/model.safetensors", base_dir=tmp_path)


def test_a_misspelt_name_suggests_the_closest_builtin_or_alias(harness_cache):
    for spec, close in (("tinyy", "tiny"), ("sd15-randm", "sd15-random"), ("sd-15", "sd15"), ("tyni", "tiny"), ("toy2", "toy")):
        with pytest.raises(ck.CheckpointError, match=f"unknown checkpoint '{spec}' \\(did you mean '{close}'\\?\\)"):
            ck.resolve(spec)
    with pytest.raises(ck.CheckpointError) as err:
        ck.resolve("stable-diffusion-99")
    assert "did you mean" not in str(err.value)


def test_a_misspelt_path_suggests_the_closest_name_in_its_folder(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    with pytest.raises(ck.CheckpointError, match=r"no file or folder at .*\(did you mean './models/mine'\?\)"):
        ck.resolve("./models/mien", base_dir=tmp_path)
    # `models/mien` could be a hub id too: not in the cache, and the folder beside it is what was meant
    with pytest.raises(ck.CheckpointError, match=r"no local folder .* either\) \(did you mean 'models/mine'\?\)"):
        ck.resolve("models/mien", base_dir=tmp_path)


def test_a_hub_id_missing_from_the_cache_suggests_a_cached_one(tiny_ref, empty_hf_cache):
    fake_hub_snapshot(empty_hf_cache, "someone/tiny-copy", Path(tiny_ref.source))
    with pytest.raises(ck.CheckpointError, match=r"did you mean 'someone/tiny-copy'\?"):
        ck.resolve("someone/tiny-cpy")


def test_locate_checks_a_builtin_without_building_it(tmp_path, monkeypatch):
    monkeypatch.setenv(ck.CACHE_ENV, str(tmp_path / "cache"))
    assert ck.locate("tiny") == ck.Location("builtin", "tiny")
    assert not (tmp_path / "cache").exists()


def test_folder_fingerprint_changes_when_a_weight_changes(tiny_ref, tmp_path):
    copy = tmp_path / "edited"
    shutil.copytree(tiny_ref.source, copy)
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert ck.folder_fingerprint(copy) != tiny_ref.fingerprint


def test_a_run_after_a_checkpoints_weights_changed_names_it_with_both_fingerprints(tiny_ref, tmp_path):
    """A fine-tune saved again under the same folder: its images are made anew, and the run says why the
    earlier ones are left out, naming the checkpoint rather than an edit of the experiment."""
    from typer.testing import CliRunner

    from harness.cli import app

    shutil.copytree(tiny_ref.source, tmp_path / "ft")
    (tmp_path / "e.toml").write_text('prompt = "a red cat"\ncheckpoints = ["ft"]\nsteps = 2\nwidth = 64\n'
                                     'height = 64\nseeds = [1, 2]\n')
    run = ["run", str(tmp_path / "e.toml"), "--out", str(tmp_path / "run")]
    first = CliRunner().invoke(app, run)
    assert first.exit_code == 0 and "weights of checkpoint" not in first.output, first.output
    before = ck.folder_fingerprint(tmp_path / "ft")
    weights = tmp_path / "ft" / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    after = ck.folder_fingerprint(tmp_path / "ft")
    second = CliRunner().invoke(app, run)
    assert second.exit_code == 0, second.output
    assert "jobs: 2 planned, 0 already done, 2 generated" in second.output
    assert (f"note: the weights of checkpoint ft changed since 2 of those images were made (fingerprint {before}, "
            f"now {after}): its images are made anew from the new weights") in second.output


def test_folder_fingerprint_covers_the_plain_bin_that_loads_rather_than_a_variant_beside_it(tiny_ref, tmp_path):
    """A component with a plain `.bin` and an fp16 `.safetensors` variant loads the `.bin` (no variant is
    asked for); changing that `.bin` must change the fingerprint, or old images count as done."""
    import torch
    from safetensors.torch import load_file

    from harness.fingerprints import fingerprint_files

    copy = tmp_path / "mixed"
    shutil.copytree(tiny_ref.source, copy)
    unet = copy / "unet"
    plain = unet / "diffusion_pytorch_model.safetensors"
    state = load_file(str(plain))
    plain.rename(unet / "diffusion_pytorch_model.fp16.safetensors")
    torch.save(state, unet / "diffusion_pytorch_model.bin")
    before = ck.folder_fingerprint(copy)
    assert unet / "diffusion_pytorch_model.bin" in fingerprint_files(copy)
    torch.save({k: v + 1 for k, v in state.items()}, unet / "diffusion_pytorch_model.bin")
    assert ck.folder_fingerprint(copy) != before


def test_folder_fingerprint_ignores_library_version_stamps(tiny_ref, tmp_path):
    copy = tmp_path / "restamped"
    shutil.copytree(tiny_ref.source, copy)
    config = copy / "unet" / "config.json"
    data = json.loads(config.read_text())
    data["_diffusers_version"] = "9.9.9"
    config.write_text(json.dumps(data, indent=4))
    assert ck.folder_fingerprint(copy) == tiny_ref.fingerprint


# ---------------------------------------------------------------- single files

@pytest.fixture(scope="session")
def tiny_single_file(tiny_pipe, tmp_path_factory):
    from harness.single_file import save_single_file

    return save_single_file(tiny_pipe, tmp_path_factory.mktemp("single") / "tiny.safetensors")


def test_single_file_fingerprint_is_the_a1111_model_hash(tiny_single_file, harness_cache):
    ref = ck.resolve(str(tiny_single_file))
    expected = hashlib.sha256(tiny_single_file.read_bytes()).hexdigest()[:10]
    assert (ref.kind, ref.fingerprint, ref.model_hash, ref.family) == ("file", expected, expected, "sd1")


def test_file_hash_is_cached_by_path_size_and_mtime(tmp_path, harness_cache):
    path = tmp_path / "big.ckpt"
    path.write_bytes(b"a" * (1 << 20))
    first = ck.file_sha256(path)
    entries = json.loads((harness_cache / "file-hashes.json").read_text())
    assert entries[str(path.resolve())]["sha256"] == first
    path.write_bytes(b"b" * (1 << 20) + b"!")
    assert ck.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest() != first


def test_single_file_without_cached_config_repo_fails_naming_the_repo(tiny_single_file, empty_hf_cache):
    ref = ck.resolve(str(tiny_single_file))
    with pytest.raises(ck.CheckpointError) as err:
        pipelines.load_pipeline(ref, "txt2img")
    message = str(err.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message and "Hugging Face cache" in message
    assert "config=" in message


def test_single_file_loads_offline_with_a_local_config_folder(tiny_single_file, tiny_ref, tiny_pipe):
    import torch

    ref = ck.resolve(str(tiny_single_file), config=tiny_ref.source)
    assert ref.config == tiny_ref.source and ref.model_hash == ck.a1111_hash(tiny_single_file)
    assert ref.family == "tiny"  # its config is the built-in's: no size of its own, as the folder has none
    assert ref.fingerprint != ref.model_hash  # the config is part of what makes the pixels
    pipe = pipelines.load_pipeline(ref, "txt2img")
    for part in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(pipe, part).state_dict(), getattr(tiny_pipe, part).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_file_name_written_bare_in_its_table_is_named_with_the_quotes_it_needs(tiny_single_file, tiny_ref, tmp_path,
                                                                                  empty_hf_cache):
    """`[checkpoint.tiny.safetensors]` is a table `tiny` holding `safetensors`: the one problem is the
    quoting, and the table is read as the file's, so its config is found and no `tiny` table is blamed."""
    import shutil

    from harness.experiment import ExperimentError, load_experiment

    shutil.copy(tiny_single_file, tmp_path / "tiny.safetensors")
    (tmp_path / "e.toml").write_text('prompt = "a red cat"\ncheckpoints = ["tiny", "tiny.safetensors"]\n'
                                     f'[checkpoint.tiny.safetensors]\nconfig = "{tiny_ref.source}"\n')
    with pytest.raises(ExperimentError) as err:
        load_experiment(tmp_path / "e.toml")
    assert err.value.problems == ["table '[checkpoint.tiny.safetensors]': TOML reads the dots of 'tiny.safetensors' "
                                  "as tables nested in each other; quote the name: [checkpoint.\"tiny.safetensors\"]"]


def test_an_experiment_names_a_single_files_config_and_runs_it_offline(tiny_single_file, tiny_ref, tmp_path,
                                                                         empty_hf_cache):
    """Without the reference configs in the HF cache, a single file is refused when the experiment loads
    (not after the other checkpoints' images are made), with the key that fixes it; with
    `[checkpoint."FILE"] config = FOLDER` it runs, and its images are the built-in model's."""
    import shutil

    import numpy as np
    from PIL import Image

    from harness.experiment import ExperimentError, load_experiment
    from harness.ledger import Ledger
    from harness.run import run_experiment

    shutil.copy(tiny_single_file, tmp_path / "tiny.safetensors")
    text = ('name = "single"\nprompt = "a red cat"\ncheckpoints = ["tiny", "tiny.safetensors"]\nsteps = 2\n'
            'width = 64\nheight = 64\nexact = true\n')
    (tmp_path / "bare.toml").write_text(text)
    with pytest.raises(ExperimentError) as err:
        load_experiment(tmp_path / "bare.toml")
    assert "key 'checkpoints[1]': single-file checkpoint 'tiny.safetensors'" in str(err.value)
    assert '[checkpoint."tiny.safetensors"] config = "FOLDER"' in str(err.value)

    (tmp_path / "nope.toml").write_text(text + '[checkpoint."tiny.safetensors"]\nconfig = "no-such-folder"\n')
    with pytest.raises(ExperimentError, match=r"key 'checkpoint\.\"tiny\.safetensors\"\.config': config='no-such-folder'"):
        load_experiment(tmp_path / "nope.toml")
    (tmp_path / "empty").mkdir()
    (tmp_path / "index.json").write_text("{}")
    for config, expected in (("empty", "folder has no model_index.json"), ("index.json", "a file is not a config")):
        (tmp_path / "bad.toml").write_text(text + f'[checkpoint."tiny.safetensors"]\nconfig = "{config}"\n')
        with pytest.raises(ExperimentError, match=expected):
            load_experiment(tmp_path / "bad.toml")

    (tmp_path / "exp.toml").write_text(text + f'[checkpoint."tiny.safetensors"]\nconfig = "{tiny_ref.source}"\n')
    run_experiment(tmp_path / "exp.toml", out=tmp_path / "run", progress=False)
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        frame = led.jobs_frame().set_index("checkpoint")
    images = {ck: np.asarray(Image.open(tmp_path / "run" / "images" / f"{key}.png")) for ck, key in frame["key"].items()}
    assert np.array_equal(images["tiny"], images["tiny.safetensors"])
    from harness.provenance import read_png_text, read_provenance
    from infotext import parse_infotext

    single = tmp_path / "run" / "images" / f"{frame['key']['tiny.safetensors']}.png"
    record = read_provenance(single)["checkpoint"]
    assert record["config"] == tiny_ref.source and record["kind"] == "file"
    assert record["source"] == str((tmp_path / "tiny.safetensors").resolve())
    assert parse_infotext(read_png_text(single)["parameters"]).params["Model"] == "tiny"  # A1111: no folder, no .ext


def test_config_is_refused_for_checkpoints_that_carry_their_own(harness_cache):
    with pytest.raises(ck.CheckpointError, match="applies only to single"):
        ck.resolve("tiny", config="some/folder")


def test_non_stable_diffusion_safetensors_is_rejected(tmp_path):
    from safetensors.torch import save_file
    import torch

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ck.CheckpointError, match="not a Stable Diffusion"):
        ck.resolve(str(path))


# ---------------------------------------------------------------- schedulers

def test_unreadable_single_files_are_rejected_when_resolved_naming_the_file(tmp_path):
    """Random bytes, a training checkpoint holding Python objects, a safetensors file of zeros: each is a
    clear CheckpointError from resolve (so `harness plan` fails before any run folder exists)."""
    import torch

    (tmp_path / "noise.ckpt").write_bytes(bytes(range(256)) * 16)
    for i, junk in enumerate((b"Repository not found", b"hello", b"GIF89a\x01\x00\x01\x00")):
        (tmp_path / f"junk{i}.ckpt").write_bytes(junk)  # what a failed download or a misnamed file holds
        with pytest.raises(ck.CheckpointError, match="not a readable torch checkpoint|could not be read") as err:
            ck.resolve(str(tmp_path / f"junk{i}.ckpt"))
        assert f"junk{i}.ckpt" in str(err.value)
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "callbacks": ck.CheckpointRef},
               tmp_path / "lightning.ckpt")
    (tmp_path / "zeros.safetensors").write_bytes(bytes(1000))
    torch.save([torch.zeros(1)], tmp_path / "list.ckpt")
    for name, expected in (("noise.ckpt", "could not be read as a checkpoint of tensors"),
                           ("lightning.ckpt", "Python objects"),
                           ("zeros.safetensors", "not a safetensors file"),
                           ("list.ckpt", "holds a list, not a dict of tensors")):
        with pytest.raises(ck.CheckpointError, match=expected) as err:
            ck.resolve(str(tmp_path / name))
        assert name in str(err.value)
        assert f"({tmp_path / name})" not in str(err.value) and "PyTorch 2.6" not in str(err.value)
    with pytest.raises(ck.CheckpointError, match=r"tensors \(Unsupported global: GLOBAL harness\.checkpoints\."):
        ck.resolve(str(tmp_path / "lightning.ckpt"))  # torch's one sentence saying what it found


def test_checkpoints_only_found_unusable_when_planned_are_listed_by_key(tmp_path):
    """A .ckpt that exists but cannot be read passes the cheap load-time check; planning lists every such
    checkpoint by its key in the experiment file, in the file's usual problem format."""
    import torch

    from harness.experiment import load_experiment
    from harness.plan import make_plan

    (tmp_path / "noise.ckpt").write_bytes(bytes(range(256)) * 16)
    torch.save([torch.zeros(1)], tmp_path / "list.ckpt")
    exp_file = tmp_path / "e.toml"
    exp_file.write_text('prompt = "a cat"\nseeds = [1]\ncheckpoints = ["noise.ckpt", "list.ckpt"]\n')
    with pytest.raises(ck.CheckpointError) as err:
        make_plan(load_experiment(exp_file))
    lines = str(err.value).splitlines()
    assert lines[0] == f"{exp_file}: 2 problems:"
    assert lines[1].startswith("  - key 'checkpoints[0]': checkpoint 'noise.ckpt': ")
    assert lines[2].startswith("  - key 'checkpoints[1]': checkpoint 'list.ckpt': ") and "holds a list" in lines[2]


def test_every_registered_scheduler_builds_from_the_checkpoint_config(tiny_pipe):
    for name, spec in schedulers.SCHEDULERS.items():
        scheduler = schedulers.make_scheduler(name, tiny_pipe.scheduler.config)
        assert type(scheduler).__name__ == spec.class_name
        assert scheduler.config.beta_schedule == "scaled_linear"


def test_sampler_names_are_the_a1111_display_names():
    assert schedulers.SAMPLER_NAMES == {"ddim": "DDIM", "pndm": "PLMS", "euler": "Euler", "euler_a": "Euler a",
                                "dpmpp_2m": "DPM++ 2M", "lms": "LMS", "heun": "Heun", "ddpm": "DDPM"}


def test_dpmpp_2m_names_its_even_spacing_since_the_web_ui_defaults_it_to_karras(tiny_pipe):
    assert schedulers.SCHEDULE_TYPES == {"dpmpp_2m": "Uniform"}
    built = schedulers.make_scheduler("dpmpp_2m", tiny_pipe.scheduler.config)
    assert not built.config.use_karras_sigmas and built.config.algorithm_type == "dpmsolver++"


def test_unknown_scheduler_lists_the_valid_names(tiny_ref):
    with pytest.raises(ck.CheckpointError) as err:
        pipelines.load_pipeline(tiny_ref, "txt2img", scheduler="k_dpm_2")
    assert "'k_dpm_2'" in str(err.value) and "euler_a" in str(err.value) and "dpmpp_2m" in str(err.value)


def test_unknown_mode_is_rejected(tiny_ref):
    with pytest.raises(ck.CheckpointError, match="inpaint"):
        pipelines.load_pipeline(tiny_ref, "inpaint")


def test_derived_pipelines_share_models_but_not_schedulers(tiny_pipe):
    img2img = pipelines.derive_pipeline(tiny_pipe, "img2img", "euler")
    assert img2img.unet is tiny_pipe.unet and img2img.vae is tiny_pipe.vae
    assert img2img.scheduler is not tiny_pipe.scheduler
    assert schedulers.scheduler_name_of(img2img) == "euler"


def test_hub_offline_blocks_requests_and_restores_the_setting():
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    with pipelines.hub_offline():
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE == before


def test_importing_checkpoints_and_registries_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, harness.checkpoints, harness.schedulers, harness.pipelines; "
            "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_sd15_random_has_stable_diffusion_v15_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv(ck.CACHE_ENV, str(tmp_path))
    ref = ck.resolve("sd15-random")
    assert (ref.family, ref.native_size) == ("sd1", 512)
    pipe = pipelines.load_pipeline(ref, device=None)
    counts = {part: sum(p.numel() for p in getattr(pipe, part).parameters())
              for part in ("unet", "vae", "text_encoder")}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def test_pipelines_loaded_in_one_process_share_the_tokenizer_of_identical_files(tmp_path):
    """A second load (or another checkpoint with the same tokenizer files) reuses the tokenizer object;
    a tokenizer with different files gets its own; prompts still tokenize the same."""
    import json
    import shutil

    tiny = ck.resolve("tiny")
    first = pipelines.load_pipeline(tiny, device=None)
    second = pipelines.load_pipeline(tiny, device=None)
    assert second.tokenizer is first.tokenizer and second.unet is not first.unet
    copy = tmp_path / "other"
    shutil.copytree(tiny.source, copy)
    config = copy / "tokenizer" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 40}))
    other = pipelines.load_pipeline(ck.resolve(str(copy)), device=None)
    assert other.tokenizer is not first.tokenizer and other.tokenizer.model_max_length == 40
    text = "a red lambo, by greg rutkowski"
    assert other.tokenizer(text).input_ids == first.tokenizer(text).input_ids


def test_a_ckpt_without_configs_is_refused_when_planned_not_after_other_checkpoints_ran(tiny_single_file, tmp_path,
                                                                                        empty_hf_cache):
    """A .ckpt's family is known only once it is read (when planning); without its reference configs in
    the HF cache the plan fails naming the key, before `harness run` makes any image."""
    import torch
    from safetensors.torch import load_file

    from harness.experiment import load_experiment
    from harness.plan import make_plan

    torch.save({"state_dict": load_file(str(tiny_single_file))}, tmp_path / "tiny.ckpt")
    (tmp_path / "e.toml").write_text('prompt = "a red cat"\ncheckpoints = ["tiny", "tiny.ckpt"]\nsteps = 2\n')
    with pytest.raises(ck.CheckpointError) as err:
        make_plan(load_experiment(tmp_path / "e.toml"))
    assert "key 'checkpoints[1]': single-file checkpoint 'tiny.ckpt'" in str(err.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in str(err.value)


def test_a_truncated_single_file_with_a_local_config_fails_to_load_naming_it_without_a_hub_hint(
        tiny_single_file, tiny_ref, tmp_path):
    cut = tmp_path / "cut.safetensors"
    data = tiny_single_file.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # an interrupted copy: the header is whole, the tensors are not
    with pytest.raises(ck.CheckpointError) as err:  # found when located, before anything is loaded
        ck.resolve(str(cut), config=tiny_ref.source)
    assert f"checkpoint {str(cut)!r}: {cut} is truncated ({len(data) // 2} of {len(data)} bytes)" in str(err.value)
    assert "missing from the hub" not in str(err.value)  # the config is a local folder
