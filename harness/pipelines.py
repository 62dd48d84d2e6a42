"""Loading a resolved checkpoint as a diffusers pipeline, fully offline.

Torch and diffusers are imported inside functions, as in `harness.checkpoints`.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

from .checkpoint_files import SINGLE_FILE_CONFIG_REPOS, CheckpointError, single_file_family, single_file_keys
from .checkpoints import (BUILTINS, MODES, CheckpointRef, _file_config_refusal, builtin_folder,
                          default_single_file_config, hub_snapshot)
from .fingerprints import is_variant
from .schedulers import make_scheduler, scheduler_spec
from .tokenizer_cache import shared_tokenizer


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Make any Hugging Face hub request fail at once instead of reaching the network."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def loading_bars() -> Iterator[None]:
    """diffusers' and transformers' loading bars on a terminal only: in a log file or a pipe their
    carriage returns leave lines such as "Loading pipeline components...: 60%" between the run's own."""
    if sys.stderr.isatty():
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    modules = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    for m in modules:
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m in modules:
            m.enable_progress_bar()


def _pipeline_class(mode: str):
    if mode not in MODES:
        raise CheckpointError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    import diffusers

    return diffusers.StableDiffusionPipeline if mode == "txt2img" else diffusers.StableDiffusionImg2ImgPipeline


def derive_pipeline(pipe, mode: str, scheduler: str | None = None):
    """A pipeline for `mode` that shares `pipe`'s models (no reload), with its own scheduler."""
    cls = _pipeline_class(mode)
    components = dict(pipe.components)
    base = pipe.scheduler.config
    checkpoint = getattr(pipe, "harness_checkpoint", None)
    components["scheduler"] = (make_scheduler(scheduler, base, checkpoint=checkpoint) if scheduler
                               else type(pipe.scheduler).from_config(base))
    out = cls(**components, requires_safety_checker=False)
    out.set_progress_bar_config(disable=True)
    out.harness_fingerprint = getattr(pipe, "harness_fingerprint", None)
    out.harness_checkpoint = checkpoint
    return out


def _folder_of(ref: CheckpointRef) -> Path:
    if ref.kind == "hub":
        return hub_snapshot(ref.source, name=ref.name)
    if ref.kind == "builtin" and not (Path(ref.source) / "model_index.json").is_file() and ref.name in BUILTINS:
        return builtin_folder(ref.name)  # deleted since it was resolved: rebuild (deterministic, same fingerprint)
    return Path(ref.source)


def _weights_variant(folder: Path) -> str | None:
    """'fp16' when the folder holds only fp16 variant weights (a common partial download)."""
    for comp in ("unet", "vae", "text_encoder"):
        names = [p.name for p in (folder / comp).glob("*") if p.suffix in (".safetensors", ".bin")]
        if names and not any(not is_variant(n) for n in names):
            return "fp16" if any(".fp16." in n for n in names) else None
    return None


def _dtype_keyword() -> str:
    """diffusers renamed `torch_dtype` to `dtype` (the old name now warns); use what this version wants."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def load_pipeline(ref: CheckpointRef, mode: str = "txt2img", *, device: str | None = "cpu", dtype=None,
                  scheduler: str | None = None, config: str | None = None):
    """Load `ref` as a txt2img or img2img pipeline without touching the network.

    `dtype` is a torch dtype (None: float32). `scheduler` is a registry name
    (None keeps the checkpoint's own). `device=None` leaves the models on the CPU
    so that a memory policy (offload) can place them. Single files need a
    diffusers config: `ref.config`, the `config` argument, or the default config
    repo of their family in the HF cache (SD2 files default to the 768 px
    v-prediction `stable-diffusion-2-1` unless their metadata declares epsilon; give SD2-base files
    their config).
    Prefer `resolve(spec, config=...)`: then the config is part of the fingerprint.
    """
    cls = _pipeline_class(mode)
    if scheduler is not None:
        scheduler_spec(scheduler)
    kwargs = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False, local_files_only=True)
    kwargs[_dtype_keyword()] = dtype
    with hub_offline(), loading_bars():
        if ref.kind == "file":
            pipe = _load_single_file(ref, kwargs, config or ref.config)
        else:
            folder = _folder_of(ref)
            variant = _weights_variant(folder)
            try:
                tokenizer = shared_tokenizer(folder)  # one per tokenizer content in the process
                if tokenizer is not None:
                    kwargs["tokenizer"] = tokenizer
                pipe = cls.from_pretrained(str(folder), variant=variant, **kwargs)
            except (OSError, ValueError, KeyError) as exc:
                raise CheckpointError(f"checkpoint {ref.name!r}: loading the diffusers folder {folder} failed: {exc}. "
                                      f"Check that every component listed in model_index.json has its config and "
                                      f"weights (re-download, or rebuild a built-in by deleting the folder)") from exc
    pipe.harness_fingerprint = ref.fingerprint  # lets generate_batch check that jobs match the weights
    pipe.harness_checkpoint = ref.name  # named in a derived pipeline's scheduler errors
    if type(pipe) is not cls or scheduler is not None:
        pipe = derive_pipeline(pipe, mode, scheduler)
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    return pipe


def _single_file_config(ref: CheckpointRef, config: str | None) -> tuple[str | None, str | None]:
    """(diffusers config folder, None) for a single file, all local. An original .yaml is refused
    (`checkpoints._file_config_refusal`): diffusers would take its scheduler from the reference repo."""
    if config:
        p = Path(config)
        if p.is_file():
            raise CheckpointError(_file_config_refusal(config, ref.name))
        if p.is_dir():
            if not (p / "model_index.json").is_file():
                raise CheckpointError(f"config={config!r} for {ref.name!r}: folder has no model_index.json; expected "
                                      f"a diffusers pipeline folder of the same architecture")
            return str(p), None
        return str(hub_snapshot(config, name=f"config for {ref.name}")), None
    family = ref.family
    if family not in SINGLE_FILE_CONFIG_REPOS:
        family = single_file_family(single_file_keys(Path(ref.source)))
    return str(default_single_file_config(ref.name, Path(ref.source), family)), None


def _load_single_file(ref: CheckpointRef, kwargs: dict, config: str | None):
    import diffusers

    config_dir, original = _single_file_config(ref, config)
    try:
        return diffusers.StableDiffusionPipeline.from_single_file(
            ref.source, config=config_dir, original_config=original, **kwargs)
    except CheckpointError:
        raise
    except Exception as exc:
        local = config is not None and Path(config).exists()  # a folder given: nothing from the hub
        raise CheckpointError(
            f"single-file checkpoint {ref.name!r} ({ref.source}) could not be loaded with "
            f"{'config ' + config_dir if config_dir else 'original_config ' + str(original)}: "
            f"{type(exc).__name__}: {exc}" + ("" if local else ". If a file was missing from the hub, the config "
                                              "must be fully local: pass config=<local diffusers folder>")) from exc
