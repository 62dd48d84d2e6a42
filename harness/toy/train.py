"""Train the `toy` models on the procedural world and write them to `harness/data/toy/`.

    python -m harness.toy.train [--what vae|decoder|unet|clip|all] [--profile cpu|gpu] [--out DIR]
                                [--device auto] [--workers N] [--minutes M] [--stop-at STAGE=STEP]

Stages (each seeded; `all` runs them in this order):

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
`--stop-at STAGE=STEP` replays that stop (same learning-rate schedule). A re-run
reproduces the committed weights up to floating-point nondeterminism of the
kernels (on the same machine type far below fp16 rounding of the saved files;
other CPUs or a GPU give slightly different weights, with the same behaviour).
The committed weights' commands are in the README.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.toy import models, world

SEED = 20240229


@dataclass(frozen=True)
class Budget:
    steps: int
    batch: int
    lr: float


@dataclass(frozen=True)
class Profile:
    """How much each stage trains: step budgets and how many world scenes each stage draws from."""
    name: str
    vae: Budget
    decoder: Budget
    unet: Budget
    clip: Budget
    vae_size: int = 64  # px of the VAE stage's images (the decoder stage always uses 128)
    vae_scenes: int = 2000
    decoder_scenes: int = 1000
    unet_scenes: tuple[tuple[int, int], ...] = ((128, 2000), (256, 500))  # (px, scenes)
    clip_scenes: int = 2500
    ema_decay: float = 0.995
    vae_blocks: tuple[int, ...] = (8, 16, 32, 32)  # the VAE's block widths (the rest is models.VAE_CONFIG)
    latent_channels: int = 4
    vae_edge: float = 0.0     # weight of an L1 loss on image gradients (keeps outlines and stripes sharp)
    vae_texture: float = 0.0  # weight of an L1 loss on local high-frequency energy (keeps grain)
    unet_blocks: tuple[int, ...] = tuple(models.UNET_CONFIG["block_out_channels"])  # the UNet's block widths
    overrides: tuple[tuple[str, str], ...] = ()  # fields set by `with_overrides` (recorded in configs.json)

    def budget(self, stage: str) -> Budget:
        return getattr(self, stage)

    def vae_config(self) -> dict:
        return {**models.VAE_CONFIG, "block_out_channels": list(self.vae_blocks),
                "latent_channels": self.latent_channels}

    def with_overrides(self, items: dict[str, str]) -> "Profile":
        """This profile with fields set from strings (`--set FIELD=VALUE`): numbers, comma lists for
        tuples, `steps,batch,lr` for a stage's budget."""
        from dataclasses import fields, replace

        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "overrides")}
        values = {}
        for key, text in items.items():
            if key not in known:
                raise ValueError(f"--set {key}={text}: unknown field {key!r}; expected one of {', '.join(known)}")
            current = known[key]
            try:
                if isinstance(current, Budget):
                    steps, batch, lr = text.split(",")
                    values[key] = Budget(int(steps), int(batch), float(lr))
                elif isinstance(current, tuple):
                    values[key] = tuple(int(x) for x in text.split(","))
                else:
                    values[key] = type(current)(text)
            except ValueError:
                raise ValueError(f"--set {key}={text}: expected {type(current).__name__} like {current!r} "
                                 f"(a budget is steps,batch,lr; a tuple is a comma list)") from None
        return replace(self, **values, overrides=tuple(sorted({**dict(self.overrides), **items}.items())))

    @property
    def tag(self) -> str:
        """The profile's name, plus a digest of its overrides if any (names resumable state)."""
        if not self.overrides:
            return self.name
        import hashlib

        return f"{self.name}-{hashlib.sha256(repr(self.overrides).encode()).hexdigest()[:8]}"


PROFILES = {
    # About two hours on a 2-core CPU (vae 10 min, decoder 22, unet 60, clip 25).
    "cpu": Profile("cpu", vae=Budget(1500, 16, 4e-4), decoder=Budget(1500, 8, 3e-4),
                   unet=Budget(4000, 32, 5e-4), clip=Budget(3000, 32, 5e-4)),
    # Minutes on one H100 (with --workers computing batches ahead): larger batches, more steps and scenes.
    # A wider VAE with losses that keep the styles' fine detail (outlines, stripes, grain).
    "gpu": Profile("gpu", vae=Budget(2500, 32, 4e-4), decoder=Budget(1000, 32, 2e-4),
                   unet=Budget(4500, 256, 7e-4), clip=Budget(7000, 128, 5e-4),
                   vae_size=128, vae_scenes=4000, decoder_scenes=3000,
                   unet_scenes=((128, 12000), (256, 3000)), clip_scenes=12000, ema_decay=0.998,
                   vae_blocks=(16, 32, 64, 64), vae_edge=1.0, vae_texture=1.0, unet_blocks=(64, 64, 64)),
}
CFG_DROP = 0.1
MIN_SNR_GAMMA = 5.0
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Setup:
    """One training invocation: where to write, on what, how much (`profile`), a wall-time cap per
    stage, steps at which stages stop early (`stop_at`, which reproduces a run a wall-time cap
    stopped: configs.json records the step) and how many worker processes compute batches ahead."""
    out: Path
    device: str = "cpu"
    profile: Profile = PROFILES["cpu"]
    minutes: float | None = None
    workers: int = 0
    stop_at: tuple[tuple[str, int], ...] = ()


def pick_device(name: str = "auto") -> str:
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def step_rng(stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([SEED, sum(map(ord, stage)), step])


def to_tensor(images: list[np.ndarray], device: str = "cpu") -> torch.Tensor:
    """uint8 HWC images -> float NCHW in [-1, 1]."""
    arr = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(device)


def _fork_pool(workers: int):
    import multiprocessing

    return multiprocessing.get_context("fork").Pool(workers)


def render_all(scenes: list[world.Scene], size: int, workers: int = 0) -> np.ndarray:
    """The scenes rendered at `size` px (uint8 NHWC), by `workers` processes when > 0 (same pixels)."""
    if workers <= 0 or len(scenes) < 64:
        return np.stack([world.render(s, size) for s in scenes])
    with _fork_pool(workers) as pool:
        return np.stack(pool.starmap(world.render, [(s, size) for s in scenes], chunksize=32))


def render_pool(n: int, size: int, seed_tag: str, workers: int = 0) -> tuple[list[world.Scene], np.ndarray]:
    rng = np.random.default_rng([SEED, sum(map(ord, seed_tag))])
    scenes = [world.sample_scene(rng) for _ in range(n)]
    return scenes, render_all(scenes, size, workers)


def world_token_ids(encode) -> list[int]:
    """Every token id that world captions (and the empty prompt) can produce; `encode(texts)` gives id lists."""
    rng = np.random.default_rng(0)
    texts = [""]
    words = [*world.SHAPES, *world.BACKGROUNDS, *world.SIZES, *world.POSITION_PHRASES.values(),
             *world.ARTISTS, *world.MEDIUMS, "a", "an", "of", "on", "with", "against", "background", ",", "by",
             "grey", "in", "the", "at"]
    texts += words
    texts += [world.caption(world.sample_labels(rng), world.sample_phrasing(rng)) for _ in range(3000)]
    ids: set[int] = set()
    for row in encode(texts):
        ids.update(int(i) for i in row)
    return sorted(ids)


def work_dir(out: Path) -> Path:
    """Where resumable state and cached latents go: `$HARNESS_CACHE/toy-train/<hash of out>`, not the data folder."""
    import hashlib

    from harness.checkpoints import cache_dir

    tag = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:8]
    path = cache_dir() / "toy-train" / tag
    path.mkdir(parents=True, exist_ok=True)
    return path


class Checkpoint:
    """Resumable training state in `<work dir>/train-<stage>-<profile>.pt`."""

    def __init__(self, setup: Setup, stage: str) -> None:
        suffix = "" if setup.profile.tag == "cpu" else f"-{setup.profile.tag}"
        self.path = work_dir(setup.out) / f"train-{stage}{suffix}.pt"

    def load(self) -> dict | None:
        return torch.load(self.path, map_location="cpu", weights_only=False) if self.path.is_file() else None

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


def lr_at(step: int, budget: Budget, warmup: int = 50) -> float:
    if step < warmup:
        return budget.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, budget.steps - warmup)
    return budget.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class _Steps(torch.utils.data.Dataset):
    def __init__(self, make, start: int, stop: int) -> None:
        self.make, self.start, self.stop = make, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        return self.make(self.start + i)


def batches(make, start: int, stop: int, workers: int = 0):
    """`make(step)` for step in [start, stop), in order; with `workers` > 0 computed ahead by forked
    processes. `make` is a pure function of the step (its randomness comes from `step_rng`), so the
    batches are the same either way; it must stay on the CPU."""
    if workers <= 0:
        return (make(step) for step in range(start, stop))
    loader = torch.utils.data.DataLoader(_Steps(make, start, stop), batch_size=None, num_workers=workers,
                                         prefetch_factor=4, multiprocessing_context="fork")
    return iter(loader)


def _loop(stage: str, setup: Setup, modules: dict, opt, make_batch, loss_fn, extra_state=None,
          clip_norm: float | None = None, after_step=None) -> int:
    """From the checkpointed step to the stage's budget: `loss = loss_fn(make_batch(step))`, backward,
    gradient norm clipped to `clip_norm` if given, optimizer step, `after_step()`; return the last step done."""
    budget = setup.profile.budget(stage)
    ckpt = Checkpoint(setup, stage)
    start = 0
    state = ckpt.load()
    if state is not None:
        for name, module in modules.items():
            module.load_state_dict(state[name])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        if extra_state is not None:
            extra_state.load_state_dict(state["extra"])
        print(f"[{stage}] resuming at step {start}", flush=True)
    t0 = time.time()
    step = start
    stop_step = min(budget.steps, dict(setup.stop_at).get(stage, budget.steps))
    for batch in batches(make_batch, start, stop_step, setup.workers):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, budget) * group.get("lr_scale", 1.0)
        loss_t = loss_fn({k: v.to(setup.device) for k, v in batch.items()})
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for m in modules.values() for p in m.parameters()], clip_norm)
        opt.step()
        if after_step is not None:
            after_step()
        step += 1
        if step % 25 == 0 or step == budget.steps:
            rate = (time.time() - t0) / (step - start)
            print(f"[{stage}] step {step}/{budget.steps} loss {float(loss_t.detach()):.4f} {rate:.3f}s/step",
                  flush=True)
        stop = setup.minutes is not None and time.time() - t0 > setup.minutes * 60
        if step % 100 == 0 or step == stop_step or stop:
            state = {name: m.state_dict() for name, m in modules.items()}
            state.update(opt=opt.state_dict(), step=step)
            if extra_state is not None:
                state["extra"] = extra_state.state_dict()
            ckpt.save(state)
        if stop:
            print(f"[{stage}] stopped by --minutes={setup.minutes} at step {step}/{budget.steps}; the saved "
                  f"weights are a partial run (re-run to resume)", flush=True)
            break
    return step


def _trained(setup: Setup, stage: str, step: int) -> dict:
    """What `configs.json` records about how a part was made."""
    budget = setup.profile.budget(stage)
    made = {"profile": setup.profile.name, "device": setup.device.split(":")[0], "steps": step,
            "of": budget.steps, "batch": budget.batch}
    if setup.profile.overrides:
        made["set"] = dict(setup.profile.overrides)
    return {stage: made}


# ---------------------------------------------------------------- VAE

def _local_energy(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of the image minus its 5x5 box blur, per 4x4 cell: where the fine texture is."""
    high = x - F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return F.avg_pool2d(high.pow(2).mean(1, keepdim=True), 4).add(1e-6).sqrt()


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, profile: Profile) -> torch.Tensor:
    """MSE + L1 on pixels; with the profile's weights, L1 on horizontal and vertical differences (edges
    and stripes as sharp as the original) and on local high-frequency energy (a decoder that averages
    grain away pays for it even where it cannot place each grain cell)."""
    loss = F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x)
    if profile.vae_edge:
        loss = loss + profile.vae_edge * (F.l1_loss(rec.diff(dim=-1), x.diff(dim=-1))
                                          + F.l1_loss(rec.diff(dim=-2), x.diff(dim=-2)))
    if profile.vae_texture:
        loss = loss + profile.vae_texture * F.l1_loss(_local_energy(rec), _local_energy(x))
    return loss


def train_vae(setup: Setup) -> None:
    profile, device = setup.profile, setup.device
    budget = profile.vae
    torch.manual_seed(SEED)
    config = profile.vae_config()
    vae = models.build_vae(config).to(device)
    with torch.no_grad():  # start with a near-deterministic posterior (std ~0.02): reconstructions learn at once
        vae.quant_conv.bias[profile.latent_channels:] = -8.0
    # Whole images, not crops: with one norm group, GroupNorm statistics are those of a whole
    # image, and the fully convolutional VAE then works at any size (64 px trains ~4x faster than 128).
    size = profile.vae_size
    _, pool = render_pool(profile.vae_scenes, size, f"vae{size}", setup.workers)
    latent_shape = (budget.batch, profile.latent_channels, size // 8, size // 8)
    opt = torch.optim.Adam(vae.parameters(), lr=budget.lr)

    def make_batch(step: int) -> dict:
        rng = step_rng("vae", step)
        x = to_tensor([pool[i] for i in rng.integers(len(pool), size=budget.batch)])
        gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
        return {"x": x, "noise": torch.randn(latent_shape, generator=gen)}

    def loss_fn(b: dict) -> torch.Tensor:
        posterior = vae.encode(b["x"]).latent_dist
        rec = vae.decode(posterior.mean + posterior.std * b["noise"]).sample
        kl = 0.5 * (posterior.mean ** 2 + posterior.var - 1.0 - posterior.logvar).mean()
        return reconstruction_loss(rec, b["x"], profile) + 1e-4 * kl

    step = _loop("vae", setup, {"vae": vae}, opt, make_batch, loss_fn)
    vae.eval()
    _, probe = render_pool(64, 256, "vae-scale")
    with torch.no_grad():
        latents = torch.cat([vae.encode(to_tensor(list(probe[i:i + 16]), device)).latent_dist.mean
                             for i in range(0, len(probe), 16)])
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    models.save_part(vae, "vae", setup.out)
    models.write_configs(setup.out, vae={**config, "scaling_factor": scale},
                         trained=_trained(setup, "vae", step))
    print(f"[vae] saved; scaling_factor {scale:.4f}", flush=True)


def train_decoder(setup: Setup) -> None:
    """Fine-tune the VAE decoder on 128 px images with the encoder frozen: sharper edges and truer
    colours at the demo size, while the latent space (the UNet's training data) stays exactly as it was."""
    profile, out = setup.profile, setup.out
    configs = json.loads((out / models.CONFIGS_FILE).read_text())
    torch.manual_seed(SEED + 3)
    vae = models.build_vae(configs["vae"])
    models.load_part(vae, "vae", out)
    vae.to(setup.device)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    _, pool = render_pool(profile.decoder_scenes, 128, "decoder128", setup.workers)
    opt = torch.optim.Adam([*vae.post_quant_conv.parameters(), *vae.decoder.parameters()], lr=profile.decoder.lr)

    def make_batch(step: int) -> dict:
        rng = step_rng("decoder", step)
        return {"x": to_tensor([pool[i] for i in rng.integers(len(pool), size=profile.decoder.batch)])}

    def loss_fn(b: dict) -> torch.Tensor:
        with torch.no_grad():
            z = vae.encode(b["x"]).latent_dist.mean
        return reconstruction_loss(vae.decode(z).sample, b["x"], profile)

    step = _loop("decoder", setup, {"vae": vae}, opt, make_batch, loss_fn)
    models.save_part(vae, "vae", out)
    models.write_configs(out, vae=configs["vae"], trained=_trained(setup, "decoder", step))
    print("[decoder] saved (encoder unchanged)", flush=True)


# ---------------------------------------------------------------- UNet + text encoder

def _encode_latents(vae, images: np.ndarray, device: str) -> torch.Tensor:
    chunks = []
    with torch.no_grad():
        for i in range(0, len(images), 32):
            chunks.append(vae.encode(to_tensor(list(images[i:i + 32]), device)).latent_dist.mean.cpu())
    return torch.cat(chunks) * vae.config.scaling_factor


def encoder_digest(out: Path) -> str:
    """A digest of what the latents depend on: the VAE encoder's weights and the scaling factor
    (the `decoder` stage leaves it unchanged)."""
    import hashlib

    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for key, value in sorted(load_file(str(out / "vae.safetensors")).items()):
        if key.startswith(("encoder.", "quant_conv.")):
            digest.update(key.encode() + value.numpy().tobytes())
    scale = json.loads((out / models.CONFIGS_FILE).read_text())["vae"]["scaling_factor"]
    digest.update(repr(scale).encode())
    return digest.hexdigest()[:10]


def unet_dataset(setup: Setup, size: int, count: int):
    """(labels, latents) of `count` world scenes at `size` px, cached in the work dir per VAE encoder."""
    out = setup.out
    cache = work_dir(out) / f"unet-latents-{size}-{count}-{encoder_digest(out)}.pt"
    if cache.is_file():
        data = torch.load(cache, map_location="cpu", weights_only=False)
        return data["labels"], data["latents"]
    vae = models.build_vae(json.loads((out / models.CONFIGS_FILE).read_text())["vae"])
    models.load_part(vae, "vae", out)
    vae.to(setup.device).eval()
    rng = np.random.default_rng([SEED, size])
    labels, latents = [], []
    t0 = time.time()
    for start in range(0, count, 1000):
        scenes = [world.sample_scene(rng) for _ in range(min(1000, count - start))]
        latents.append(_encode_latents(vae, render_all(scenes, size, setup.workers), setup.device))
        labels += [s.labels for s in scenes]
    print(f"[unet] {count} latents at {size} px ({time.time() - t0:.0f}s)", flush=True)
    latents_t = torch.cat(latents)
    torch.save({"labels": labels, "latents": latents_t}, cache)
    return labels, latents_t


def train_unet(setup: Setup) -> None:
    from diffusers import DDPMScheduler

    profile, device = setup.profile, setup.device
    budget = profile.unet
    data = {size: unet_dataset(setup, size, count) for size, count in profile.unet_scenes}
    torch.manual_seed(SEED + 1)
    channels = json.loads((setup.out / models.CONFIGS_FILE).read_text())["vae"]["latent_channels"]
    unet_config = {**models.UNET_CONFIG, "in_channels": channels, "out_channels": channels,
                   "block_out_channels": list(profile.unet_blocks)}
    unet = models.build_unet(unet_config).to(device)
    text = models.build_text_encoder().to(device)
    tok = models.tokenizer()
    keep = torch.tensor(world_token_ids(lambda texts: tok(texts)["input_ids"]))
    with torch.no_grad():  # unused token rows stay exactly zero, so the saved table is sparse
        table = text.get_input_embeddings().weight
        mask = torch.zeros(table.shape[0], dtype=torch.bool)
        mask[keep] = True
        table[~mask.to(table.device)] = 0.0
    ema = torch.optim.swa_utils.AveragedModel(
        unet, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(profile.ema_decay))
    sched = DDPMScheduler.from_config({k: v for k, v in models.SCHEDULER_CONFIG.items() if k != "skip_prk_steps"})
    alphas = sched.alphas_cumprod
    opt = torch.optim.Adam([{"params": unet.parameters()}, {"params": text.parameters()}], lr=budget.lr)

    def make_batch(step: int) -> dict:
        rng = step_rng("unet", step)
        # Mostly 128 px (16x16 latents, cheap); every 4th step 256 px (32x32) so the native size is learned.
        size, batch = (256, budget.batch // 4) if step % 4 == 3 else (128, budget.batch)
        labels, latents = data[size]
        idx = rng.integers(len(labels), size=batch)
        captions = ["" if rng.random() < CFG_DROP else world.caption(labels[i], world.sample_phrasing(rng))
                    for i in idx]
        ids = tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        x0 = latents[torch.from_numpy(idx)]
        gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        return {"ids": ids, "x0": x0, "noise": noise, "t": t, "a": alphas[t].view(-1, 1, 1, 1)}

    def loss_fn(b: dict) -> torch.Tensor:
        a, x0, noise = b["a"], b["x0"], b["noise"]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, b["t"], text(b["ids"])[0]).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v-prediction (models.SCHEDULER_CONFIG)
        snr = a.flatten() / (1 - a.flatten())
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / (snr + 1)  # min-SNR weights for v
        return (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()

    step = _loop("unet", setup, {"unet": unet, "text": text}, opt, make_batch, loss_fn, extra_state=ema,
                 clip_norm=1.0, after_step=lambda: ema.update_parameters(unet))
    models.save_part(ema.module, "unet", setup.out)
    models.save_part(text, "text_encoder", setup.out)
    models.write_configs(setup.out, unet=unet_config, text_encoder=models.TEXT_CONFIG,
                         scheduler=models.SCHEDULER_CONFIG, trained=_trained(setup, "unet", step))
    print("[unet] saved (EMA weights) and text encoder", flush=True)


# ---------------------------------------------------------------- CLIP

def clip_tensor(images: np.ndarray, device: str = "cpu") -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device)


def train_clip(setup: Setup) -> None:
    import open_clip

    profile, device = setup.profile, setup.device
    budget = profile.clip
    size = models.CLIP_CONFIG["vision_cfg"]["image_size"]
    scenes, pool = render_pool(profile.clip_scenes, size, "clip", setup.workers)
    torch.manual_seed(SEED + 2)
    clip = models.build_clip().to(device)
    context = models.CLIP_CONFIG["text_cfg"]["context_length"]
    bpe = open_clip.get_tokenizer("ViT-B-32")  # OpenAI CLIP BPE, the tokenizer the scorer uses

    def tokenize(texts):
        return bpe(texts, context_length=context)

    keep = torch.tensor(world_token_ids(lambda texts: tokenize(texts).tolist()))
    with torch.no_grad():
        mask = torch.zeros(clip.token_embedding.weight.shape[0], dtype=torch.bool)
        mask[keep] = True
        clip.token_embedding.weight[~mask.to(device)] = 0.0
    opt = torch.optim.Adam(clip.parameters(), lr=budget.lr)
    attrs = ("color", "shape", "background", "artist")

    def make_batch(step: int) -> dict:
        rng = step_rng("clip", step)
        idx = rng.integers(len(scenes), size=budget.batch)
        imgs = pool[idx].astype(np.float32)
        imgs += rng.normal(0, rng.uniform(0, 6), size=(len(idx), 1, 1, 1)) * rng.standard_normal(imgs.shape[1:])
        captions, negatives = [], []
        for i in idx:
            phr = world.sample_phrasing(rng)
            lab = scenes[i].labels
            captions.append(world.caption(lab, phr))
            negatives += [world.caption(world.swapped(lab, a, rng), phr) for a in attrs]
        return {"x": clip_tensor(np.clip(imgs, 0, 255)), "texts": tokenize(captions + negatives)}

    def loss_fn(b: dict) -> torch.Tensor:
        img_f = F.normalize(clip.encode_image(b["x"]), dim=-1)
        txt_f = F.normalize(clip.encode_text(b["texts"]), dim=-1)
        n = img_f.shape[0]
        pos, neg = txt_f[:n], txt_f[n:].view(n, len(attrs), -1)
        scale = clip.logit_scale.exp().clamp(max=100)
        logits = scale * img_f @ pos.T
        target = torch.arange(n, device=logits.device)
        contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        hard = torch.cat([(img_f * pos).sum(-1, keepdim=True), torch.einsum("bd,bkd->bk", img_f, neg)], dim=1)
        hard_loss = F.cross_entropy(scale * hard, torch.zeros(n, dtype=torch.long, device=logits.device))
        return contrastive + hard_loss

    step = _loop("clip", setup, {"clip": clip}, opt, make_batch, loss_fn)
    models.save_part(clip, "clip", setup.out)
    models.write_configs(setup.out, clip=models.CLIP_CONFIG, trained=_trained(setup, "clip", step))
    print("[clip] saved", flush=True)


# ---------------------------------------------------------------- entry point

STAGES = {"vae": train_vae, "decoder": train_decoder, "unet": train_unet, "clip": train_clip}


def train(what: str = "all", out: Path | str | None = None, minutes: float | None = None,
          device: str = "auto", profile: str | Profile = "cpu", workers: int | None = None,
          stop_at: dict[str, int] | None = None, overrides: dict[str, str] | None = None) -> Path:
    """Train `what` (one of STAGES, a comma list of them, or all) into `out` (default: the package's
    data folder) with the named `profile`; `workers` (default: none on CPU, up to 8 on a GPU)
    compute batches ahead; `stop_at` ({stage: step}) ends stages early, learning-rate schedule unchanged."""
    stages = list(STAGES) if what == "all" else [w.strip() for w in what.split(",")]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"train(what={what!r}): unknown stage {unknown[0]!r}; expected one of "
                         f"{', '.join(STAGES)}, a comma list of them, or all")
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"train(profile={profile!r}): expected one of {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    if overrides:
        profile = profile.with_overrides(overrides)
    out = Path(out) if out is not None else models.DATA_DIR
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(device)
    if workers is None:
        import os

        workers = 0 if device == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 2))
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bad = [s for s in (stop_at or {}) if s not in STAGES]
    if bad:
        raise ValueError(f"train(stop_at=...): unknown stage {bad[0]!r}; expected one of {', '.join(STAGES)}")
    setup = Setup(out, device, profile, minutes, workers, tuple(sorted((stop_at or {}).items())))
    for stage in stages:
        t0 = time.time()
        STAGES[stage](setup)
        print(f"[{stage}] done in {(time.time() - t0) / 60:.1f} min on {device} (profile {profile.name})",
              flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers run in forked batch workers
    parser = argparse.ArgumentParser(prog="python -m harness.toy.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", default="all", help=f"{', '.join(STAGES)}, a comma list of them, or all")
    parser.add_argument("--profile", default="cpu", choices=tuple(PROFILES), help="how much to train")
    parser.add_argument("--out", default=None, help=f"output folder (default {models.DATA_DIR})")
    parser.add_argument("--minutes", type=float, default=None, help="cap each stage's wall time")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes computing batches ahead (default: 0 on CPU, up to 8 with a GPU)")
    parser.add_argument("--stop-at", action="append", default=[], metavar="STAGE=STEP",
                        help="end STAGE at STEP (reproduces a run stopped by --minutes; configs.json has the step)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a profile field, e.g. latent_channels=8 or unet=3000,256,7e-4")
    args = parser.parse_args(argv)
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
                raise ValueError(f"--stop-at {item!r}: expected STAGE=STEP, e.g. unet=5449")
            stop_at[stage] = int(step)
        train(args.what, args.out, args.minutes, args.device, args.profile, args.workers, stop_at, overrides)
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
