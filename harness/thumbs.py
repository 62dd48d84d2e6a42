"""Thumbnails of a run's images: ``RUN/thumbs/<key>.jpg``, written atomically with their image's
modification time and skipped while the times still match, so pages of 10k images are quick to rebuild
and an image put back from a copy or a backup (with an older time) gets a new one; those of images the
page no longer shows are removed."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .columns import is_missing

THUMBS_DIR = "thumbs"
THUMB_PX = 160
UNREADABLE = "unreadable image"


def _without_paths(message: str, image: Path) -> str:
    """`message` with `image`'s path (as given, relative to the working directory, or absolute) shown as
    its file name: the page lives in the run folder, where such a path means nothing."""
    for form in sorted({str(image), str(image.resolve())}, key=len, reverse=True):
        message = message.replace(form, image.name)
    return message


def image_file(run_dir: Path, image: Any, key: str) -> Path:
    if is_missing(image) or image == "":
        return run_dir / "images" / f"{key}.png"
    p = Path(image)
    return p if p.is_absolute() else run_dir / p


def make_thumbnail(image: Path, thumb: Path, size: int = THUMB_PX) -> bool:
    """Write a JPEG of at most `size` px on its long side, stamped with the image's modification time,
    unless one with that stamp exists. True if written."""
    from PIL import Image

    source = image.stat()
    try:
        if thumb.stat().st_mtime_ns == source.st_mtime_ns:
            return False
    except FileNotFoundError:
        pass
    with Image.open(image) as im:
        im.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
        rgb = im.convert("RGB")

    def save(tmp: Path) -> None:
        rgb.save(tmp, format="JPEG", quality=85)
        os.utime(tmp, ns=(source.st_atime_ns, source.st_mtime_ns))

    write_atomic(thumb, save)
    return True


def ensure_thumbnails(run_dir: Path, images: dict[str, Path], size: int = THUMB_PX) -> dict[str, str | None]:
    """Thumbnails for `images` (key -> image file). Returns key -> None, or why there is no thumbnail:
    a short reason, then for an unreadable file ': ' and what Pillow said (naming the file, not its path)."""
    folder = run_dir / THUMBS_DIR
    folder.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, Path]) -> tuple[str, str | None]:
        key, image = item
        if not image.is_file():
            return key, "image file missing"
        try:
            make_thumbnail(image, folder / f"{key}.jpg", size)
        except OSError as exc:  # damaged or unreadable image: show a placeholder, keep the page
            return key, f"{UNREADABLE}: {_without_paths(str(exc), image)}"
        return key, None

    items = list(images.items())
    workers = min(4, os.cpu_count() or 1)
    if len(items) < 32 or workers == 1:
        made = dict(map(one, items))
    else:
        with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding and resizing
            made = dict(pool.map(one, items))
    for old in folder.iterdir():  # thumbnails of images the page no longer shows, and temp files left behind
        if old.is_file() and (old.name.startswith(".") or (old.suffix == ".jpg" and old.stem not in images)):
            old.unlink(missing_ok=True)
    return made
