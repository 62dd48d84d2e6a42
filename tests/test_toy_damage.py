"""The toy model's training and weights under interruption and damage: a latents cache or a stage cut off
mid-write is not taken as done, a damaged weight file or training state is named, and the committed
folder is refused to any other recipe however it is spelt."""

import hashlib
import json
import shutil

import pytest
import torch

from harness.toy import models, train, training
from harness.toy.train_unet import unet_dataset

TINY = training.Profile("test", vae=training.Budget(3, 2, 1e-3), decoder=training.Budget(2, 2, 1e-3),
                        unet=training.Budget(4, 4, 1e-3), clip=training.Budget(2, 4, 1e-3), vae_scenes=6,
                        decoder_scenes=4, unet_scenes=((128, 6), (256, 3)), clip_scenes=6,
                        vae_probe=4)


class Killed(BaseException):
    """Stands for the process being killed (SIGKILL, power loss) at that moment."""


def test_an_interrupted_latents_cache_write_is_not_read_back_as_done(tmp_path, monkeypatch):
    out = tmp_path / "out"
    torch.manual_seed(0)
    models.save_part(models.build_vae(), "vae", out)
    models.write_configs(out, vae=models.VAE_CONFIG)
    setup = training.Setup(out, "cpu", TINY)

    real_save = torch.save

    def killed_mid_write(obj, f, *args, **kwargs):  # torch.save writes the target path in place
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(200)
        raise Killed

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(Killed):
        unet_dataset(setup, 128, 6)
    monkeypatch.setattr(torch, "save", real_save)
    labels, latents = unet_dataset(setup, 128, 6)  # the next run: must recompute, not fail on the stub
    assert len(labels) == 6 and latents.shape[0] == 6
    cache = next(training.work_dir(out).glob("unet-latents-128-6-*.pt"))
    cache.write_bytes(b"PK\x03\x04 damaged on disk")  # a cache damaged later is made again, not fatal
    again_labels, again = unet_dataset(setup, 128, 6)
    assert again_labels == labels and torch.equal(again, latents)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_vae_stage_killed_before_configs_json_is_not_left_as_done(tmp_path, monkeypatch, capsys):
    out = train.train("vae", tmp_path, profile=TINY, device="cpu")
    real_write = models.write_configs

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(models, "write_configs", killed)
    with pytest.raises(Killed):  # a new VAE (its own state): vae.safetensors written, then killed
        train.train("vae", out, profile=TINY, device="cpu", overrides={"vae_edge": "1"})
    monkeypatch.setattr(models, "write_configs", real_write)
    capsys.readouterr()
    train.train("vae", out, profile=TINY, device="cpu", overrides={"vae_edge": "1"})  # the same command again
    configs = json.loads((out / models.CONFIGS_FILE).read_text())
    assert "left as it is" not in capsys.readouterr().out
    assert configs["sha256"]["vae"] == _sha(out / "vae.safetensors")  # configs.json describes the file
    assert configs["trained"]["vae"].get("set") == {"vae_edge": "1"}


def test_a_damaged_weight_file_is_named(tmp_path):
    for f in models.DATA_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    damaged = tmp_path / "unet.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:1000])  # cut short, as a partial copy or download leaves it
    with pytest.raises(models.ToyDataError) as err:
        models.load_components(tmp_path)  # what `harness toy acceptance --weights DIR` and `toy` assembly use
    assert "unet.safetensors" in str(err.value) and "configs.json records" in str(err.value)
    (tmp_path / models.CONFIGS_FILE).write_text(json.dumps(  # no digest recorded: the loader names it
        {k: v for k, v in json.loads((tmp_path / models.CONFIGS_FILE).read_text()).items() if k != "sha256"}))
    with pytest.raises(models.ToyDataError, match=r"unet\.safetensors: damaged"):
        models.load_components(tmp_path)


def test_a_damaged_resumable_state_is_named(tmp_path):
    out = tmp_path / "out"
    state = training.Checkpoint(training.Setup(out, "cpu", TINY), "vae").path
    state.write_bytes(b"PK\x03\x04 cut short")  # a cached state damaged on disk
    with pytest.raises(ValueError, match="delete it to train this stage from its start") as err:
        train.train("vae", out, profile=TINY, device="cpu")
    assert str(state) in str(err.value)


def test_out_naming_the_committed_folder_is_refused_like_no_out(monkeypatch, tmp_path):
    trained = []
    monkeypatch.setitem(train.STAGES, "clip", lambda setup: trained.append(setup.out))  # never train for real
    monkeypatch.chdir(models.DATA_DIR.parent)
    for out in (models.DATA_DIR, "toy", "../data/toy"):  # the committed folder, spelt three ways
        with pytest.raises(ValueError, match="give --out DIR"):
            train.train("clip", out, device="cpu", profile="cpu", minutes=0.1)
    assert trained == []
