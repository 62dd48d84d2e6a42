"""Training stages of the toy VAE: `vae` (the whole AutoencoderKL) and `decoder` (the decoder
fine-tuned at 128 px with the encoder frozen).

Both write `vae.safetensors`. A `vae` stage with nothing left to train leaves the file alone when it holds
its weights (with the decoder fine-tune on them or not); a `vae` stage that writes the file says what it
replaced and updates configs.json to match: the decoder record is dropped (its fine-tune is gone) and,
when the encoder changed, the unet record is marked stale (it was trained on the old VAE's latents)."""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F

from harness.toy import models
from harness.toy.training import (
    SEED,
    Profile,
    Setup,
    encoder_digest,
    loop,
    render_pool,
    saved_weights,
    step_rng,
    to_tensor,
    trained,
    weights_encoder_digest,
)


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

    first, step = loop("vae", setup, {"vae": vae}, opt, make_batch, loss_fn)
    out = setup.out
    made = _recorded(out)
    if first == step and _folder_holds(vae, out, made):
        print(f"[vae] already trained to step {step}/{budget.steps}; {out / 'vae.safetensors'} holds these weights"
              + (" with the decoder fine-tune on them" if "decoder" in made else "") + ": left as it is", flush=True)
        return
    vae.eval()
    _, probe = render_pool(profile.vae_probe, 256, "vae-scale")
    with torch.no_grad():
        latents = torch.cat([vae.encode(to_tensor(list(probe[i:i + 16]), device)).latent_dist.mean
                             for i in range(0, len(probe), 16)])
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    before = encoder_digest(out) if "vae" in made and (out / "vae.safetensors").is_file() else None
    models.save_part(vae, "vae", out)
    record = trained(setup, "vae", step)
    forget = ("decoder",) if "decoder" in made else ()
    if forget:
        print(f"[vae] the decoder fine-tune that {out / 'vae.safetensors'} held is replaced by the vae stage's "
              f"weights: configs.json no longer records decoder as trained (train it again: --what decoder)",
              flush=True)
    if "unet" in made and before != weights_encoder_digest(saved_weights(vae), scale):
        record["unet"] = {**made["unet"], "stale": STALE_UNET}
        print(f"[vae] this VAE encodes differently from the one {out / 'unet.safetensors'} was trained on: "
              f"configs.json marks unet stale until --what unet trains it again", flush=True)
    models.write_configs(out, vae={**config, "scaling_factor": scale}, trained=record, forget=forget)
    print(f"[vae] saved; scaling_factor {scale:.4f}", flush=True)


STALE_UNET = "trained on the latents of a VAE since replaced; train it again with --what unet"


def _recorded(out) -> dict:
    """What configs.json in `out` records as trained (empty without one)."""
    path = out / models.CONFIGS_FILE
    return json.loads(path.read_text()).get("trained", {}) if path.is_file() else {}


def _folder_holds(vae, out, made: dict) -> bool:
    """Whether `out/vae.safetensors` holds `vae` as the vae stage saves it: the same weights, or, where
    configs.json records the decoder fine-tune, the same encoder (the decoder stage changes only the decoder)."""
    from safetensors.torch import load_file

    path = out / "vae.safetensors"
    if "vae" not in made or not path.is_file():
        return False
    recorded = json.loads((out / models.CONFIGS_FILE).read_text()).get("sha256", {}).get("vae")
    if recorded != hashlib.sha256(path.read_bytes()).hexdigest():  # saved, but configs.json not yet written
        return False
    saved, mine = load_file(str(path)), saved_weights(vae)
    if saved.keys() != mine.keys():
        return False
    keys = [k for k in mine if "decoder" not in made or k.startswith(("encoder.", "quant_conv."))]
    return all(torch.equal(saved[k], mine[k]) for k in keys)


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

    _, step = loop("decoder", setup, {"vae": vae}, opt, make_batch, loss_fn, inputs=encoder_digest(out))
    models.save_part(vae, "vae", out)
    models.write_configs(out, vae=configs["vae"], trained=trained(setup, "decoder", step))
    print("[decoder] saved (encoder unchanged)", flush=True)

