"""A diffusers SD v1-style pipeline written as one CompVis-layout `.safetensors` file.

The layout is that of `v1-5-pruned-emaonly.safetensors` and of the files web
UIs load (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.*`), so tests can exercise the same
`from_single_file` loading path a user's downloaded checkpoint takes, with the
built-in `tiny` model and nothing downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def _ldm_unet_names(cfg: dict) -> dict[str, str]:
    """Map diffusers UNet2DConditionModel prefixes to CompVis LDM prefixes."""
    m = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
         "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
         "mid_block.attentions.0": "middle_block.1"}
    for j in range(2):
        m[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j}"
    n_levels = len(cfg["block_out_channels"])
    layers = cfg["layers_per_block"]
    per_level = layers + 1  # LDM numbers resnets and the resampler of a level consecutively
    for i in range(n_levels):
        for j in range(layers):
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{1 + i * per_level + j}.0"
            m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{1 + i * per_level + j}.1"
        if i < n_levels - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * per_level}.0.op"
        for j in range(layers + 1):
            m[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{i * per_level + j}.0"
            m[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{i * per_level + j}.1"
        if i < n_levels - 1:
            has_attn = "CrossAttn" in cfg["up_block_types"][i]
            m[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{i * per_level + layers}.{2 if has_attn else 1}"
    return m


_RESNET_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_RESNET_VAE = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _ldm_vae_names(cfg: dict) -> dict[str, str]:
    n = len(cfg["block_out_channels"])
    m = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for side in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            m[f"{side}.{name}"] = f"{side}.{name}"
        m[f"{side}.conv_norm_out"] = f"{side}.norm_out"
        m[f"{side}.mid_block.attentions.0"] = f"{side}.mid.attn_1"
        for j in range(2):
            m[f"{side}.mid_block.resnets.{j}"] = f"{side}.mid.block_{j + 1}"
    for i in range(n):
        for j in range(cfg["layers_per_block"]):
            m[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        if i < n - 1:
            m[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        for j in range(cfg["layers_per_block"] + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        if i < n - 1:
            m[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    return m


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, str]) -> str:
    for src in sorted(prefixes, key=len, reverse=True):
        if key.startswith(src + "."):
            rest = key[len(src) + 1:]
            for a in sorted(inner, key=len, reverse=True):
                if rest.startswith(a + "."):
                    rest = inner[a] + rest[len(a):]
                    break
            return f"{prefixes[src]}.{rest}"
    raise KeyError(f"no CompVis name known for diffusers parameter {key!r}")


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """A diffusers SD v1-style pipeline's weights under CompVis (single-file) names.

    This is the layout of `v1-5-pruned-emaonly.safetensors` and of the files that
    web UIs load, so it exercises the same `from_single_file` conversion path.
    """
    out: dict[str, torch.Tensor] = {}
    unet_names = _ldm_unet_names(dict(pipe.unet.config))
    for key, value in pipe.unet.state_dict().items():
        out["model.diffusion_model." + _rename(key, unet_names, _RESNET_UNET)] = value
    vae_names = _ldm_vae_names(dict(pipe.vae.config))
    for key, value in pipe.vae.state_dict().items():
        inner = _VAE_ATTN if ".attentions." in key else _RESNET_VAE
        new = _rename(key, vae_names, inner)
        if ".attn_1." in new and value.dim() == 2:
            value = value[:, :, None, None]  # LDM stores VAE attention projections as 1x1 convs
        out["first_stage_model." + new] = value
    for key, value in pipe.text_encoder.state_dict().items():
        # SD v1 files nest the HF CLIP text model under `text_model.` (newer transformers flatten it)
        key = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + key] = value
    return {k: v.contiguous() for k, v in sorted(out.items())}


def save_single_file(pipe, path: Path) -> Path:
    """Write `pipe`'s weights as one CompVis-layout `.safetensors` file."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_single_file(path={str(path)!r}): expected a path ending in .safetensors")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(ldm_state_dict(pipe), str(tmp))
    os.replace(tmp, path)
    return path
