"""What a checkpoint is, read from its files without loading its weights: a diffusers folder's family and
native size, a .safetensors header, a single file's tensor names and the SD family they mean."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint cannot be resolved or loaded; the message says how to fix it."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def folder_family(folder: Path) -> tuple[str, int]:
    """(family, native size) from a diffusers folder's UNet and VAE configs."""
    unet = _read_json(folder / "unet" / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    scale = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    native = int(unet.get("sample_size", 64)) * scale
    family = {768: "sd1", 1024: "sd2"}.get(unet.get("cross_attention_dim"), "unknown")
    return family, native


def _config(path: Path, name: str, fix: str) -> dict:
    """A pipeline folder's JSON file, or a CheckpointError that says it is missing or not JSON (and where)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {name!r}: {path} is missing; {fix}") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {name!r}: {path} cannot be read ({exc.strerror or exc}); {fix}") from None
    except ValueError as exc:  # JSONDecodeError (line and column), or bytes that are not UTF-8
        raise CheckpointError(f"checkpoint {name!r}: {path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {name!r}: {path} holds {type(data).__name__}, not a JSON object; {fix}")
    return data


def check_pipeline_folder(folder: Path, name: str) -> None:
    """What can be checked without reading weights: model_index.json lists the parts of an SD pipeline, and
    each part with a config has one that reads (a damaged download, a part left out of a copy)."""
    fix = "download or copy the checkpoint again (a built-in's folder is rebuilt once deleted)"
    index = _config(folder / "model_index.json", name, fix)
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if c not in index]
    if missing:
        raise CheckpointError(f"checkpoint {name!r}: {folder / 'model_index.json'} has no {', '.join(missing)}; "
                              f"expected a Stable Diffusion 1.x/2.x pipeline (class {index.get('_class_name')!r})")
    for part, config in (("unet", "config.json"), ("vae", "config.json"), ("text_encoder", "config.json"),
                         ("scheduler", "scheduler_config.json")):
        _config(folder / part / config, name, fix)


def safetensors_header(path: str | Path) -> dict[str, Any]:
    """Tensor names -> {dtype, shape, ...} from a .safetensors header, without reading the data."""
    header = _safetensors_header_and_metadata(path)
    header.pop("__metadata__", None)
    return header


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The free-form `__metadata__` of a .safetensors header ({} without one)."""
    metadata = _safetensors_header_and_metadata(path).get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


def _data_end(header: dict[str, Any]) -> int:
    """Where the last tensor's bytes end, counted from the end of the header (0 without tensors)."""
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2
            and isinstance(v["data_offsets"][1], int)]
    return max(ends, default=0)


def _check_safetensors_size(path: str | Path, header_size: int, header: dict[str, Any]) -> None:
    """The header says where every tensor's bytes are; a file shorter than that is an interrupted download
    or copy (it locates and fingerprints fine, then fails to load deep in diffusers), a longer one is not
    what was written."""
    expected = 8 + header_size + _data_end(header)
    actual = Path(path).stat().st_size
    if actual < expected:
        raise CheckpointError(f"{path} is truncated ({actual} of {expected} bytes): the file is incomplete, "
                              f"download it again")
    if actual > expected:
        raise CheckpointError(f"{path} has {actual - expected} trailing bytes after the {expected} its header "
                              f"accounts for: the file is damaged, download it again")


def _safetensors_header_and_metadata(path: str | Path) -> dict[str, Any]:
    """The whole header of a .safetensors file, `__metadata__` included, once its size is checked."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100 << 20:
            raise CheckpointError(f"{path} is not a safetensors file (header length {size} bytes is implausible)")
        raw = fh.read(size)
        if len(raw) < size:
            raise CheckpointError(f"{path} is truncated (its header needs {size} bytes, {len(raw)} are there): the "
                                  f"file is incomplete, download it again")
        try:
            header = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a JSON object)")
    _check_safetensors_size(path, size, header)
    return header


# Default diffusers config repos per detected single-file type (the same defaults diffusers uses).
SINGLE_FILE_CONFIG_REPOS = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
}
# SD2's two releases have the same tensors: the 768 px v-prediction model (the default above) and the 512 px
# epsilon "base". Only what a file declares tells them apart; without it the default is an assumption.
SD2_REPOS = {
    "v": ("stabilityai/stable-diffusion-2-1", 768, "v-prediction"),
    "epsilon": ("stabilityai/stable-diffusion-2-1-base", 512, "epsilon"),
}


def declared_prediction_type(path: Path) -> str | None:
    """'v' | 'epsilon' as a .safetensors file's own metadata declares it (Stability's ModelSpec
    `modelspec.prediction_type`, or kohya's trainers' `ss_v2` + `ss_v_parameterization`); None when it
    declares nothing (a .ckpt has no metadata). Tensor names and shapes cannot tell: both SD2s have the same."""
    if path.suffix != ".safetensors":
        return None
    meta = safetensors_metadata(path)
    declared = str(meta.get("modelspec.prediction_type", "")).strip().lower()
    if declared in ("v", "v_prediction", "v-prediction"):
        return "v"
    if declared == "epsilon":
        return "epsilon"
    if str(meta.get("ss_v2", "")).lower() == "true" and "ss_v_parameterization" in meta:
        return "v" if str(meta["ss_v_parameterization"]).lower() == "true" else "epsilon"
    return None


def single_file_config_repo(family: str, path: Path) -> tuple[str, int, bool]:
    """(reference repo, native size, whether the file declared which) for a single file of `family` that
    names no config: SD2 by its declared prediction type, else the 768 px v-prediction model."""
    if family != "sd2":
        return SINGLE_FILE_CONFIG_REPOS[family], 512, True
    declared = declared_prediction_type(path)
    repo, native, _ = SD2_REPOS[declared or "v"]
    return repo, native, declared is not None


def sd2_assumption(name: str) -> str:
    """What an SD2 single file without a config and without a declared prediction type is taken as, and how
    to say otherwise (the two SD2 releases have the same tensors)."""
    (v_repo, v_px, v_kind), (b_repo, b_px, b_kind) = SD2_REPOS["v"], SD2_REPOS["epsilon"]
    return (f"an SD2 file does not say which SD2 it is: it is built as {v_repo!r} ({v_px} px, {v_kind}); an "
            f"SD2-base fine-tune needs {b_repo!r} ({b_px} px, {b_kind}): pick with [checkpoint.\"{name}\"] "
            f"config = \"{b_repo}\" (or \"{v_repo}\", or a local diffusers folder)")


def single_file_family(keys_and_shapes: dict[str, tuple]) -> str:
    """'sd1' | 'sd2' from CompVis-layout key names; CheckpointError for anything else."""
    keys = keys_and_shapes
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise CheckpointError("no 'model.diffusion_model.*' tensors: "
                              "not a Stable Diffusion (CompVis layout) checkpoint")
    if any(k.startswith("conditioner.") for k in keys):
        raise CheckpointError("this is an SDXL checkpoint (it has 'conditioner.*' tensors); "
                              "only SD 1.x/2.x are supported")
    first = keys.get("model.diffusion_model.input_blocks.0.0.weight")
    if first is not None and len(first) > 1 and first[1] != 4:
        raise CheckpointError(f"the UNet takes {first[1]} input channels (inpainting/depth model); "
                              f"only text-to-image checkpoints with 4 latent channels are supported")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    return "sd1"


def _unpickling_reason(exc: Exception) -> str:
    """The one sentence of torch's weights-only refusal that says what was found (its message is mostly a
    paragraph about the `weights_only` default)."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", text, re.S)
    reason = " ".join((found.group(1) if found else text.splitlines()[0] if text else "no detail").split())
    return reason.split(". ")[0].rstrip(".")


def single_file_keys(path: Path) -> dict[str, tuple]:
    """Tensor names -> shapes of a .safetensors or .ckpt file; CheckpointError naming the file when unreadable."""
    if path.suffix == ".safetensors":
        return {k: tuple(v.get("shape", ()) if isinstance(v, dict) else ())
                for k, v in safetensors_header(path).items()}
    import pickle

    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} could not be read as a checkpoint of tensors ({_unpickling_reason(exc)}). Either it is not a "
            "torch checkpoint, or it also stores Python objects (a training checkpoint), which are not loaded for "
            "safety; on a machine you trust, save its state_dict alone or convert it to .safetensors") from None
    except Exception as exc:  # torch's weights-only reader fails on junk with KeyError, IndexError, struct.error...
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict of tensors (a state_dict)")
    return {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
