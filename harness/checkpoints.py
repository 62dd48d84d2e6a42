"""Checkpoint registry: names -> local weights and content fingerprints.

A checkpoint spec (as written in an experiment) is resolved in this order:

1. a built-in name (`tiny`, `sd15-random`, or one added with `register_builtin`);
2. an alias (`sd15` -> `stable-diffusion-v1-5/stable-diffusion-v1-5`, ...);
3. an existing local path: a diffusers folder (has `model_index.json`) or a single
   `.ckpt` / `.safetensors` file; relative paths are taken from `base_dir`;
4. a Hugging Face hub id `owner/name[@revision]`, looked up in the local HF cache
   only. Nothing is ever downloaded here: fetch models on a connected machine with
   `huggingface-cli download <id>` and copy the cache, or point to a local folder.

`locate` checks a spec that far without building, hashing or loading weights (the
experiment loader calls it, so a misspelt checkpoint is reported with the file's
other problems, with a "did you mean"); `resolve` then builds a built-in on
first use and fingerprints the weights.

What a folder or file holds is read in `harness.checkpoint_files`; fingerprints
(content digests of single files and folders) are computed in
`harness.fingerprints`; a resolved checkpoint is loaded by `harness.pipelines`,
with a scheduler from `harness.schedulers`.

Torch and diffusers are imported inside functions: `import harness.checkpoints`
stays cheap for the planner.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .checkpoint_files import (SD2_REPOS, CheckpointError, check_pipeline_folder, folder_family, sd2_assumption,
                               single_file_config_repo, single_file_family, single_file_keys)
from .checks import path_kind
from .fingerprints import HASH_LENGTH, a1111_hash, file_sha256, folder_fingerprint

CACHE_ENV = "HARNESS_CACHE"
MODES = ("txt2img", "img2img")
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors")


def cache_dir() -> Path:
    """`$HARNESS_CACHE`, else `~/.cache/harness`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "harness"


@dataclass(frozen=True)
class CheckpointRef:
    """A resolved checkpoint. `name` is the spec as the user wrote it."""

    name: str
    kind: str            # "builtin" | "hub" | "folder" | "file"
    source: str          # hub id (with @revision if given) or absolute path
    fingerprint: str     # content hash, enters every job key
    native_size: int     # training resolution in pixels (512 v1/tiny, 768 sd21)
    family: str          # "sd1" | "sd2" | "tiny" | "unknown"
    config: str | None = None  # single files: diffusers config folder or hub id
    model_hash: str = ""       # what A1111 shows as "Model hash" (= fingerprint for folders)
    # What was assumed to build it and may be wrong (an SD2 single file taken as the 768 px v-prediction
    # model): sentences for `plan` and `run` to show; not part of the identity.
    notes: tuple[str, ...] = field(default=(), compare=False)


# ---------------------------------------------------------------- built-ins

@dataclass(frozen=True)
class Builtin:
    name: str
    builder: Callable[[Path], None]   # writes a full diffusers pipeline folder at the given path
    folder: str                       # sub-folder of <cache>/models; bump its version when the builder changes
    native_size: int
    family: str
    description: str = ""


BUILTINS: dict[str, Builtin] = {}


def register_builtin(name: str, builder: Callable[[Path], None], *, folder: str, native_size: int = 512,
                     family: str = "unknown", description: str = "") -> Builtin:
    """Add a built-in checkpoint built on first use by `builder(path)`."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.\-]*", name):
        raise CheckpointError(f"register_builtin(name={name!r}): use lowercase letters, digits, '.', '_' or '-'")
    spec = Builtin(name, builder, folder, native_size, family, description)
    BUILTINS[name] = spec
    return spec


def _build_tiny(path: Path) -> None:
    from harness.tiny import build_tiny

    build_tiny(path)


def _build_sd15_random(path: Path) -> None:
    from harness.tiny import build_sd15_random

    build_sd15_random(path)


def _build_sd2_random(path: Path) -> None:
    from harness.tiny import build_sd2_random

    build_sd2_random(path)


register_builtin("tiny", _build_tiny, folder="tiny-v1", native_size=512, family="tiny",
                 description="2.8 M-parameter random SD-style model for demos and tests (CPU friendly)")
register_builtin("sd15-random", _build_sd15_random, folder="sd15-random-v1", native_size=512, family="sd1",
                 description="SD v1.5 shapes with random fp16 weights, for GPU benchmarks (2 GB)")
register_builtin("sd2-random", _build_sd2_random, folder="sd2-random-v1", native_size=512, family="sd2",
                 description="SD v2 (512 px base) shapes with random fp16 weights: 64-wide attention heads, for GPU "
                             "benchmarks (2.6 GB)")


def builtin_folder(name: str) -> Path:
    """The folder of built-in `name`, building it on first use.

    The build happens in a temporary sibling folder that is renamed into place,
    so readers never see a half-written model; if another process finished first,
    its folder is kept and ours is discarded.
    """
    if name not in BUILTINS:
        raise CheckpointError(f"unknown built-in checkpoint {name!r}; built-ins are: {', '.join(sorted(BUILTINS))}")
    spec = BUILTINS[name]
    from .atomic import build_folder_once

    try:
        return build_folder_once(cache_dir() / "models" / spec.folder, "model_index.json", spec.builder)
    except RuntimeError as exc:
        raise CheckpointError(f"builder of built-in {name!r}: {exc}") from exc


# ---------------------------------------------------------------- aliases and hub

ALIASES: dict[str, str] = {
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd1.4": "CompVis/stable-diffusion-v1-4",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
    "sd2.1-base": "stabilityai/stable-diffusion-2-1-base",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sd2.1": "stabilityai/stable-diffusion-2-1",
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?")


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _split_revision(hub_id: str) -> tuple[str, str | None]:
    repo, _, rev = hub_id.partition("@")
    return repo, (rev or None)


def hub_snapshot(hub_id: str, *, name: str | None = None) -> Path:
    """The local snapshot folder of `owner/name[@revision]` in the HF cache; never downloads."""
    from huggingface_hub import snapshot_download

    repo, rev = _split_revision(hub_id)
    try:
        path = Path(snapshot_download(repo, revision=rev, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, validation errors, offline errors
        label = f"{name!r} (hub id {hub_id!r})" if name and name != hub_id else repr(hub_id)
        raise CheckpointError(
            f"checkpoint {label} is not in the Hugging Face cache at {hf_cache_dir()} and this harness never "
            f"downloads. Fix: on a connected machine run `huggingface-cli download {repo}"
            f"{' --revision ' + rev if rev else ''}` (or `hf download {repo}`) and copy the cache here (or set "
            f"HF_HOME / HF_HUB_CACHE to where it is), "
            f"or point the checkpoint at a local diffusers folder or a .safetensors/.ckpt file. ({type(exc).__name__})"
        ) from exc
    if not (path / "model_index.json").is_file():
        raise CheckpointError(f"hub snapshot {hub_id!r} at {path} has no model_index.json; it is not a complete "
                              f"diffusers pipeline. Re-download it with `huggingface-cli download {repo}`")
    return path


# ---------------------------------------------------------------- resolve

def _looks_like_path(spec: str) -> bool:
    """True for specs that can only be paths (a hub id is exactly `owner/name`)."""
    return spec.startswith((".", "/", "~")) or spec.endswith(SINGLE_FILE_SUFFIXES) or "\\" in spec \
        or spec.count("/") > 1


def _valid_names() -> str:
    return (f"built-ins: {', '.join(sorted(BUILTINS))}; aliases: {', '.join(sorted(ALIASES))}; "
            f"or a diffusers folder, a .safetensors/.ckpt file, or a hub id 'owner/name' in the HF cache")


def _did_you_mean(word: str, candidates) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when none is close: the same letters in
    another order (`tyni`), else the closest by difflib."""
    candidates = sorted(set(candidates))
    close = ([c for c in candidates if sorted(c) == sorted(word)]
             or difflib.get_close_matches(word, candidates, n=1, cutoff=0.6))
    return f" (did you mean {close[0]!r}?)" if close else ""


def _cached_hub_ids() -> list[str]:
    """'owner/name' of every model repo in the local HF cache (for a "did you mean")."""
    try:
        return [d.name[len("models--"):].replace("--", "/", 1) for d in hf_cache_dir().iterdir()
                if d.name.startswith("models--")]
    except OSError:
        return []


def _near_paths(spec: str, path: Path) -> str:
    """A "did you mean" for a path that does not exist: the closest name in its (existing) folder,
    written the way the spec was."""
    try:
        siblings = [q.name for q in path.parent.iterdir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, sorted(siblings), n=1, cutoff=0.6)
    if not close:
        return ""
    head = spec.rstrip("/\\")[: -len(path.name)] if spec.rstrip("/\\").endswith(path.name) else ""
    return f" (did you mean {head + close[0]!r}?)"


@dataclass(frozen=True)
class Location:
    """Where a checkpoint spec points, found without building, hashing or loading any weights."""

    kind: str                  # "builtin" | "hub" | "folder" | "file"
    source: str                # built-in name, hub id (with @revision) or absolute path
    path: Path | None = None   # the folder or file to read (None for a built-in not built yet)
    config: str | None = None  # single files: the config, made absolute


def locate(spec: str, *, base_dir: Path | None = None, config: str | None = None) -> Location:
    """Check a checkpoint spec as far as it can be checked cheaply (no build, no hashing, no torch): the
    name, alias, path or hub snapshot exists and is the right kind of thing (a pipeline folder, a
    .safetensors header of an SD 1.x/2.x model). A CheckpointError says what is wrong, with a "did you
    mean" when a valid name is close. Experiment validation calls it for every checkpoint; `resolve`
    calls it first."""
    if not isinstance(spec, str) or not spec.strip():
        raise CheckpointError(f"checkpoint spec {spec!r} is empty; expected one of the {_valid_names()}")
    spec_s = spec.strip()
    if config is not None and not spec_s.endswith(SINGLE_FILE_SUFFIXES):
        raise CheckpointError(f"checkpoint {spec!r}: config={config!r} applies only to single .safetensors/.ckpt "
                              f"files; diffusers folders, hub ids and built-ins carry their own configs")
    if spec_s in BUILTINS:
        return Location("builtin", spec_s)
    if spec_s.lower() in ALIASES:
        return _locate_hub(spec, ALIASES[spec_s.lower()])
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    path = Path(spec_s).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    is_dir, is_file = path_kind(path, CheckpointError, f"checkpoint {spec!r}")
    if is_dir:
        if not (path / "model_index.json").is_file():
            raise CheckpointError(f"checkpoint {spec!r}: folder {path} has no model_index.json, so it is not a "
                                  f"diffusers pipeline folder (single-file checkpoints are .safetensors/.ckpt files)")
        check_pipeline_folder(path, spec)
        return Location("folder", str(path), path)
    if is_file:
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise CheckpointError(f"checkpoint {spec!r}: {path} is a file but not {' or '.join(SINGLE_FILE_SUFFIXES)}")
        config = _absolute_config(config, base, spec)
        if path.suffix == ".safetensors":  # its header is cheap to read; a .ckpt needs torch (`resolve` reads it)
            _file_family(spec, path)
        return Location("file", str(path), path, config)
    if _HUB_ID.fullmatch(spec_s) and not spec_s.endswith(SINGLE_FILE_SUFFIXES):
        return _locate_hub(spec, spec_s, local_path=path)
    if _looks_like_path(spec_s):
        raise CheckpointError(f"checkpoint {spec!r}: no file or folder at {path}{_near_paths(spec_s, path)}")
    raise CheckpointError(f"unknown checkpoint {spec!r}{_did_you_mean(spec_s, [*BUILTINS, *ALIASES, *_local(base)])}; "
                          f"valid: {_valid_names()}")


def _local(folder: Path) -> list[str]:
    """Names of the checkpoints in `folder` (diffusers folders and single files), for a "did you mean"."""
    try:
        return [p.name for p in folder.iterdir()
                if (p / "model_index.json").is_file() or p.suffix in SINGLE_FILE_SUFFIXES and p.is_file()]
    except OSError:
        return []


def resolve(spec: str, *, base_dir: Path | None = None, config: str | None = None) -> CheckpointRef:
    """Turn a checkpoint spec into a `CheckpointRef` (see the module docstring for the order): `locate`,
    then build a built-in on first use and fingerprint the weights."""
    loc = locate(spec, base_dir=base_dir, config=config)
    if loc.kind == "builtin":
        b = BUILTINS[loc.source]
        folder = builtin_folder(loc.source)
        fp = folder_fingerprint(folder)
        return CheckpointRef(spec, "builtin", str(folder), fp, b.native_size, b.family, model_hash=fp)
    if loc.kind == "file":
        return _resolve_file(spec, loc.path, loc.config)
    family, native = _folder_family(loc.path)
    fp = folder_fingerprint(loc.path)
    return CheckpointRef(spec, loc.kind, loc.source, fp, native, family, model_hash=fp)


def _folder_family(folder: Path) -> tuple[str, int]:
    """`folder_family`; a folder it cannot place (a text width neither SD1's nor SD2's) takes the family of
    the built-in whose UNet it has (a copy or fine-tune of `toy`), so `plan` prices its steps as that
    built-in's rather than as SD1's."""
    family, native = folder_family(folder)
    if family == "unknown":
        shape = _unet_shape(folder)
        for b in BUILTINS.values():
            built = cache_dir() / "models" / b.folder
            if b.family != "unknown" and shape and _unet_shape(built) == shape:
                return b.family, native
    return family, native


def _unet_shape(folder: Path) -> dict:
    """A pipeline folder's UNet config less its bookkeeping (`_diffusers_version`, ...); {} without one."""
    try:
        config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in config.items() if not k.startswith("_")} if isinstance(config, dict) else {}


def _locate_hub(name: str, hub_id: str, *, local_path: Path | None = None) -> Location:
    try:
        folder = hub_snapshot(hub_id, name=name)
    except CheckpointError as exc:
        if local_path is not None:  # `owner/name` may have meant a folder: the closest one there first
            hint = _near_paths(name, local_path) or _did_you_mean(hub_id, _cached_hub_ids())
            raise CheckpointError(f"{exc} (there is no local folder {local_path} either){hint}") from exc.__cause__
        raise
    check_pipeline_folder(folder, name)
    return Location("hub", hub_id, folder)


def check_buildable(spec: str, loc: Location) -> None:
    """What `locate` leaves to loading, checked for a run about to load it: a .safetensors file with no
    config of its own needs its family's reference configs in the HF cache (`default_single_file_config`),
    and a config given as a hub id needs its snapshot there."""
    if loc.kind != "file":
        return
    config = None if loc.config is None else Path(loc.config)
    if config is None:
        if loc.path.suffix == ".safetensors":
            default_single_file_config(spec, loc.path, _file_family(spec, loc.path))
    elif config.is_dir():
        if not (config / "model_index.json").is_file():
            raise CheckpointError(f"config={loc.config!r} for {spec!r}: folder has no model_index.json; expected a "
                                  f"diffusers pipeline folder of the same architecture")
    elif config.is_file():
        raise CheckpointError(_file_config_refusal(loc.config, spec))
    else:  # a hub id: its snapshot must be cached
        hub_snapshot(loc.config, name=f"config for {spec}")


def scheduler_config(loc: Location) -> dict:
    """The scheduler config a located checkpoint's pipeline starts from, read without diffusers: its own
    folder's, or for a single file the folder or hub snapshot named by its `config`. {} for a built-in, for a
    single file built with its family's reference config (neither changes the noise schedule), and where
    the file is missing or is not JSON (loading reports that)."""
    if loc.kind in ("folder", "hub"):
        folder = loc.path
    elif loc.kind == "file" and loc.config is not None:
        folder = Path(loc.config) if Path(loc.config).is_dir() else hub_snapshot(loc.config, name=loc.source)
    else:
        return {}
    try:
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def default_single_file_config(name: str, path: Path, family: str) -> Path:
    """The diffusers config folder a single file of `family` is built with when it names none: the
    reference repo's snapshot in the HF cache (for SD2, the one the file declares, else the 768 px
    v-prediction model). A CheckpointError saying how to get it, or how to name a local one, when it is not
    there; for SD2 it names both releases, since which one the file is is an assumption."""
    repo, _, declared = single_file_config_repo(family, path)
    try:
        return hub_snapshot(repo)
    except CheckpointError as exc:
        which = "" if declared else f" ({sd2_assumption(name)})"
        raise CheckpointError(
            f"single-file checkpoint {name!r} ({path}) looks like an {family.upper()} model, and building "
            f"its pipeline needs the diffusers configs of {repo!r}{which} (model_index.json, component "
            f"config.json files, tokenizer), which are not in the Hugging Face cache at {hf_cache_dir()}. Fix one "
            f"of: (1) on a connected machine run `huggingface-cli download {repo} --include '*.json' '*.txt'` and "
            f"copy the cache here; (2) name a local diffusers folder of the same architecture in the experiment: "
            f"[checkpoint.\"{name}\"] config = \"FOLDER\" (in Python: resolve(..., config=FOLDER))"
        ) from exc.__cause__


def _file_config_refusal(config: str, name: str) -> str:
    """Why a file is no `config`: diffusers builds a single file from an original LDM .yaml with the
    scheduler and tokenizer of its cached reference repo, not the yaml's (its `parameterization: "v"` is
    dropped for epsilon), and without that repo it fails deep inside diffusers."""
    what = ("an original LDM .yaml is not honoured (its prediction type and schedule would be taken from the "
            "reference repo instead)" if Path(config).suffix in (".yaml", ".yml") else "a file is not a config")
    return (f"config={config!r} for {name!r}: {what}; give a diffusers folder of the same architecture (one "
            f"with model_index.json, e.g. a cached hub id such as 'stabilityai/stable-diffusion-2-1-base', or "
            f"a pipeline saved with save_pretrained)")


def _absolute_config(config: str | None, base: Path, name: str) -> str | None:
    if config is None:
        return None
    p = Path(config).expanduser()
    p = p if p.is_absolute() else base / p
    if p.is_file():
        raise CheckpointError(_file_config_refusal(config, name))
    if p.exists():
        return str(p.resolve())
    if _HUB_ID.fullmatch(config):
        return config
    raise CheckpointError(f"config={config!r}: no such file or folder at {p}, and not a hub id 'owner/name'; expected "
                          f"a diffusers folder with model_index.json or a hub id in the HF cache")


def _file_family(name: str, path: Path) -> str:
    """'sd1' | 'sd2' from a single file's tensor names; a CheckpointError naming the file otherwise."""
    try:
        return single_file_family(single_file_keys(path))
    except CheckpointError as exc:
        where = "" if str(exc).startswith(str(path)) else f" ({path})"
        raise CheckpointError(f"checkpoint {name!r}{where}: {exc}") from None


def _config_native(name: str, family: str, path: Path, config: str | None) -> tuple[int, tuple[str, ...]]:
    """(native size, notes) of a single file of `family`: SD2's from the reference repo it is built with
    (the one named as `config`, else the one the file declares), with a note when that is an assumption."""
    if family != "sd2":
        return 512, ()
    if config:
        repo = _split_revision(config)[0]
        return next((px for r, px, _ in SD2_REPOS.values() if r == repo), 768), ()
    _, native, declared = single_file_config_repo(family, path)
    return native, (() if declared else (f"checkpoint {name}: {sd2_assumption(name)}",))


def _resolve_file(name: str, path: Path, config: str | None) -> CheckpointRef:
    family = _file_family(name, path)
    native, notes = _config_native(name, family, path, config)
    if config and Path(config).is_dir():
        cfg_family, native = _folder_family(Path(config))  # a copy of a built-in: that built-in's family
        family = cfg_family if cfg_family != "unknown" else family
    model_hash = a1111_hash(path)
    fp = model_hash
    if config:
        # The config changes pixels (e.g. the prediction type), so it is part of the identity.
        cfg = Path(config)
        cfg_fp = folder_fingerprint(cfg) if cfg.is_dir() else (file_sha256(cfg) if cfg.is_file() else config)
        fp = hashlib.sha256(f"{file_sha256(path)}\n{cfg_fp}".encode()).hexdigest()[:HASH_LENGTH]
    return CheckpointRef(name, "file", str(path), fp, native, family, config=config, model_hash=model_hash,
                         notes=notes)


import harness.toy  # noqa: E402,F401  (registers the `toy` built-in, trained on harness.toy.world)
