"""Checkpoint fixes: zero-terminal-SNR schedules, truncated .safetensors, SD2 single-file defaults, .yaml configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness import checkpoints as ck
from harness import pipelines, schedulers

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def tiny_pipe(tiny_ref):
    return pipelines.load_pipeline(tiny_ref, "txt2img")


@pytest.fixture(scope="module")
def zero_snr_folder(tiny_ref, tmp_path_factory) -> Path:
    """A copy of `tiny` whose scheduler config was trained with zero terminal SNR."""
    folder = tmp_path_factory.mktemp("zsnr") / "zsnr"
    shutil.copytree(tiny_ref.source, folder)
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    path.write_text(json.dumps(config))
    return folder


# ---------------------------------------------------------------- 1. zero terminal SNR

@pytest.mark.parametrize("name", ["pndm", "lms", "heun"])
def test_a_scheduler_that_would_drop_zero_terminal_snr_is_refused_naming_those_that_keep_it(zero_snr_folder, name):
    ref = ck.resolve(str(zero_snr_folder))
    with pytest.raises(ck.CheckpointError) as err:
        pipelines.load_pipeline(ref, "txt2img", scheduler=name)
    message = str(err.value)
    assert f"scheduler {name!r}" in message and "rescale_betas_zero_snr=True" in message
    assert repr(str(zero_snr_folder)) in message
    assert "ddim" in message and "euler" in message and "pndm" not in message.split("Use one of")[1]


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_schedulers_that_take_zero_terminal_snr_keep_it(zero_snr_folder, name):
    pipe = pipelines.load_pipeline(ck.resolve(str(zero_snr_folder)), "txt2img", scheduler=name)
    assert pipe.scheduler.config.rescale_betas_zero_snr is True
    assert float(pipe.scheduler.alphas_cumprod[-1]) < 1e-6


def test_the_experiment_loader_refuses_the_pairing_naming_the_key_before_any_run(zero_snr_folder, tmp_path):
    """`plan` and `run` load the experiment first: the refusal comes there, with every other problem."""
    from harness.experiment import ExperimentError, load_experiment

    path = tmp_path / "e.toml"
    path.write_text(f'prompt = "a red cat"\nscheduler = "lms"\nsteps = 2\n'
                    f'checkpoints = ["tiny", "{zero_snr_folder}"]\n'
                    f'[checkpoint."{zero_snr_folder}"]\nscheduler = "pndm"\n')
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    message = str(err.value)
    assert str(path) in message
    assert f"key 'checkpoint.\"{zero_snr_folder}\".scheduler': scheduler 'pndm' (PNDMScheduler) cannot honour" \
        in message and "rescale_betas_zero_snr=True" in message
    assert "scheduler 'lms'" not in message  # tiny's own schedule is the plain one

    path.write_text(f'prompt = "a red cat"\nscheduler = "heun"\nsteps = 2\ncheckpoints = ["{zero_snr_folder}"]\n')
    with pytest.raises(ExperimentError, match="key 'scheduler': scheduler 'heun'"):
        load_experiment(path)
    path.write_text(f'prompt = "a red cat"\nscheduler = "euler"\nsteps = 2\ncheckpoints = ["{zero_snr_folder}"]\n')
    assert load_experiment(path).scheduler == "euler"


def test_a_single_file_is_checked_against_the_scheduler_config_of_its_config_folder(zero_snr_folder, tmp_path):
    from harness.experiment import ExperimentError, load_experiment
    from harness.single_file import save_single_file

    weights = save_single_file(pipelines.load_pipeline(ck.resolve(str(zero_snr_folder)), "txt2img",
                                                       scheduler="ddim"), tmp_path / "z.safetensors")
    path = tmp_path / "e.toml"
    path.write_text(f'prompt = "a red cat"\nscheduler = "lms"\nsteps = 2\ncheckpoints = ["z.safetensors"]\n'
                    f'[checkpoint."z.safetensors"]\nconfig = "{zero_snr_folder}"\n')
    with pytest.raises(ExperimentError, match="key 'scheduler': scheduler 'lms' .* checkpoint 'z.safetensors'"):
        load_experiment(path)
    assert weights.is_file()


def test_a_plain_checkpoint_builds_every_registered_scheduler(tiny_pipe):
    for name in schedulers.SCHEDULERS:
        schedulers.make_scheduler(name, tiny_pipe.scheduler.config, checkpoint="tiny")


# ---------------------------------------------------------------- 2. truncated .safetensors

@pytest.fixture(scope="module")
def tiny_single_file(tiny_pipe, tmp_path_factory):
    from harness.single_file import save_single_file

    return save_single_file(tiny_pipe, tmp_path_factory.mktemp("single") / "tiny.safetensors")


def test_a_truncated_safetensors_is_refused_when_the_experiment_loads(tiny_single_file, tmp_path):
    from harness.experiment import load_experiment

    data = tiny_single_file.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[:len(data) - 1000])  # `head -c`: header whole, data not
    (tmp_path / "e.toml").write_text('prompt = "a red cat"\ncheckpoints = ["trunc.safetensors"]\nsteps = 2\n')
    with pytest.raises(ValueError) as err:
        load_experiment(tmp_path / "e.toml")
    assert f"is truncated ({len(data) - 1000} of {len(data)} bytes): the file is incomplete, download it again" \
        in str(err.value)
    assert "trunc.safetensors" in str(err.value)


def test_a_safetensors_with_bytes_after_its_tensors_is_refused(tiny_single_file, tmp_path):
    path = tmp_path / "long.safetensors"
    path.write_bytes(tiny_single_file.read_bytes() + b"\0" * 7)
    with pytest.raises(ck.CheckpointError, match="has 7 trailing bytes"):
        ck.locate(str(path))


def test_a_safetensors_cut_inside_its_header_says_truncated(tiny_single_file, tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(tiny_single_file.read_bytes()[:100])
    with pytest.raises(ck.CheckpointError, match="short.safetensors is truncated"):
        ck.locate(str(path))


def test_a_whole_safetensors_still_locates(tiny_single_file):
    assert ck.locate(str(tiny_single_file)).kind == "file"


# ---------------------------------------------------------------- 3. SD2 single files without a config

def sd2_file(path: Path, metadata: dict | None = None) -> Path:
    """A .safetensors with SD2's CompVis key layout (OpenCLIP text encoder), tiny tensors."""
    import torch
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 1, 1),
               "cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2)}, str(path), metadata=metadata)
    return path


def test_an_sd2_file_that_declares_nothing_is_noted_as_assumed_768_v(tmp_path, harness_cache):
    ref = ck.resolve(str(sd2_file(tmp_path / "ft.safetensors")))
    assert (ref.family, ref.native_size) == ("sd2", 768)
    (note,) = ref.notes
    assert "'stabilityai/stable-diffusion-2-1' (768 px, v-prediction)" in note
    assert "'stabilityai/stable-diffusion-2-1-base' (512 px, epsilon)" in note
    assert f'[checkpoint."{tmp_path / "ft.safetensors"}"] config = ' in note


def test_an_sd2_file_missing_its_reference_repo_names_both_sd2_releases(tmp_path, empty_hf_cache):
    loc = ck.locate(str(sd2_file(tmp_path / "ft.safetensors")))
    with pytest.raises(ck.CheckpointError) as err:
        ck.check_buildable("ft.safetensors", loc)
    message = str(err.value)
    assert "stabilityai/stable-diffusion-2-1' (768 px, v-prediction)" in message
    assert "stabilityai/stable-diffusion-2-1-base' (512 px, epsilon)" in message
    assert '[checkpoint."ft.safetensors"] config = "stabilityai/stable-diffusion-2-1-base"' in message


@pytest.mark.parametrize("metadata", [{"modelspec.prediction_type": "epsilon"},
                                      {"ss_v2": "True", "ss_v_parameterization": "False"}])
def test_an_sd2_file_declaring_epsilon_is_built_as_sd2_base(tmp_path, empty_hf_cache, metadata):
    path = sd2_file(tmp_path / "base.safetensors", metadata)
    ref = ck.resolve(str(path))
    assert (ref.native_size, ref.notes) == (512, ())
    with pytest.raises(ck.CheckpointError) as err:
        ck.check_buildable("base.safetensors", ck.locate(str(path)))
    assert "configs of 'stabilityai/stable-diffusion-2-1-base' (model_index.json" in str(err.value)


def test_an_sd2_file_given_the_base_repo_as_config_is_512_px_without_a_note(tmp_path, harness_cache):
    ref = ck.resolve(str(sd2_file(tmp_path / "ft.safetensors")), config="stabilityai/stable-diffusion-2-1-base")
    assert (ref.native_size, ref.notes) == (512, ())


# ---------------------------------------------------------------- 4. original .yaml configs

def test_an_original_yaml_config_is_refused_when_located(tiny_single_file, tmp_path):
    (tmp_path / "v2-inference-v.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    with pytest.raises(ck.CheckpointError) as err:
        ck.locate(str(tiny_single_file), config=str(tmp_path / "v2-inference-v.yaml"))
    message = str(err.value)
    assert "v2-inference-v.yaml" in message and "not honoured" in message and "model_index.json" in message
    assert repr(str(tiny_single_file)) in message


def test_load_pipeline_refuses_a_yaml_config_passed_directly(tiny_single_file, tmp_path, harness_cache):
    (tmp_path / "v1.yaml").write_text("model: {}\n")
    ref = ck.resolve(str(tiny_single_file))
    with pytest.raises(ck.CheckpointError, match="original LDM .yaml is not honoured"):
        pipelines.load_pipeline(ref, config=str(tmp_path / "v1.yaml"))


def test_plan_and_run_say_what_a_checkpoint_was_built_on_the_assumption_of(tmp_path, harness_cache):
    from harness.experiment import load_experiment
    from harness.plan import make_plan, plan_notes

    ref = ck.resolve(str(sd2_file(tmp_path / "ft.safetensors")))
    (tmp_path / "e.toml").write_text('prompt = "a cat"\nwidth = 768\nheight = 768\n')
    plan = make_plan(load_experiment(tmp_path / "e.toml"), resolve=lambda name, base_dir=None: ref)
    assert plan_notes(plan, list(plan.jobs)) == list(ref.notes)
