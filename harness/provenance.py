"""Provenance that travels inside every PNG, and the atomic PNG writer.

Each image carries two text chunks:

- ``parameters``: the infotext that AUTOMATIC1111's web UI writes and reads, so
  the image opens with its settings in the tools people already use::

      a red fox, 35mm photograph
      Negative prompt: blurry
      Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: 1a2b3c4d5e, Model: tiny

- ``harness``: canonical JSON of :func:`provenance_record` (the full job, factor
  choices, both seeds, library versions, batch/device settings, torch threads). This chunk is
  the exact record; the infotext is a convenience view with the limits of its
  format (its readers strip whitespace around each prompt line, and a prompt
  line that itself starts with ``Negative prompt:`` reads back as the start of
  the negative prompt).

No timestamps go into the PNG, so identical pixels and settings give identical
files. Only the standard library is imported at module level; Pillow and numpy
are imported by the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

from . import __version__
from .atomic import discard, name_the_target
from .core import Job, canonical_json

PARAMETERS_CHUNK = "parameters"
PROVENANCE_CHUNK = "harness"
PROVENANCE_FORMAT = 1
# Distributions whose versions can change pixels or scores. Looked up through
# importlib.metadata, so none of them is imported.
TRACKED_DISTRIBUTIONS = ("torch", "diffusers", "transformers", "open_clip_torch", "pillow", "numpy")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEMP_NAME = re.compile(r"^\.(?P<final>.+)\.tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]+)$")


# --------------------------------------------------------------------------
# AUTOMATIC1111 infotext
# --------------------------------------------------------------------------

def _quote(value: str) -> str:
    """Quote a parameter value the way A1111 does (a JSON string) when needed.

    A1111 quotes values containing ``,``, ``:`` or a newline. We also quote
    values that start with ``"`` or have surrounding or non-space whitespace,
    which A1111's reader would otherwise misread or trim; its reader unquotes
    any value in double quotes, so these stay readable there.
    """
    needs = (
        any(c in value for c in ",:\n")
        or value.startswith('"')
        or value != value.strip()
        or any(c.isspace() and c != " " for c in value)
    )
    return json.dumps(value, ensure_ascii=False) if needs else value


def model_hash(fingerprint: str) -> str:
    """The short hash shown as ``Model hash``: the first 10 hex digits, as A1111 shows.

    A fingerprint written as ``algorithm:hexdigest`` drops its ``algorithm:`` prefix.
    """
    digest = fingerprint.split(":", 1)[1] if ":" in fingerprint else fingerprint
    return digest[:10]


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _text_safe(prompt: str) -> str:
    """`prompt` with the control characters a PNG text chunk may not carry (NUL, and the others but tab
    and line feed) shown as U+FFFD; the ``harness`` chunk keeps the exact text."""
    return _CONTROL.sub("\ufffd", prompt)


def a1111_parameters(job: Job, *, sampler: str, model_name: str, schedule: str | None = None,
                     extra: Mapping[str, Any] | None = None, model_hash_override: str | None = None) -> str:
    """The ``parameters`` text of AUTOMATIC1111's web UI for `job`.

    Line 1 (and following, for multi-line prompts) is the prompt, then a
    ``Negative prompt:`` line when the negative prompt is non-empty, then one
    line of ``Key: value`` pairs. ``Schedule type`` follows the sampler when
    `schedule` is given; ``Denoising strength`` appears for img2img only.
    `extra` pairs are appended after the standard ones, in order.
    """
    for name, value in (("sampler", sampler), ("model_name", model_name)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"a1111_parameters: {name} must be a non-empty string, got {value!r}")
    pairs: dict[str, str] = {
        "Steps": str(job.steps),
        "Sampler": sampler,
        **({"Schedule type": schedule} if schedule else {}),
        "CFG scale": repr(float(job.guidance)),
        "Seed": str(job.seed),
        "Size": f"{job.width}x{job.height}",
        "Model hash": model_hash_override or model_hash(job.fingerprint),
        "Model": model_name,
    }
    if job.mode == "img2img":
        if job.strength is None:
            raise ValueError(f"a1111_parameters: img2img job {job.key[:12]} has strength=None; "
                             "img2img jobs need a denoising strength in (0, 1]")
        pairs["Denoising strength"] = repr(float(job.strength))
    from .emphasis import has_emphasis
    if job.emphasis is None and (has_emphasis(job.prompt) or has_emphasis(job.negative_prompt)):
        pairs["Emphasis"] = "None"  # made with emphasis = "literal": the web UI reads the brackets as text too
    for key, value in (extra or {}).items():
        if key in pairs:
            raise ValueError(f"a1111_parameters: extra key {key!r} would overwrite a standard "
                             f"parameter; standard keys are {sorted(pairs)}")
        if not re.fullmatch(r"\w[\w \-/]+", key):
            raise ValueError(f"a1111_parameters: extra key {key!r} is not a valid infotext key "
                             "(letters, digits, spaces, '-', '/'; at least two characters)")
        pairs[key] = str(value)
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in pairs.items())
    negative = f"\nNegative prompt: {_text_safe(job.negative_prompt)}" if job.negative_prompt else ""
    return f"{_text_safe(job.prompt)}{negative}\n{line}"


# --------------------------------------------------------------------------
# Provenance record
# --------------------------------------------------------------------------

@lru_cache(maxsize=None)
def library_versions() -> dict[str, str | None]:
    """Python, harness and installed versions of the tracked distributions (None if absent)."""
    from importlib import metadata  # imported here: it costs tens of milliseconds

    versions: dict[str, str | None] = {"python": platform.python_version(), "harness": __version__}
    for dist in TRACKED_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def a1111_model_name(name: str, kind: str) -> str:
    """The infotext's ``Model``: what A1111 writes for a checkpoint file, its name without folder or
    extension (no local path goes into a shared image); a folder's own name; a hub id or built-in as given."""
    from pathlib import PurePath

    short = PurePath(name).stem if kind == "file" else PurePath(name).name if kind == "folder" else name
    return short or name


def provenance_record(job: Job, checkpoint: Mapping[str, Any] | None = None, **extra: Any) -> dict:
    """Everything needed to redo and to analyse one image, as a JSON-ready dict.

    `extra` holds what is not in the job key but is worth keeping (batch_size,
    slot, device, dtype actually used, memory settings, and ``torch_threads`` and
    ``streams``: the torch intra-op thread count and generation streams, which
    CPU pixels can depend on, so an image is reproduced bit for bit with the
    same ones); it is stored under ``"run"``. `checkpoint` adds what the job key holds only as the
    fingerprint: the checkpoint's kind, where it was loaded from and, for a single file, its config.
    The prompt template, the negative template and the prompt seed are read from ``job.meta["template"]``,
    ``job.meta["negative_template"]`` and ``job.meta["prompt_seed"]`` (None when absent); a later stage's
    image has its stage's templates there (`stages.children`).
    """
    record = {
        "format": PROVENANCE_FORMAT,
        "key": job.key,
        "job": job.to_dict(),
        "factors": dict(job.factors),
        "template": job.meta.get("template"),
        "negative_template": job.meta.get("negative_template"),
        "seeds": {"image": job.seed, "prompt": job.meta.get("prompt_seed")},
        "checkpoint": {"name": job.checkpoint, "fingerprint": job.fingerprint, **(checkpoint or {})},
        "versions": dict(library_versions()),
        "run": dict(extra),
    }
    try:
        canonical_json(record)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"provenance_record: job {job.key[:12]} has a value that is not "
                         f"JSON-serialisable (or is NaN) in its meta or extras: {exc}") from exc
    return record


# --------------------------------------------------------------------------
# Atomic PNG writing and reading
# --------------------------------------------------------------------------

def temp_path_for(path: Path) -> Path:
    """A unique temp name beside `path` that :func:`is_temp_name` recognises."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


def is_temp_name(name: str) -> bool:
    """True for names made by :func:`temp_path_for` (left behind only by a crash)."""
    return _TEMP_NAME.match(name) is not None


def write_durably(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """`write(f)` into a temp file beside `path`, flushed, fsynced and renamed over `path`, so `path` is
    absent or complete (the temp file is removed on any error). The caller fsyncs the folder.

    An OSError (disk full, quota, file too large) names `path`: a failed write() names no file, and
    the temp file it names is gone."""
    tmp = temp_path_for(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        discard(tmp)
        if isinstance(exc, OSError):
            name_the_target(exc, path, tmp)
        raise


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_pil(image: Any):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"write_png_atomic: image must be a PIL.Image or an HxWx3 uint8 array, "
                        f"got {type(image).__name__}")
    if len(shape) != 3 or shape[2] != 3 or str(dtype) != "uint8":
        raise ValueError(f"write_png_atomic: array image must be HxWx3 uint8, got shape "
                         f"{tuple(shape)} dtype {dtype}")
    return Image.fromarray(image)  # HxWx3 uint8 is RGB


def write_png_atomic(path: str | os.PathLike, image: Any, *, parameters: str, provenance: Mapping,
                     compress_level: int = 1) -> None:
    """Write a PNG with provenance chunks so that `path` is either absent or complete.

    The image goes to a temp file in the same folder, is flushed and fsynced,
    renamed over `path`, and the folder is fsynced: after this returns the file
    is durable, so a ledger may mark its job done. A crash leaves at most a temp
    file (see :func:`is_temp_name`), never a partial `path`.
    """
    from PIL import PngImagePlugin

    path = Path(path)
    if not 0 <= compress_level <= 9:
        raise ValueError(f"write_png_atomic: compress_level must be 0..9, got {compress_level}")
    pil = _as_pil(image)
    info = PngImagePlugin.PngInfo()
    # add_text writes tEXt for Latin-1 text and falls back to iTXt (UTF-8) otherwise.
    info.add_text(PARAMETERS_CHUNK, parameters)
    info.add_text(PROVENANCE_CHUNK, canonical_json(dict(provenance)))
    write_durably(path, lambda f: pil.save(f, format="PNG", pnginfo=info, compress_level=compress_level))
    fsync_dir(path.parent)


def read_png_text(path: str | os.PathLike) -> dict[str, str]:
    """All tEXt/zTXt/iTXt chunks of a PNG as plain strings."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format != "PNG":
            raise ValueError(f"read_png_text: {path} is a {im.format} file, not a PNG")
        return {str(k): str(v) for k, v in im.text.items()}


def read_provenance(path: str | os.PathLike) -> dict:
    """The ``harness`` provenance record stored in a PNG by :func:`write_png_atomic`."""
    text = read_png_text(path)
    if PROVENANCE_CHUNK not in text:
        raise ValueError(f"read_provenance: {path} has no {PROVENANCE_CHUNK!r} text chunk "
                         f"(chunks present: {sorted(text)}); it was not written by write_png_atomic")
    return json.loads(text[PROVENANCE_CHUNK])


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_png(path: str | os.PathLike, *, decode: bool = False) -> str | None:
    """None when `path` is a complete PNG, else the reason it is not.

    Walks every chunk and checks its CRC, requires IHDR first, at least one
    IDAT, IEND last and nothing after it: this catches truncated and damaged
    files without decoding pixels. `decode=True` also decodes the pixels.
    """
    return check_png_digest(path, decode=decode)[0]


def check_png_digest(path: str | os.PathLike, *, decode: bool = False) -> tuple[str | None, str | None]:
    """(`check_png`'s answer, the SHA-256 of the bytes it read): one read of the file for both."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "missing", None
    except OSError as exc:
        return f"unreadable: {exc}", None
    return _png_problem(path, data, decode), hashlib.sha256(data).hexdigest()


def _png_problem(path: str | os.PathLike, data: bytes, decode: bool) -> str | None:
    if not data.startswith(PNG_SIGNATURE):
        return "not a PNG (bad signature)"
    pos, first, seen_idat = len(PNG_SIGNATURE), True, False
    while True:
        if pos + 8 > len(data):
            return f"truncated at byte {pos} (no IEND chunk)"
        length = int.from_bytes(data[pos:pos + 4], "big")
        ctype = data[pos + 4:pos + 8]
        end = pos + 8 + length + 4
        if end > len(data):
            return f"truncated inside the {ctype.decode('latin-1')!r} chunk at byte {pos}"
        crc = int.from_bytes(data[end - 4:end], "big")
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            return f"CRC mismatch in the {ctype.decode('latin-1')!r} chunk at byte {pos}"
        if first and ctype != b"IHDR":
            return "first chunk is not IHDR"
        first = False
        seen_idat |= ctype == b"IDAT"
        pos = end
        if ctype == b"IEND":
            break
    if not seen_idat:
        return "no IDAT chunk"
    if pos != len(data):
        return f"{len(data) - pos} bytes after IEND"
    if decode:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
        except Exception as exc:  # any decoder failure is a reason, not a crash
            return f"does not decode: {exc}"
    return None
