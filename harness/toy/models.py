"""The `toy` models: configs, the committed weight files, and assembling them.

Weights live in `harness/data/toy/` as fp16 safetensors (`vae`, `unet`,
`text_encoder`, `clip`) next to `configs.json`. Token embedding tables
(49408 rows, of which the world's captions use about a hundred) are stored
sparsely: only the rows that training touched, under `<name>.rows` (the row
indices) and `<name>.values`; every other row is zero.

`assemble_pipeline(folder)` turns the files into a diffusers
StableDiffusionPipeline folder (`save_pretrained`, fp32) so the checkpoint
loads with `from_pretrained` like any other; `assemble_clip(folder)` writes an
open_clip local folder (`open_clip_config.json` + `open_clip_model.safetensors`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from harness.tiny import SD_SCHEDULER_CONFIG

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "toy"
CONFIGS_FILE = "configs.json"
TOY_CLIP_ARCH = "harness-toy-clip"

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,  # three downsamplers: factor 8, like SD
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    # One group: with 8-channel layers, smaller groups normalise a flat colour away (a 2-channel
    # group keeps only signs), and the world is mostly flat colour.
    "norm_num_groups": 1,
    "sample_size": 256,
    "mid_block_add_attention": False,  # fully convolutional: any image size, no quadratic cost
    "scaling_factor": 1.0,  # replaced by 1 / std of the trained latents
}
UNET_CONFIG = {
    "sample_size": 32,  # latent size at the 256 px native resolution
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],  # >= 4 channels per norm group: flat colour survives GroupNorm
    "layers_per_block": 1,
    "cross_attention_dim": 64,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}
TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 64,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 128, "layers": 3, "width": 96, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},  # captions < 32 tokens
}
# SD v1's noise schedule with v-prediction (as SD v2 does): at high noise a small model predicting
# epsilon gets the image's colours wrong, since x0 = (x_t - sqrt(1-a) eps) / sqrt(a) amplifies errors.
SCHEDULER_CONFIG = {**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}
SPARSE_TABLES = {
    "text_encoder": "embeddings.token_embedding.weight",  # transformers >= 5 (older: text_model.embeddings...)
    "clip": "token_embedding.weight",
}
PARTS = ("vae", "unet", "text_encoder", "clip")


class ToyDataError(FileNotFoundError):
    """The toy weights are missing or incomplete; the message says how to rebuild them."""


def _require(data_dir: Path, parts) -> dict:
    missing = [p for p in parts if not (data_dir / f"{p}.safetensors").is_file()]
    if missing or not (data_dir / CONFIGS_FILE).is_file():
        raise ToyDataError(f"toy weights missing in {data_dir}: {', '.join(missing) or CONFIGS_FILE}; "
                           f"train them with `python -m harness.toy.train --what all --out {data_dir}`")
    configs = json.loads((data_dir / CONFIGS_FILE).read_text())
    for p in parts:  # configs.json records each file's digest: a file cut short or replaced is named now
        recorded = configs.get("sha256", {}).get(p)
        if recorded and hashlib.sha256((data_dir / f"{p}.safetensors").read_bytes()).hexdigest() != recorded:
            raise ToyDataError(f"{data_dir / f'{p}.safetensors'}: not the file {data_dir / CONFIGS_FILE} records "
                               "(cut short, damaged or replaced); restore it (`git checkout` for the committed "
                               "weights) or train it again with `python -m harness.toy.train`")
    return configs


# ---------------------------------------------------------------- model builders

def build_vae(config: dict | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**(config or VAE_CONFIG))


def build_unet(config: dict | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**(config or UNET_CONFIG))


def build_text_encoder(config: dict | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**(config or TEXT_CONFIG)))


def build_clip(config: dict | None = None):
    import open_clip

    return open_clip.CLIP(**(config or CLIP_CONFIG))


def tokenizer():
    """OpenAI CLIP's tokenizer, built offline (the one the pipeline uses)."""
    from harness.tiny import clip_tokenizer

    with tempfile.TemporaryDirectory(prefix="clip-bpe-") as workdir:
        return clip_tokenizer(Path(workdir))


# ---------------------------------------------------------------- weight files

def save_part(module, part: str, data_dir: Path) -> Path:
    """Write `module`'s weights as fp16 safetensors (sparse token table) to `data_dir/<part>.safetensors`."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32) for k, v in module.state_dict().items()}
    table = _table_key(part, state)
    if table:
        weight = state.pop(table)
        rows = torch.nonzero(weight.abs().sum(dim=1) > 0).flatten()
        state[f"{table}.rows"] = rows.to(torch.int32)
        state[f"{table}.values"] = weight[rows]
    out = {k: (v if not v.is_floating_point() else v.to(torch.float16)).contiguous() for k, v in state.items()}
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{part}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file(out, str(tmp))
    tmp.replace(path)
    return path


def load_part(module, part: str, data_dir: Path) -> None:
    """Load `data_dir/<part>.safetensors` into `module` (fp32), rebuilding the sparse token table."""
    import torch
    from safetensors.torch import load_file

    path = data_dir / f"{part}.safetensors"
    try:
        weights = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a damaged header
        raise ToyDataError(f"{path}: damaged ({type(exc).__name__}: {exc}); restore it (`git checkout` for the "
                           f"committed weights) or train it again with `python -m harness.toy.train`") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    table = _table_key(part, module.state_dict())
    if table and f"{table}.rows" not in state:  # saved by a transformers with the other layout
        other = next((k[:-5] for k in state if k.endswith(".rows")), None)
        if other is not None:
            state[f"{table}.rows"], state[f"{table}.values"] = state.pop(f"{other}.rows"), state.pop(f"{other}.values")
            state = {_relayout(k, table, other): v for k, v in state.items()}
    if table and f"{table}.rows" in state:
        full = torch.zeros_like(module.state_dict()[table], dtype=torch.float32)
        full[state.pop(f"{table}.rows").long()] = state.pop(f"{table}.values")
        state[table] = full
    module.load_state_dict(state, strict=True)


def _table_key(part: str, state) -> str | None:
    """The token table's name in this state dict (transformers 5 dropped the `text_model.` prefix)."""
    base = SPARSE_TABLES.get(part)
    if base is None:
        return None
    return next((k for k in (base, f"text_model.{base}") if k in state or f"{k}.rows" in state), base)


def _relayout(key: str, table: str, other: str) -> str:
    """Rename keys between the `text_model.`-prefixed and flat CLIPTextModel layouts."""
    if other.startswith("text_model.") and not table.startswith("text_model."):
        return key[len("text_model."):] if key.startswith("text_model.") else key
    if table.startswith("text_model.") and not other.startswith("text_model."):
        return key if key.startswith("text_model.") else f"text_model.{key}"
    return key


def write_configs(data_dir: Path, trained: dict | None = None, forget: tuple[str, ...] = (), **overrides) -> None:
    """Update `configs.json`: the configs of the parts just trained (`overrides`), the others as they were;
    `trained` adds how a part was made (profile, device, steps), `forget` drops the records of stages whose
    output is gone. Stages trained in parallel processes update it under a lock."""
    import fcntl
    import os

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CONFIGS_FILE
    folder = os.open(data_dir, os.O_RDONLY)  # the lock is on the folder: configs.json itself is replaced
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        current = json.loads(path.read_text()) if path.is_file() else {}
        base = {"vae": VAE_CONFIG, "unet": UNET_CONFIG, "text_encoder": TEXT_CONFIG, "clip": CLIP_CONFIG,
                "scheduler": SCHEDULER_CONFIG}
        merged = {k: current.get(k, v) for k, v in base.items()}
        merged.update(overrides)
        merged["trained"] = {k: v for k, v in {**current.get("trained", {}), **(trained or {})}.items()
                             if k not in forget}
        merged["sha256"] = {p: hashlib.sha256((data_dir / f"{p}.safetensors").read_bytes()).hexdigest()
                            for p in PARTS if (data_dir / f"{p}.safetensors").is_file()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    finally:
        os.close(folder)


# ---------------------------------------------------------------- assembling

def load_components(data_dir: Path | None = None):
    """(vae, unet, text_encoder) in fp32 with the committed weights."""
    data_dir = Path(data_dir or DATA_DIR)
    configs = _require(data_dir, ("vae", "unet", "text_encoder"))
    vae, unet, text = build_vae(configs["vae"]), build_unet(configs["unet"]), build_text_encoder(configs["text_encoder"])
    for part, module in (("vae", vae), ("unet", unet), ("text_encoder", text)):
        load_part(module, part, data_dir)
    return vae, unet, text


def assemble_pipeline(folder: Path, data_dir: Path | None = None) -> None:
    """Write the `toy` StableDiffusionPipeline folder (fp32) from the committed weights."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    with torch.random.fork_rng(devices=[]):
        vae, unet, text = load_components(data_dir)
    configs = _require(Path(data_dir or DATA_DIR), ())
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer(), unet=unet,
                                   scheduler=PNDMScheduler.from_config(configs.get("scheduler", SD_SCHEDULER_CONFIG)),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)


def assemble_clip(folder: Path, data_dir: Path | None = None) -> None:
    """Write the `toy` CLIP as an open_clip local folder."""
    import torch
    from safetensors.torch import save_file

    data_dir = Path(data_dir or DATA_DIR)
    configs = _require(data_dir, ("clip",))
    with torch.random.fork_rng(devices=[]):
        clip = build_clip(configs["clip"])
    load_part(clip, "clip", data_dir)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / f"{TOY_CLIP_ARCH}.json").write_text(json.dumps(configs["clip"], indent=2))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": configs["clip"]}, indent=2))
