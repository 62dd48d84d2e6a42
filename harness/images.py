"""Init images as the pipeline sees them: load, fit, hash. Pillow only, no torch.

The rule: apply EXIF rotation, convert to 8-bit RGB (alpha dropped, 16-bit levels scaled; see
`to_rgb`), scale to cover
width x height keeping the aspect ratio (Lanczos), then centre-crop. The hash
of the prepared pixels goes into the job key, so editing an init image, or
changing the size it is fitted to, makes new jobs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image, ImageOps


def fit_cover(img: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to cover width x height keeping the aspect ratio, then centre-crop.

    The scale is max(width / w, height / h); the scaled size is rounded and
    never smaller than the target; the crop box starts at ((W - width) // 2,
    (H - height) // 2). An image already at the target size is returned as is.
    """
    w, h = img.size
    if (w, h) == (width, height):
        return img
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    img = img.resize((new_w, new_h), Image.LANCZOS)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return img.crop((left, top, left + width, top + height))


def load_init_image(path: str | Path, width: int, height: int) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init image {str(path)!r} does not exist")
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        rgb = to_rgb(im)
    return fit_cover(rgb, width, height)


def to_rgb(image):
    """A PIL image as 8-bit RGB. 16- and 32-bit integer images (modes I;16, I;16B, I, as 16-bit PNGs open)
    are taken as 0..65535 and scaled to 0..255 (value / 257, rounded), where Pillow's own conversion clips
    them at 255 and a 16-bit copy of a picture would read as near-white. A float image (mode F, a float
    TIFF) whose values lie in 0..1 is scaled to 0..255; one with larger values is read as 0..255."""
    if not image.mode.startswith(("I", "F")):
        return image.convert("RGB")
    import numpy as np

    levels = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        finite = levels[np.isfinite(levels)]
        levels = np.nan_to_num(levels * (255.0 if finite.size and finite.max() <= 1.0 else 1.0))
    else:
        levels = levels / 257.0
    gray = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


def image_hash(img: Image.Image) -> str:
    """SHA-256 of 'RGB WxH' and the RGB pixel bytes: the `Job.init_hash` of a prepared init image."""
    rgb = img.convert("RGB")
    digest = hashlib.sha256(f"RGB {rgb.width}x{rgb.height}\n".encode("ascii"))
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def init_hash(path: str | Path, width: int, height: int) -> str:
    return image_hash(load_init_image(path, width, height))


_INIT_HASHES: dict[tuple, str] = {}


def current_init_hash(path: str | Path, width: int, height: int) -> str:
    """`init_hash` of the file as it is now, remembered per (file, size, mtime, width, height): the metrics
    check each image's init against the one it was made from, and most runs share a few init images."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, width, height)
    if key not in _INIT_HASHES:
        _INIT_HASHES[key] = init_hash(path, width, height)
    return _INIT_HASHES[key]
