"""Training stage of the toy UNet and its CLIP text encoder (`unet`), on cached VAE latents."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from harness.atomic import write_atomic
from harness.toy import models, world
from harness.toy.training import (
    SEED,
    Setup,
    encoder_digest,
    loop,
    render_all,
    step_rng,
    to_tensor,
    trained,
    work_dir,
    world_token_ids,
)

CFG_DROP = 0.1
MIN_SNR_GAMMA = 5.0


def _encode_latents(vae, images: np.ndarray, device: str) -> torch.Tensor:
    chunks = []
    with torch.no_grad():
        for i in range(0, len(images), 32):
            chunks.append(vae.encode(to_tensor(list(images[i:i + 32]), device)).latent_dist.mean.cpu())
    return torch.cat(chunks) * vae.config.scaling_factor


def unet_dataset(setup: Setup, size: int, count: int):
    """(labels, latents) of `count` world scenes at `size` px, cached in the work dir per VAE encoder."""
    out = setup.out
    cache = work_dir(out) / f"unet-latents-{size}-{count}-{encoder_digest(out)}.pt"
    if cache.is_file():
        try:
            data = torch.load(cache, map_location="cpu", weights_only=False)
            return data["labels"], data["latents"]
        except (RuntimeError, OSError, EOFError, KeyError, TypeError) as exc:  # derived data: made again
            print(f"[unet] {cache} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                  "encoding the latents again", flush=True)
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
    write_atomic(cache, lambda tmp: torch.save({"labels": labels, "latents": latents_t}, tmp))  # whole or absent
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

    _, step = loop("unet", setup, {"unet": unet, "text": text}, opt, make_batch, loss_fn, extra_state=ema,
                 inputs=encoder_digest(setup.out),
                 clip_norm=1.0, after_step=lambda: ema.update_parameters(unet))
    models.save_part(ema.module, "unet", setup.out)
    models.save_part(text, "text_encoder", setup.out)
    models.write_configs(setup.out, unet=unet_config, text_encoder=models.TEXT_CONFIG,
                         scheduler=models.SCHEDULER_CONFIG, trained=trained(setup, "unet", step))
    print("[unet] saved (EMA weights) and text encoder", flush=True)

