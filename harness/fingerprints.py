"""Content fingerprints of checkpoints: what identifies weights whatever their path.

- single file: the AUTOMATIC1111 "Model hash", the first 10 hex digits of the
  file's SHA-256 (`model_hash`);
- folder (built-ins and hub snapshots too): the first 10 hex digits of SHA-256
  over the sorted lines `relative/path<TAB>sha256` of `model_index.json` and the
  weights and configs of each component it names. Per folder, plain names win
  over variants (`x.fp16.safetensors`), then `*.safetensors` over `*.bin`,
  which is what `from_pretrained` loads. JSON configs are hashed canonically with
  library version stamps removed, so re-saving with a newer diffusers keeps the
  fingerprint.

Full-file SHA-256s are cached in `<cache>/file-hashes.json`, keyed by path, size
and mtime, so multi-GB files are hashed once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

HASH_LENGTH = 10
_CHUNK = 4 << 20


def _hash_cache_path() -> Path:
    from .checkpoints import cache_dir

    return cache_dir() / "file-hashes.json"


def _read_hash_cache() -> dict:
    try:
        return json.loads(_hash_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_hash_cache(entries: dict) -> None:
    path = _hash_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
        tmp.write_text(json.dumps(entries, sort_keys=True, indent=0), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # the cache is an optimisation only


def _hf_blob_sha256(path: Path) -> str | None:
    """HF cache stores LFS files as blobs named by their SHA-256: use it instead of re-hashing."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", target.name):
        return target.name
    return None


def file_sha256(path: str | Path) -> str:
    """Full SHA-256 hex of a file, streamed, cached by (path, size, mtime)."""
    path = Path(path)
    blob = _hf_blob_sha256(path)
    if blob:
        return blob
    real = path.resolve()
    st = real.stat()
    key = str(real)
    cache = _read_hash_cache()
    hit = cache.get(key)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    digest = hashlib.sha256()
    with open(real, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    if st.st_size >= 1 << 20:
        cache = _read_hash_cache()
        cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": value}
        _write_hash_cache(cache)
    return value


def a1111_hash(path: str | Path) -> str:
    """AUTOMATIC1111's "Model hash": the first 10 hex digits of the file's SHA-256."""
    return file_sha256(path)[:HASH_LENGTH]


_VOLATILE_KEYS = {"_diffusers_version", "transformers_version", "_name_or_path", "_commit_hash",
                  "_use_default_values"}


def _json_digest(path: Path) -> str:
    if path.stat().st_size > 256 << 10:  # tokenizer.json and other data files: raw bytes
        return file_sha256(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return file_sha256(path)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _VOLATILE_KEYS}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_variant(name: str) -> bool:
    return name.count(".") > 1  # diffusion_pytorch_model.fp16.safetensors


def fingerprint_files(folder: Path) -> list[Path]:
    """The files a folder fingerprint covers (see module docstring)."""
    folder = Path(folder)
    index = folder / "model_index.json"
    chosen = [index]
    components = json.loads(index.read_text(encoding="utf-8"))
    for comp, value in sorted(components.items()):
        if comp.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        sub = folder / comp
        if not sub.is_dir():
            continue
        files = sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith("."))
        weights = [p for p in files if p.suffix in (".safetensors", ".bin")]
        weights = [p for p in weights if not is_variant(p.name)] or weights  # a plain .bin beats a variant
        weights = [p for p in weights if p.suffix == ".safetensors"] or weights
        configs = [p for p in files if p.suffix in (".json", ".txt")]
        chosen += weights + configs
    return chosen


def folder_fingerprint(folder: str | Path) -> str:
    folder = Path(folder)
    lines = []
    for path in fingerprint_files(folder):
        digest = _json_digest(path) if path.suffix == ".json" else file_sha256(path)
        lines.append(f"{path.relative_to(folder).as_posix()}\t{digest}\n")
    return hashlib.sha256("".join(sorted(lines)).encode("utf-8")).hexdigest()[:HASH_LENGTH]
