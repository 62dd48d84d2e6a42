"""Built-in random-weight Stable Diffusion checkpoints, built from configs in code.

`tiny` is a 15 MB StableDiffusionPipeline for demos and tests: the same
architecture families as SD v1 (UNet with cross-attention, an AutoencoderKL
that downsamples by 8, a CLIP text encoder, the real CLIP BPE tokenizer) but
with small widths, so a 256x256 image takes a fraction of a second on a CPU.
`sd15-random` has exactly SD v1.5's shapes (about 1.07 B parameters) with random
weights, for GPU throughput benchmarks without downloading anything; `sd2-random` has SD v2's
(the 512 px base release: 64-wide attention heads, the OpenCLIP ViT-H text tower).

All are written with `save_pretrained` into a folder and then loaded through
the same `from_pretrained` code path as any real model folder.

Weights are filled by `deterministic_init`: every parameter draws from its own
`torch.Generator` seeded from (namespace, parameter name) with a uniform
distribution, which is bit-identical on every CPU, so a rebuild on any machine
gives the same weights (and, with the same library versions writing the files,
the same bytes and fingerprint). Scales are LeCun-style
(`uniform(±sqrt(3 / fan_in))`) so activations keep unit variance and the random
decoder paints coloured noise rather than flat grey.

The tokenizer is OpenAI CLIP's: `vocab.json`/`merges.txt` are rebuilt offline from
the BPE merges file that open_clip ships (see `write_clip_tokenizer_files`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from pathlib import Path

import torch

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# SD v1 noise schedule (scaled_linear 0.00085..0.012, 1000 steps) as PNDM/PLMS,
# which is what the SD v1 repositories ship as their default scheduler.
SD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "clip_sample": False,  # read by DDIM/DDPM when a scheduler is swapped in, as in SD v1.5's config
}

TINY_UNET = {
    "sample_size": 64,  # latent size; x8 = the 512 px native size of SD v1
    "in_channels": 4,
    "out_channels": 4,
    # Attention only at the half-resolution level: 4x fewer tokens, same code paths.
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,  # three downsamplers: factor 8
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 32, 32),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
TINY_TEXT = {
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": CLIP_MAX_LENGTH,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}

# Stable Diffusion v1.5's published component configs (shapes only).
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
}
# SD v2 (the 512 px base release): 64-wide attention heads at every level, linear projections in the
# transformer blocks, and the 1024-wide OpenCLIP ViT-H/14 text tower (23 of its 24 layers, as SD v2 uses).
SD2_UNET = dict(SD15_UNET, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True)
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {  # OpenAI CLIP ViT-L/14 text tower
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": CLIP_MAX_LENGTH,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}
SD2_TEXT = dict(SD15_TEXT, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                projection_dim=512, hidden_act="gelu")


# ---------------------------------------------------------------- tokenizer

def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode character table."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def clip_bpe_path() -> Path:
    """The BPE merges file that open_clip ships (OpenAI CLIP's vocabulary)."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open_clip's BPE file is missing at {path}; reinstall open_clip_torch")
    return path


def clip_vocab_and_merges(bpe_path: Path | None = None) -> tuple[dict[str, int], list[str]]:
    """Rebuild OpenAI CLIP's vocabulary (49408 entries) and merge list.

    Order: the 256 byte characters, the same with `</w>`, one entry per merge
    (the pair joined), then `<|startoftext|>` and `<|endoftext|>`.
    """
    lines = gzip.open(bpe_path or clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # line 0 is a version header
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise ValueError(f"CLIP vocabulary from {bpe_path} has {len(tokens)} entries, expected {CLIP_VOCAB_SIZE}")
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer_files(folder: Path) -> None:
    """Write `vocab.json` and `merges.txt` in the layout CLIPTokenizer reads."""
    vocab, merges = clip_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def clip_tokenizer(workdir: Path):
    """A `CLIPTokenizer` equal to OpenAI CLIP's, built without any download."""
    from transformers import CLIPTokenizer

    files = workdir / "clip-bpe"
    write_clip_tokenizer_files(files)
    return CLIPTokenizer.from_pretrained(str(files), model_max_length=CLIP_MAX_LENGTH, local_files_only=True)


# ---------------------------------------------------------------- weights

def _param_seed(namespace: str, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{namespace}/{name}".encode()).digest()[:8], "little") >> 1


@torch.no_grad()
def deterministic_init(module: torch.nn.Module, namespace: str, *, embed_std: float = 0.02) -> None:
    """Overwrite every parameter with platform-independent pseudo-random values.

    Norm layers get weight 1, bias 0; biases 0; embeddings uniform with std
    `embed_std`; other weights uniform(-b, b) with b = sqrt(3 / fan_in) (unit
    output variance for unit input). Each tensor has its own generator, so the
    result does not depend on parameter order.
    """
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    norm_params = set()
    embed_params = set()
    for mod_name, mod in module.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(mod, norm_types):
            norm_params.update(prefix + p for p, _ in mod.named_parameters(recurse=False))
        elif isinstance(mod, torch.nn.Embedding):
            embed_params.update(prefix + p for p, _ in mod.named_parameters(recurse=False))
    for name, param in module.named_parameters():
        if name in norm_params:
            param.fill_(1.0 if name.endswith("weight") else 0.0)
            continue
        if name.endswith("bias"):
            param.zero_()
            continue
        if name in embed_params or param.dim() < 2:
            bound = embed_std * math.sqrt(3.0)
        else:
            bound = math.sqrt(3.0 / param[0].numel())
        gen = torch.Generator(device="cpu").manual_seed(_param_seed(namespace, name))
        u = torch.rand(param.shape, generator=gen, dtype=torch.float32)
        param.copy_((u * 2.0 - 1.0) * bound)


# ---------------------------------------------------------------- pipelines

def build_pipeline(folder: Path, *, namespace: str, unet: dict, vae: dict, text: dict,
                   dtype: torch.dtype = torch.float32) -> None:
    """Create a StableDiffusionPipeline with deterministic random weights and save it to `folder`."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    import tempfile

    folder = Path(folder)
    torch.manual_seed(0)  # constructors draw default inits; all of it is overwritten below
    unet_model = UNet2DConditionModel(**unet)
    vae_model = AutoencoderKL(**vae)
    text_model = CLIPTextModel(CLIPTextConfig(**text))
    for part, model in (("unet", unet_model), ("vae", vae_model), ("text_encoder", text_model)):
        deterministic_init(model, f"{namespace}/{part}")
        if dtype != torch.float32:
            model.to(dtype)
    with tempfile.TemporaryDirectory(prefix="clip-bpe-") as workdir:
        tokenizer = clip_tokenizer(Path(workdir))
    pipe = StableDiffusionPipeline(
        vae=vae_model,
        text_encoder=text_model,
        tokenizer=tokenizer,
        unet=unet_model,
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)


def build_tiny(folder: Path) -> None:
    """The built-in `tiny` checkpoint (about 2.8 M parameters, 1.6 M of them token embeddings; fp32)."""
    build_pipeline(folder, namespace="tiny-v1", unet=TINY_UNET, vae=TINY_VAE, text=TINY_TEXT)


def build_sd15_random(folder: Path) -> None:
    """SD v1.5 shapes with random weights, stored in fp16 (about 2 GB on disk)."""
    build_pipeline(folder, namespace="sd15-random-v1", unet=SD15_UNET, vae=SD15_VAE, text=SD15_TEXT,
                   dtype=torch.float16)


def build_sd2_random(folder: Path) -> None:
    """SD v2 (512 px base) shapes with random weights, stored in fp16 (about 2.6 GB on disk)."""
    build_pipeline(folder, namespace="sd2-random-v1", unet=SD2_UNET, vae=SD15_VAE, text=SD2_TEXT,
                   dtype=torch.float16)
