"""Loading CLIP scorer models with open_clip, kept apart from any scoring.

`load_clip(model, pretrained, device)` accepts:

- a pretrained tag (`openai`, `laion2b_s32b_b79k`, ...): open_clip's normal path,
  which reads the Hugging Face cache and downloads when online;
- a local weights file (`.pt`, `.pth`, `.bin`, `.safetensors`) for the
  architecture named by `model`;
- a folder holding `open_clip_config.json` and weights (open_clip's
  `local-dir:` layout; `model` is then only a label);
- `model="tiny"`: the built-in tiny CLIP. It is a small random-initialised
  open_clip CLIP built from the config below with a fixed seed, saved once to
  `$HARNESS_CACHE/clip/tiny/` (default `~/.cache/harness`), and from then on
  loaded through the same path as any local weights file. Its scores mean
  nothing; it exists so demos and tests run without downloads.

Models are cached in-process per (model, pretrained, device); a failed load is
remembered too, so a run does not retry it for every batch.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.checks import path_kind
from harness.metrics.base import cache_dir
from harness.provenance import file_sha256

TINY = "tiny"
TINY_ARCH = "harness-tiny-clip"
TINY_SEED = 20220822  # fixed: the tiny CLIP is the same on every machine that builds it
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_WEIGHTS = "open_clip_model.safetensors"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
BUILTIN_LOADERS: dict[str, Callable[[str, str], "ClipModel"]] = {}  # other built-in CLIPs: name -> loader(pretrained, device)


class ClipLoadError(RuntimeError):
    """A CLIP model could not be loaded; the message says which and how to fix it."""


@dataclass
class ClipModel:
    """A loaded scorer: the open_clip model, its eval preprocessing and tokenizer."""

    model: Any
    preprocess: Callable
    tokenizer: Any
    context_length: int
    device: str
    ident: str  # names model + weights; keys the embedding cache

    def count_tokens(self, text: str) -> int:
        """BPE tokens of `text`, without the start and end tokens."""
        tok = self.tokenizer
        if hasattr(tok, "encode"):
            return len(tok.encode(text))
        inner = getattr(tok, "tokenizer", None)  # open_clip's HFTokenizer
        if inner is not None:
            return len(inner(text, add_special_tokens=False)["input_ids"])
        raise ClipLoadError(f"cannot count tokens with tokenizer {type(tok).__name__}")


_LOADED: dict[tuple[str, str, str], ClipModel | ClipLoadError] = {}
_LOCK = threading.Lock()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_clip(model: str, pretrained: str, device: str = "cpu") -> ClipModel:
    """The CLIP scorer for (model, pretrained) on `device`, loaded once per process.

    Raises ClipLoadError naming the model and weights and saying how to fix it.
    """
    device = resolve_device(device)
    key = (model, pretrained, device)
    with _LOCK:
        cached = _LOADED.get(key)
        if cached is None:
            try:
                cached = _load(model, pretrained, device)
            except ClipLoadError as exc:
                cached = exc
            _LOADED[key] = cached
    if isinstance(cached, ClipLoadError):
        raise cached
    return cached


def is_weights_path(pretrained: str, base: Path | None = None) -> bool:
    """Whether `pretrained` names weights on disk (a file or folder found from `base`, default the current
    folder, or text that can only be a path) rather than a pretrained tag."""
    if not pretrained or pretrained == TINY or pretrained in BUILTIN_LOADERS:
        return False
    if pretrained.endswith(WEIGHT_SUFFIXES) or "/" in pretrained or os.sep in pretrained:
        return True
    # a bare name: a file or folder of that name, unless open_clip knows it as a tag (`./openai` is the folder)
    try:
        there = ((base or Path.cwd()) / Path(pretrained).expanduser()).exists()
    except OSError:  # a name no file can have (longer than the file system allows): not a path
        there = False
    return there and not _is_tag(pretrained)


def _is_tag(name: str) -> bool:
    """Whether open_clip lists `name` as a pretrained tag of some architecture."""
    import open_clip

    return any(tag == name for _, tag in open_clip.list_pretrained())


def absolute_weights(pretrained: str, base: Path | None = None) -> str:
    """`pretrained` as an absolute path when it names weights on disk (from `base`, default the current
    folder), so a score's id says which weights made it wherever the command ran; a tag unchanged."""
    if not is_weights_path(pretrained, base):
        return pretrained
    return str(((base or Path.cwd()) / Path(pretrained).expanduser()).resolve())


def check_names(model: str, pretrained: str, device: str = "auto") -> None:
    """What can be known of a (model, pretrained, device) choice without importing open_clip or reading
    weights: a built-in model with other weights, weights that are not there, an architecture open_clip
    does not ship or a tag it lacks, a device name torch would not parse. Raises ClipLoadError saying which
    and what to write. Loading (`load_clip`) still finds what only loading can: weights that cannot be
    fetched offline, a missing GPU."""
    if not _DEVICE.fullmatch(device):
        raise ClipLoadError(f"device={device!r} is not a torch device; expected auto, cpu, cuda, cuda:N or mps")
    if model == TINY or model in BUILTIN_LOADERS:
        if pretrained not in ("", model):
            raise ClipLoadError(f"model={model!r} has only its built-in weights; got pretrained={pretrained!r} "
                                f"(leave pretrained empty or write pretrained={model})")
        return
    if pretrained == TINY or pretrained in BUILTIN_LOADERS:
        raise ClipLoadError(f"pretrained={pretrained!r} goes with model={pretrained!r} only, not model={model!r}")
    path = Path(pretrained).expanduser()
    is_dir, is_file = path_kind(path, ClipLoadError, f"pretrained={pretrained!r}")
    if is_dir:
        if not (path / "open_clip_config.json").is_file():
            raise ClipLoadError(f"pretrained folder {path} has no open_clip_config.json; a folder must hold "
                                f"open_clip_config.json and the weights (open_clip_model.safetensors or "
                                f"open_clip_pytorch_model.bin), or pass the weights file itself")
        return  # the folder's config names the architecture; `model` is only a label
    if not is_file and (pretrained.endswith(WEIGHT_SUFFIXES) or os.sep in pretrained):
        raise ClipLoadError(f"CLIP weights file not found: {pretrained!r} (model={model!r}); give an existing "
                            f"{'/'.join(WEIGHT_SUFFIXES)} file, a folder with open_clip_config.json, or a "
                            f"pretrained tag")
    names = _architectures()
    if model not in names:
        import difflib

        close = difflib.get_close_matches(model, names, n=5)
        raise ClipLoadError(f"unknown CLIP architecture {model!r} (pretrained={pretrained!r}); "
                            f"close open_clip names: {', '.join(close) or 'none'} "
                            f"(all: open_clip.list_models(), or model=toy or model=tiny for a built-in model's own CLIP; "
                            f"a pretrained folder or weights file is looked for from {Path.cwd()}, and "
                            f"{pretrained!r} is neither there)")
    if path.is_file():
        return  # a weights file for this architecture: only loading can tell whether they fit
    import open_clip  # the tags an architecture has: known without its weights (importing costs seconds)

    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        import difflib

        close = difflib.get_close_matches(pretrained, tags, n=3)
        raise ClipLoadError(f"unknown pretrained tag {pretrained!r} for CLIP model {model!r}"
                            + (f"; did you mean {close[0]!r}?" if close else "")
                            + f" known tags: {', '.join(tags) or 'none'}; or pass a local weights file or folder")


_DEVICE = re.compile(r"auto|cpu|mps|(?:cuda|xpu)(?::\d+)?")


def _architectures() -> list[str]:
    """open_clip's architecture names: from open_clip once imported, else from the configs it ships (a
    listing, where importing open_clip costs seconds)."""
    import importlib.util
    import sys

    if "open_clip" in sys.modules:
        return sys.modules["open_clip"].list_models()
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ClipLoadError("open_clip is not installed; pip install open_clip_torch")
    folder = Path(spec.submodule_search_locations[0]) / "model_configs"
    return sorted(p.stem for p in folder.glob("*.json"))


def _load(model: str, pretrained: str, device: str) -> ClipModel:
    check_names(model, pretrained, device)
    if model in BUILTIN_LOADERS:
        return BUILTIN_LOADERS[model](pretrained, device)
    if model == TINY:
        folder = ensure_tiny_clip()
        register_tiny_config(folder)
        weights = folder / TINY_WEIGHTS
        ident = f"{TINY}@{file_sha256(weights)[:16]}"
        return _open(TINY_ARCH, str(weights), device, ident)
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return _open(f"local-dir:{path.resolve()}", None, device, f"dir:{path.resolve()}|{_stat_tag(path)}")
    if path.is_file():
        return _open(model, str(path), device, f"{model}|file:{path.resolve()}|{_stat_tag(path)}")
    return _open(model, pretrained, device, f"{model}|tag:{pretrained}")  # check_names knows the tag


def _open(model_name: str, pretrained: str | None, device: str, ident: str) -> ClipModel:
    import open_clip
    import torch

    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as exc:  # open_clip raises RuntimeError, OSError, ValueError... for the same causes
        hint = ""
        if pretrained and not Path(pretrained).exists():
            hint = (f". The weights for tag {pretrained!r} come from the Hugging Face cache "
                    f"(HF_HOME, default ~/.cache/huggingface) and are downloaded when online. Offline: fetch them "
                    f"once on a machine with network (python -c \"import open_clip; "
                    f"open_clip.create_model_and_transforms('{model_name}', pretrained='{pretrained}')\") and copy "
                    f"the cache over, or pass pretrained=/path/to/weights.safetensors; HF_HUB_OFFLINE=1 makes "
                    f"an offline attempt fail at once instead of after the hub's retries")
        raise ClipLoadError(f"could not load CLIP model={model_name!r} pretrained={pretrained!r}: "
                            f"{type(exc).__name__}: {exc}{hint}") from exc
    clip.eval()
    if not torch.is_floating_point(next(clip.parameters())):
        raise ClipLoadError(f"CLIP model {model_name!r} has non-float weights")
    context = int(getattr(clip, "context_length", 0) or getattr(tokenizer, "context_length", 77))
    return ClipModel(clip, preprocess, tokenizer, context, device, ident)


# -- the built-in tiny CLIP ----------------------------------------------------
def tiny_clip_dir() -> Path:
    return cache_dir() / "clip" / TINY


def ensure_tiny_clip() -> Path:
    """Create the tiny CLIP's folder once (atomically: build in a temp folder, then rename)."""
    from harness.atomic import build_folder_once

    return build_folder_once(tiny_clip_dir(), TINY_WEIGHTS, _build_tiny)


def _build_tiny(folder: Path) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):  # seed a private copy of the RNG, leave the caller's alone
        torch.manual_seed(TINY_SEED)
        clip = open_clip.CLIP(**TINY_CONFIG)
    state = {name: tensor.detach().contiguous() for name, tensor in clip.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / TINY_WEIGHTS))
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CONFIG, indent=2))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}, indent=2))


def register_tiny_config(folder: Path) -> None:
    """Make the tiny architecture known to open_clip under TINY_ARCH."""
    import open_clip

    if TINY_ARCH not in open_clip.list_models():
        open_clip.add_model_config(folder / f"{TINY_ARCH}.json")


def _stat_tag(path: Path) -> str:
    """Cheap change detector for big weight files (size and mtime; hashing GBs each load is too slow); for a
    folder, those of every file in it (a folder's own stat does not change when a file is overwritten)."""
    if path.is_dir():
        return ",".join(f"{p.name}={_stat_tag(p)}" for p in sorted(path.iterdir()) if p.is_file())
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"
