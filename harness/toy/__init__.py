"""The toy world and the `toy` models trained on it.

Importing this package (which `harness.checkpoints` and `harness.metrics` do)
registers, without loading torch:

- the built-in checkpoint `toy`: a small Stable Diffusion pipeline (x8 VAE,
  CLIP text encoder with the real CLIP tokenizer, UNet with cross-attention)
  trained on `harness.toy.world`. At first use it is assembled from the fp16
  weights in `harness/data/toy/` into a diffusers folder in `$HARNESS_CACHE`
  and loaded with `from_pretrained`, like any model folder. Native size 256 px.
- the built-in CLIP `toy` (`clip_score:model=toy`): an open_clip model trained
  contrastively on the same world, assembled into an open_clip local folder
  (`$HARNESS_CACHE/clip/toy-<digest>/`) and loaded as a local weights file.

Modules: `world` (scenes, rendering, captions), `oracle` (reading images and
prompts back into world words), `models` (configs, weight files, assembly),
`train` (`python -m harness.toy.train`; its stages in `train_vae`, `train_unet` and `train_clip`,
their shared loop and profiles in `training`), `acceptance` (`python -m harness.toy.acceptance`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness.checkpoints import register_builtin

TOY = "toy"
_DATA = Path(__file__).resolve().parent.parent / "data" / "toy"


def data_digest(data_dir: Path = _DATA) -> str:
    """A short digest of the committed configs (they record each weight file's SHA-256)."""
    path = data_dir / "configs.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10] if path.is_file() else "missing"


def _build_checkpoint(path: Path) -> None:
    from harness.toy.models import assemble_pipeline

    assemble_pipeline(path)


register_builtin(TOY, _build_checkpoint, folder=f"toy-{data_digest()}", native_size=256, family="toy",
                 description="small SD-style model trained on the procedural toy world (harness.toy.world)")


# ---------------------------------------------------------------- the toy CLIP

def toy_clip_dir(data_dir: Path = _DATA) -> Path:
    from harness.metrics.base import cache_dir

    return cache_dir() / "clip" / f"{TOY}-{data_digest(data_dir)}"


def ensure_toy_clip(data_dir: Path = _DATA) -> Path:
    """The toy CLIP's open_clip folder (of the committed weights, or those in `data_dir`), assembled once
    (in a temp folder, then renamed)."""
    from harness.atomic import build_folder_once
    from harness.toy.models import assemble_clip

    return build_folder_once(toy_clip_dir(data_dir), "open_clip_model.safetensors",
                             lambda folder: assemble_clip(folder, data_dir))


def load_toy_clip(pretrained: str, device: str):
    """Loader for `load_clip("toy", ...)`: the assembled folder through open_clip's local-weights path."""
    from harness.metrics import clip_models

    if pretrained not in ("", TOY):
        raise clip_models.ClipLoadError(f"model='toy' has only its built-in weights; got pretrained={pretrained!r} "
                                        f"(leave pretrained empty or write pretrained=toy)")
    return open_toy_clip(_DATA, device)


def open_toy_clip(data_dir: Path, device: str):
    """The toy CLIP with the weights in `data_dir` (a `harness toy train --out` folder) as a `ClipModel`."""
    import open_clip

    from harness.metrics import clip_models
    from harness.provenance import file_sha256
    from harness.toy.models import TOY_CLIP_ARCH, ToyDataError

    try:
        folder = ensure_toy_clip(Path(data_dir))
    except ToyDataError as exc:
        raise clip_models.ClipLoadError(str(exc)) from exc
    if TOY_CLIP_ARCH not in open_clip.list_models():
        open_clip.add_model_config(folder / f"{TOY_CLIP_ARCH}.json")
    weights = folder / "open_clip_model.safetensors"
    return clip_models._open(TOY_CLIP_ARCH, str(weights), device, f"{TOY}@{file_sha256(weights)[:16]}")


def _register_clip() -> None:
    from harness.metrics.clip_models import BUILTIN_LOADERS

    BUILTIN_LOADERS[TOY] = load_toy_clip


_register_clip()
