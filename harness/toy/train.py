"""Train the `toy` models on the procedural world and write them to `harness/data/toy/`.

    python -m harness.toy.train [--what vae|decoder|unet|clip|all] [--profile cpu|gpu] [--out DIR]
                                [--device auto] [--workers N] [--minutes M] [--stop-at STAGE=STEP]

Stages (each seeded; they run in this order whatever the order in `--what`):

1. `vae`: AutoencoderKL (x8 downsampling, 4 latent channels) on whole world
   images (64 px in the `cpu` profile, 128 px in `gpu`); MSE + L1 + a small KL term, starting from a
   near-deterministic posterior. The `gpu` profile's VAE is wider and its loss also charges for lost
   edges and texture (`reconstruction_loss`), which keeps the artist styles. Being fully
   convolutional with one norm group, it then works at any size. Its `scaling_factor` is set to 1 / std of the
   latents of 256 px world images.
2. `decoder`: the VAE decoder fine-tuned on 128 px images with the encoder
   frozen (sharper edges, truer colours at the demo size; same latent space).
3. `unet`: UNet2DConditionModel plus the CLIP text encoder, trained jointly on
   the latents of world images at 128 px (16x16, three steps in four) and at
   256 px (32x32, the native size, every fourth step) with the SD v1 noise
   schedule and v-prediction (as SD v2; `models.SCHEDULER_CONFIG`), min-SNR loss
   weights, 10 % empty captions (for classifier-free guidance) and an EMA of the
   UNet weights, which is what is saved.
4. `clip`: an open_clip CLIP (ViT image tower at 128 px, text tower) trained
   contrastively on world images with attribute-swapped captions as hard negatives.

How much each stage trains is a named profile (`PROFILES`): `cpu` fits a
2-core machine in about two hours, `gpu` trains longer on larger batches and
takes minutes on one H100; `configs.json` records which profile, device and
step count made each part.

Every step's data and noise come from generators seeded by (seed, stage, step),
so a stopped run resumes from its last checkpoint (`train-<stage>.pt` in
`$HARNESS_CACHE/toy-train/`, written every 100 steps and when a stage stops)
with the same data it would have seen, and `--workers` processes that compute
batches ahead give the same batches. `--minutes` caps a stage's wall time: a
capped stage saves what it has and says so; configs.json records the step, and
`--stop-at STAGE=STEP` replays that stop (same learning-rate schedule); STAGE must be one
this run trains and STEP within its budget. A stage's resumable state is named by the
overrides (`--set`) of the fields that stage uses (`training.STAGE_FIELDS`), so overriding
another stage's field keeps it. A stage with nothing left to train writes the same weights
again, except `vae`, which leaves a `vae.safetensors` holding its weights alone (the
`decoder` stage's fine-tune on them included); a `vae` stage that does replace the file
drops the decoder's record from configs.json and marks a unet trained on another encoder
stale. A re-run
reproduces the committed weights up to floating-point nondeterminism of the
kernels (on the same machine type far below fp16 rounding of the saved files;
other CPUs or a GPU give slightly different weights, with the same behaviour).
The committed weights' commands are in the README.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from harness.toy import models
from harness.toy.train_clip import train_clip
from harness.toy.train_unet import train_unet
from harness.toy.train_vae import train_decoder, train_vae
from harness.toy.training import PROFILES, Profile, Setup, pick_device

STAGES = {"vae": train_vae, "decoder": train_decoder, "unet": train_unet, "clip": train_clip}
COMMITTED_PROFILE = "gpu"  # the profile the committed weights were trained with, in full
NEEDS_VAE = ("vae.safetensors", models.CONFIGS_FILE)  # what the decoder and unet stages read
STOP_AT_EXAMPLE = "unet=3000"  # within every profile's unet budget


def train(what: str = "all", out: Path | str | None = None, minutes: float | None = None,
          device: str = "auto", profile: str | Profile = "cpu", workers: int | None = None,
          stop_at: dict[str, int] | None = None, overrides: dict[str, str] | None = None) -> Path:
    """Train `what` (one of STAGES, a comma list of them, or all) into `out` (default: the package's
    data folder) with the named `profile`; `workers` (default: none on CPU, up to 8 on a GPU)
    compute batches ahead; `stop_at` ({stage: step}) ends stages early, learning-rate schedule unchanged."""
    asked = list(STAGES) if what == "all" else [w.strip() for w in what.split(",")]
    unknown = [s for s in asked if s not in STAGES]
    if unknown:
        raise ValueError(f"train(what={what!r}): unknown stage {unknown[0]!r}; expected one of "
                         f"{', '.join(STAGES)}, a comma list of them, or all")
    stages = [s for s in STAGES if s in asked]  # the pipeline's order: a stage reads what the earlier ones wrote
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"train(profile={profile!r}): expected one of {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    if overrides:
        profile = profile.with_overrides(overrides)
    device = pick_device(device)  # before the output folder is made
    committed = out is None or Path(out).resolve() == models.DATA_DIR.resolve()
    if committed and (profile.name != COMMITTED_PROFILE or minutes is not None or stop_at or overrides):
        raise ValueError(f"without --out, training writes the committed weights in {models.DATA_DIR} (so does "
                         f"--out naming that folder), which the "
                         f"'{COMMITTED_PROFILE}' profile made in full; this run (profile {profile.name!r}"
                         + (", capped by --minutes" if minutes is not None else "")
                         + (", stopped by --stop-at" if stop_at else "") + (", changed by --set" if overrides else "")
                         + ") would replace them with other weights: give --out DIR")
    out = Path(out) if out is not None else models.DATA_DIR
    for stage, step in (stop_at or {}).items():
        if stage not in STAGES:
            raise ValueError(f"--stop-at {stage}={step}: unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        if stage not in stages:
            raise ValueError(f"--stop-at {stage}={step}: this run does not train {stage} (--what {what}); "
                             f"add {stage} to --what or leave --stop-at {stage} out")
        steps = profile.budget(stage).steps
        if not 1 <= step <= steps:
            raise ValueError(f"--stop-at {stage}={step}: expected a step from 1 to {steps}, the {stage} budget of "
                             f"profile {profile.name!r}" + (" with --set" if profile.overrides else ""))
    for i, stage in enumerate(stages):  # a later part is trained on the VAE's latents: it must be there
        missing = [f for f in NEEDS_VAE if stage in ("decoder", "unet") and "vae" not in stages[:i]
                   and not (out / f).is_file()]
        if missing:
            raise ValueError(f"--what {stage}: {out} has no {missing[0]} (the vae stage makes it); train the VAE "
                             f"first (--what vae,{stage}) or give --out a folder that holds a trained VAE")
    out.mkdir(parents=True, exist_ok=True)
    if workers is None:
        import os

        workers = 0 if device == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 2))
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    setup = Setup(out, device, profile, minutes, workers, tuple(sorted((stop_at or {}).items())))
    if stages != list(dict.fromkeys(asked)):
        print(f"[train] stages run in the pipeline's order: {', '.join(stages)}", flush=True)
    for stage in stages:
        t0 = time.time()
        STAGES[stage](setup)
        print(f"[{stage}] done in {(time.time() - t0) / 60:.1f} min on {device} (profile {profile.name})",
              flush=True)
    return out


def main(argv: list[str] | None = None, prog: str = "python -m harness.toy.train") -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers run in forked batch workers
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", default="all", help=f"{', '.join(STAGES)}, a comma list of them, or all")
    parser.add_argument("--profile", default="cpu", choices=tuple(PROFILES), help="how much to train")
    parser.add_argument("--out", default=None, help=f"output folder (default {models.DATA_DIR})")
    parser.add_argument("--minutes", type=float, default=None, help="cap each stage's wall time")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes computing batches ahead (default: 0 on CPU, up to 8 with a GPU)")
    parser.add_argument("--stop-at", action="append", default=[], metavar="STAGE=STEP",
                        help=f"end STAGE (one of --what) at STEP, 1 to its budget, e.g. {STOP_AT_EXAMPLE} (reproduces "
                             "a run stopped by --minutes; configs.json has the step)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a profile field, e.g. latent_channels=8 or unet=3000,256,7e-4")
    args = parser.parse_args(argv)
    if args.minutes is not None and not args.minutes > 0:
        parser.error(f"--minutes {args.minutes:g}: expected a positive number of minutes per stage "
                     "(leave it out for no cap)")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers {args.workers}: expected 0 (batches in this process) or more")
    try:
        overrides = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. latent_channels=8")
            overrides[key.strip()] = value.strip()
        stop_at = {}
        for item in args.stop_at:
            stage, _, step = item.partition("=")
            if not step.isdigit():
                raise ValueError(f"--stop-at {item!r}: expected STAGE=STEP, e.g. {STOP_AT_EXAMPLE}")
            stop_at[stage] = int(step)
        if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out}: is a file; expected a folder (made if missing)")
        train(args.what, args.out, args.minutes, args.device, args.profile, args.workers, stop_at, overrides)
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
