"""One tokenizer object per tokenizer content in a process.

Building a CLIP tokenizer parses megabytes of vocabulary (about 0.9 s on a
2-core CPU, most of a small checkpoint's load time), and every Stable
Diffusion v1 checkpoint and fine-tune ships the same one. Pipelines loaded in
one process (several checkpoints of a study, a prompt search, the benchmark's
two paths) share the tokenizer of identical files; code that changes a
tokenizer (adding tokens for textual inversion) must copy it first. Pipelines only read it;
concurrent encoding is serialised (`generate._ENCODE_LOCK`): a fast tokenizer's
padding settings are per-call state.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str], object] = {}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def shared_tokenizer(pipeline_folder: Path):
    """The tokenizer of a diffusers pipeline folder (the class model_index.json names), shared with every
    earlier load of the same files; None when the folder names no transformers tokenizer."""
    folder = Path(pipeline_folder) / "tokenizer"
    try:
        library, cls_name = json.loads((Path(pipeline_folder) / "model_index.json").read_text())["tokenizer"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if library != "transformers" or not folder.is_dir():
        return None
    key = (cls_name, _digest(folder))
    with _LOCK:
        if key not in _CACHE:
            import transformers

            _CACHE[key] = getattr(transformers, cls_name).from_pretrained(str(folder), local_files_only=True)
        return _CACHE[key]
