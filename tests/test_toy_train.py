"""The toy training script: resumable, the same batches with or without worker processes, provenance
in configs.json. Budgets here are a few steps: this checks the machinery, not the models' quality."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.toy import models, train, training
from harness.toy.train_vae import reconstruction_loss

TINY = training.Profile("test", vae=training.Budget(3, 2, 1e-3), decoder=training.Budget(2, 2, 1e-3),
                     unet=training.Budget(4, 4, 1e-3), clip=training.Budget(2, 4, 1e-3), vae_scenes=6,
                     decoder_scenes=4, unet_scenes=((128, 6), (256, 3)), clip_scenes=6,
                     vae_probe=4)


def _weights(path):
    return {k: v.float() for k, v in load_file(str(path)).items()}


def _same(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_workers_compute_the_same_batches_in_order():
    def make(step):
        rng = training.step_rng("unit", step)
        return {"x": torch.from_numpy(rng.standard_normal(3)), "step": torch.tensor(step)}

    inline = list(training.batches(make, 5, 17, workers=0))
    ahead = list(training.batches(make, 5, 17, workers=2))
    assert [int(b["step"]) for b in ahead] == list(range(5, 17))
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(inline, ahead))


def test_parallel_rendering_gives_the_same_pixels():
    scenes, serial = training.render_pool(70, 64, "unit", workers=0)
    _, parallel = training.render_pool(70, 64, "unit", workers=2)
    assert serial.shape == (70, 64, 64, 3) and np.array_equal(serial, parallel)


@pytest.mark.slow  # trains a stage twice (~30 s); run with -m slow
def test_a_stopped_stage_resumes_to_the_same_weights(tmp_path):
    torch.set_num_threads(1)  # bitwise equality needs the same kernels in both runs
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train.train("vae", whole, profile=TINY, device="cpu")
    train.train("vae", parts, minutes=0.0, profile=TINY, device="cpu")  # stops (and saves) after one step
    configs = json.loads((parts / models.CONFIGS_FILE).read_text())
    assert configs["trained"]["vae"]["steps"] == 1 and configs["trained"]["vae"]["of"] == 3
    # --stop-at reproduces a run a wall-time cap stopped (the learning-rate schedule is the same).
    train.train("vae", tmp_path / "stopped", profile=TINY, device="cpu", stop_at={"vae": 1})
    assert _same(_weights(parts / "vae.safetensors"), _weights(tmp_path / "stopped" / "vae.safetensors"))
    assert not _same(_weights(whole / "vae.safetensors"), _weights(parts / "vae.safetensors"))
    train.train("vae", parts, profile=TINY, device="cpu", workers=2)  # resumes at step 1, batches from workers
    assert _same(_weights(whole / "vae.safetensors"), _weights(parts / "vae.safetensors"))
    configs = json.loads((parts / models.CONFIGS_FILE).read_text())
    assert configs["trained"]["vae"] == {"profile": "test", "device": "cpu", "steps": 3, "of": 3, "batch": 2}


def test_every_stage_trains_and_the_result_loads(tmp_path):
    out = train.train("all", tmp_path, profile=TINY, device="cpu")
    configs = json.loads((out / models.CONFIGS_FILE).read_text())
    assert set(configs["trained"]) == set(train.STAGES)
    assert {k: v["steps"] for k, v in configs["trained"].items()} == {"vae": 3, "decoder": 2, "unet": 4, "clip": 2}
    assert set(configs["sha256"]) == set(models.PARTS)
    vae, unet, text = models.load_components(out)
    assert unet.config.cross_attention_dim == text.config.hidden_size


def test_bad_stage_or_profile_names_say_what_is_expected(tmp_path):
    with pytest.raises(ValueError, match="unknown stage 'vea'.*vae, decoder, unet, clip"):
        train.train("vae,vea", tmp_path)
    with pytest.raises(ValueError, match="profile='huge'.*cpu, gpu"):
        train.train("vae", tmp_path, profile="huge")
    with pytest.raises(ValueError, match="unknown stage 'unte'"):
        train.train("vae", tmp_path, stop_at={"unte": 5})


def test_the_committed_weights_are_replaced_only_by_the_full_committed_recipe(tmp_path, capsys):
    """Without --out a run writes into harness/data/toy: anything but the full gpu profile (the cpu default,
    --minutes, --stop-at, --set) would replace the committed weights with others, so it is refused first."""
    from harness.toy import models

    before = {p.name: p.stat().st_mtime_ns for p in models.DATA_DIR.iterdir()}
    for kwargs in ({}, {"profile": "gpu", "minutes": 0.1}, {"profile": "gpu", "stop_at": {"clip": 5}}):
        with pytest.raises(ValueError, match="without --out, training writes the committed weights"):
            train.train("clip", None, device="cpu", **kwargs)
    with pytest.raises(SystemExit) as exit_:
        train.main(["--what", "clip", "--minutes", "0.05", "--device", "cpu"], prog="harness toy train")
    assert exit_.value.code == 2 and "give --out DIR" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in models.DATA_DIR.iterdir()} == before


def test_a_part_that_needs_the_vae_says_so_before_training_anything(tmp_path):
    for stage in ("unet", "decoder"):
        with pytest.raises(ValueError, match=f"--what {stage}: .* has no vae.safetensors .*--what vae,{stage}"):
            train.train(stage, tmp_path / "fresh", profile=TINY, device="cpu")
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize("args, message", [
    (["--minutes", "0"], "--minutes 0: expected a positive number of minutes per stage"),
    (["--minutes", "-1"], "--minutes -1: expected a positive number"),
    (["--workers", "-1"], "--workers -1: expected 0"),
    (["--device", "nosuch"], "device='nosuch': expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    (["--stop-at", "vea=5"], "--stop-at vea=5: unknown stage 'vea'; expected one of vae, decoder, unet, clip"),
    (["--set", "latent_channels=0"], "--set latent_channels=0: expected latent_channels >= 1, got 0"),
    (["--what", "vae,decoder", "--stop-at", "unet=5"],
     ("--stop-at unet=5: this run does not train unet (--what vae,decoder); add unet to --what or leave --stop-at "
      "unet out")),
    (["--profile", "gpu", "--what", "unet", "--stop-at", "unet=4501"],
     "--stop-at unet=4501: expected a step from 1 to 4500, the unet budget of profile 'gpu'"),
    (["--what", "vae", "--stop-at", "vae=0"], "--stop-at vae=0: expected a step from 1 to 1500"),
    (["--what", "vae", "--set", "vae=20,2,1e-3", "--stop-at", "vae=21"],
     "--stop-at vae=21: expected a step from 1 to 20, the vae budget of profile 'cpu' with --set"),
])
def test_bad_command_line_values_are_one_line_errors_before_any_training(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--out", str(tmp_path / "out"), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written, the committed weights least of all


def test_profile_overrides_change_the_architecture_and_are_recorded(tmp_path):
    """--set latent_channels=8 gives an 8-channel VAE and a UNet that reads 8 channels; configs.json
    says which fields were set, and the loaded pipeline parts agree."""
    out = train.train("vae,unet", tmp_path, profile=TINY, device="cpu",
                      overrides={"latent_channels": "8", "vae_blocks": "8,8,16,16", "vae_edge": "1",
                                 "unet_blocks": "16,32,32", "vae_texture": "0.5"})
    configs = json.loads((out / models.CONFIGS_FILE).read_text())
    assert configs["vae"]["latent_channels"] == 8 and configs["vae"]["block_out_channels"] == [8, 8, 16, 16]
    assert configs["unet"]["in_channels"] == configs["unet"]["out_channels"] == 8
    assert configs["unet"]["block_out_channels"] == [16, 32, 32]
    assert configs["trained"]["vae"]["set"] == {"latent_channels": "8", "vae_blocks": "8,8,16,16",
                                                "vae_edge": "1", "vae_texture": "0.5", "unet_blocks": "16,32,32"}
    vae, unet, _ = models.load_components(out)
    x = torch.zeros(1, 3, 64, 64)
    z = vae.encode(x).latent_dist.mean
    assert z.shape == (1, 8, 8, 8) and unet.config.in_channels == z.shape[1]


def test_bad_overrides_name_the_field_and_the_expected_form():
    with pytest.raises(ValueError, match="unknown field 'latent'.*latent_channels"):
        TINY.with_overrides({"latent": "8"})
    with pytest.raises(ValueError, match="unet=3000,256: expected steps,batch,lr like 4,4,0.001"):
        TINY.with_overrides({"unet": "3000,256"})
    for field, text, expected in (("vae", "0,8,1e-4", "expected steps >= 1, got 0"),
                                  ("unet", "10,2,1e-4", "expected batch >= 4, got 2"),
                                  ("clip", "10,8,0", "expected a learning rate > 0, got 0"),
                                  ("latent_channels", "0", "expected latent_channels >= 1, got 0"),
                                  ("ema_decay", "1", "expected 0 <= ema_decay < 1, got 1"),
                                  ("vae_edge", "nan", "expected vae_edge >= 0, got nan"),
                                  ("vae_size", "100", "expected a multiple of 8, at least 64, got 100"),
                                  ("unet_blocks", "32,64", "expected 3 block widths (one per block), got 2"),
                                  ("unet_blocks", "30,64,64", "each a multiple of 8 (the norm groups)"),
                                  ("unet_scenes", "128:10,512:5", "expected scenes at 128 px and at 256 px"),
                                  ("unet_scenes", "128:10,256", "expected px:scenes pairs like 128:6,256:3")):
        with pytest.raises(ValueError) as err:
            TINY.with_overrides({field: text})
        assert str(err.value).startswith(f"--set {field}={text}: ") and expected in str(err.value), field
    changed = TINY.with_overrides({"unet": "30,8,2e-4", "ema_decay": "0.9"})
    assert changed.unet == training.Budget(30, 8, 2e-4) and changed.ema_decay == 0.9
    assert changed.stage_tag("unet") != TINY.stage_tag("unet") == "test"  # an overridden stage's state is kept apart
    assert TINY.with_overrides({"unet_scenes": "256:5,128:20"}).unet_scenes == ((128, 20), (256, 5))


def test_stages_after_the_vae_start_over_when_the_vae_they_resumed_from_changed(tmp_path, capsys):
    """A finished UNet (and decoder) state trained on one VAE's latents is not resumed after the VAE is
    retrained: it would write the old UNet again beside a VAE it does not match."""
    import shutil

    out = train.train("vae,decoder,unet", tmp_path / "a", profile=TINY, device="cpu")
    unet_before = _weights(out / "unet.safetensors")
    train.train("vae", tmp_path / "b", profile=TINY, device="cpu", stop_at={"vae": 1})  # another encoder
    shutil.copy(tmp_path / "b" / "vae.safetensors", out / "vae.safetensors")
    capsys.readouterr()
    train.train("decoder,unet", out, profile=TINY, device="cpu")
    log = capsys.readouterr().out
    for stage in ("decoder", "unet"):
        assert f"[{stage}] the resumable state train-{stage}-test.pt was trained on other inputs" in log
    assert "resuming at step" not in log
    assert not _same(unet_before, _weights(out / "unet.safetensors"))
    encoder = {k: v for k, v in _weights(tmp_path / "b" / "vae.safetensors").items() if k.startswith("encoder.")}
    after = _weights(out / "vae.safetensors")
    assert all(torch.equal(after[k], v) for k, v in encoder.items())  # the decoder kept the new encoder
    capsys.readouterr()
    train.train("unet", out, profile=TINY, device="cpu")  # same inputs now: resumed, nothing to redo
    assert "[unet] resuming at step 4" in capsys.readouterr().out


def test_stop_at_below_the_resumable_state_is_refused_and_changes_nothing(tmp_path):
    out = train.train("vae", tmp_path, profile=TINY, device="cpu")
    before = (out / "vae.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"--stop-at vae=1: the resumable state .*train-vae-test\.pt is at "
                                         r"step 3 already; delete it to train vae again from step 0"):
        train.train("vae", tmp_path, profile=TINY, device="cpu", stop_at={"vae": 1})
    assert (out / "vae.safetensors").read_bytes() == before


def test_reconstruction_loss_charges_for_lost_edges_and_grain():
    """The edge and texture terms are zero for a perfect reconstruction and grow when detail is blurred
    away, while the pixel terms alone barely see grain."""
    rng = np.random.default_rng(0)
    x = torch.zeros(2, 3, 32, 32)
    x[:, :, :, 16:] = 1.0                        # an edge
    x += 0.3 * torch.from_numpy(rng.uniform(-1, 1, (2, 1, 32, 32))).float()  # grain
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    plain = training.Profile("p", *(training.Budget(1, 1, 1e-3),) * 4)
    sharp = training.Profile("s", *(training.Budget(1, 1, 1e-3),) * 4, vae_edge=1.0, vae_texture=1.0)
    assert float(reconstruction_loss(x, x, sharp)) == pytest.approx(0.0, abs=1e-3)
    extra = float(reconstruction_loss(blurred, x, sharp)) - float(reconstruction_loss(blurred, x, plain))
    assert extra > 2 * float(reconstruction_loss(blurred, x, plain))


def test_the_stop_at_example_is_within_every_profiles_budget(capsys):
    import re

    with pytest.raises(SystemExit):
        train.main(["--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    stage, step = re.search(r"e\.g\. (\w+)=(\d+)", helptext[helptext.index("--stop-at STAGE=STEP"):]).groups()
    with pytest.raises(SystemExit):  # the malformed-value message shows the same example
        train.main(["--stop-at", "unet"])
    assert f"expected STAGE=STEP, e.g. {stage}={step}" in capsys.readouterr().err
    for name, profile in training.PROFILES.items():
        assert 1 <= int(step) <= profile.budget(stage).steps, name


def test_a_stages_resume_tag_depends_only_on_the_fields_it_uses():
    from dataclasses import fields

    used = {f for names in training.STAGE_FIELDS.values() for f in names}
    assert used == {f.name for f in fields(TINY)} - {"name", "overrides"}  # a new field must be given a stage
    other = TINY.with_overrides({"decoder": "5,2,1e-3", "clip_scenes": "8", "unet_blocks": "16,32,32"})
    assert other.stage_tag("vae") == "test"
    assert len({other.stage_tag(s) for s in ("decoder", "unet", "clip")} - {"test"}) == 3
    edge = TINY.with_overrides({"vae_edge": "1"})  # the vae and decoder losses read it; the unet does not
    assert edge.stage_tag("vae") != "test" and edge.stage_tag("decoder") != "test"
    assert edge.stage_tag("unet") == edge.stage_tag("clip") == "test"


def test_an_override_of_another_stages_field_resumes_the_stage(tmp_path, capsys):
    train.train("vae", tmp_path, profile=TINY, device="cpu")
    capsys.readouterr()
    train.train("vae", tmp_path, profile=TINY, device="cpu", overrides={"decoder": "5,2,1e-3", "clip_scenes": "8"})
    log = capsys.readouterr().out
    assert "[vae] resuming at step 3" in log and "[vae] step 1/" not in log


def test_the_vae_stage_run_again_keeps_the_decoder_fine_tune(tmp_path, capsys):
    """Stages run in the pipeline's order whatever --what says, and a finished vae stage leaves the
    decoder's fine-tune of its weights in place: vae.safetensors and configs.json keep agreeing."""
    out = train.train("vae", tmp_path, profile=TINY, device="cpu")
    plain = (out / "vae.safetensors").read_bytes()
    capsys.readouterr()
    train.train("decoder,vae", out, profile=TINY, device="cpu")
    log = capsys.readouterr().out
    assert "[train] stages run in the pipeline's order: vae, decoder" in log
    assert log.index("[vae]") < log.index("[decoder]")
    tuned = (out / "vae.safetensors").read_bytes()
    assert tuned != plain
    train.train("vae", out, profile=TINY, device="cpu")
    log = capsys.readouterr().out
    assert "[vae] already trained to step 3/3" in log and "with the decoder fine-tune on them: left as it is" in log
    assert (out / "vae.safetensors").read_bytes() == tuned
    made = json.loads((out / models.CONFIGS_FILE).read_text())["trained"]
    assert made["decoder"]["steps"] == 2 and made["vae"]["steps"] == 3


def test_a_vae_stage_that_replaces_the_vae_updates_what_configs_json_records(tmp_path, capsys):
    """A new VAE over a decoder-tuned one and a UNet trained on the old latents: the decoder record goes
    (its fine-tune is overwritten), the unet record is marked stale, and both are said."""
    out = train.train("vae,decoder,unet", tmp_path, profile=TINY, device="cpu")
    capsys.readouterr()
    train.train("vae", out, profile=TINY, device="cpu", overrides={"vae_edge": "1"})  # its own state: a new VAE
    log = capsys.readouterr().out
    assert "configs.json no longer records decoder as trained (train it again: --what decoder)" in log
    assert "configs.json marks unet stale until --what unet trains it again" in log
    made = json.loads((out / models.CONFIGS_FILE).read_text())["trained"]
    assert "decoder" not in made and made["vae"]["set"] == {"vae_edge": "1"}
    assert made["unet"]["stale"].startswith("trained on the latents of a VAE since replaced")
