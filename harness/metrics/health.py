"""Image health: catches the broken images diffusion pipelines produce silently.

Flags:

- `nonfinite`: NaN or inf pixels in a float array (fp16 VAE overflow; only
  float inputs can carry them, a saved PNG cannot);
- `all_black`: max <= 2 levels (of 255), or mean < 2 levels with no pixel above
  32: the fp16 VAE NaN image after conversion to uint8, and the safety
  checker's replacement image, also with an invisible watermark on it (which
  lifts a few pixels of a black image to at most 27 levels). A dark image with
  a few bright points (stars in a night sky) is not black, though with only a
  handful of single pixels it is still `near_uniform` (below);
- `near_uniform`: every channel's standard deviation < 2 levels, taken over the
  means of 8x8 pixel blocks: flat grey or flat colour images from a collapsed
  sampler or decoder. Block means keep an invisible watermark (a fine pattern of
  up to ~4 levels' standard deviation, `watermark = "sdv1"`) from hiding a flat
  image, so the runner's check before embedding and this metric on the saved
  PNG agree. An image whose pixels themselves spread by 16 levels or more in some
  channel is a pattern finer than a block (1-pixel stripes, a 4-pixel
  checkerboard), not flat;
- `unreadable`: the file exists but is not a decodable image.

Metric value: 1.0 healthy, 0.0 unhealthy (flags in the detail). A missing file
is NaN with a reason: nothing was made, so there is nothing to judge. So is an
image smaller than 16 pixels in either side (two blocks): its block means
cannot spread, so any content would read as flat. `check_array` on such an
array (the runner's check) judges only `nonfinite` and `all_black`. 16-bit images are scaled to
8 bits first (see `harness.images.to_rgb`).

`check_array(arr)` runs the same checks on an array in memory, for the runner
right after generation. uint8 arrays are in levels 0..255; float arrays are
taken to be in [0, 1] (diffusers' `output_type="np"`) unless another
`value_range` is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.images import to_rgb
from harness.metrics.base import MISSING_FILE, Item, Metric, MetricInfo, register

BLACK_MAX = 2.0    # levels: brightest pixel at most this -> black
BLACK_MEAN = 2.0   # levels: mean below this -> black, unless some pixel is above BLACK_PEAK
BLACK_PEAK = 32.0  # levels: above a watermark's lift of a black image (27), below a star
UNIFORM_STD = 2.0  # levels: every channel's std (of block means) below this -> near uniform
PATTERN_STD = 16.0  # levels: a channel whose pixels spread more is a pattern finer than a block, not flat
UNIFORM_BLOCK = 8  # pixels: near-uniformity is judged on the means of blocks this size
MIN_SIDE = 2 * UNIFORM_BLOCK  # pixels: a smaller side has one block, whose means cannot spread
TOO_SMALL = f"image smaller than {MIN_SIDE}x{MIN_SIDE}: too small to judge"

INFO = MetricInfo(
    name="health",
    description="1 if the image is not black, flat, non-finite or unreadable, else 0",
    unit="flag",
    range=(0.0, 1.0),
    higher_is_better=True,
    needs=frozenset({"image"}),
)


def check_array(arr: Any, value_range: tuple[float, float] | None = None) -> tuple[bool, list[str]]:
    """(ok, flags) for one HxW or HxWxC image (C = 1, 3 or 4; alpha is ignored).

    Integer arrays are in 0..255 levels; float arrays in `value_range`, default (0, 1).
    Channels-first (CxHxW) arrays are refused rather than guessed at.
    """
    ok, flags, _ = _check(arr, value_range)
    return ok, flags


def _check(arr: Any, value_range: tuple[float, float] | None) -> tuple[bool, list[str], dict]:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3) or a.size == 0:
        raise ValueError(f"check_array: expected an HxW or HxWxC image array (C = 1, 3 or 4), got shape {a.shape}")
    flags: list[str] = []
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all():
            flags.append("nonfinite")
        lo, hi = value_range or (0.0, 1.0)
        if not hi > lo:
            raise ValueError(f"check_array: value_range {value_range} must have hi > lo")
        levels = (np.where(finite, a, lo).astype(np.float64) - lo) * (255.0 / (hi - lo))
    elif np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        levels = a.astype(np.float64) * (255.0 if a.dtype == np.bool_ else 1.0)
    else:
        raise ValueError(f"check_array: unsupported dtype {a.dtype}; give uint8 levels or floats in [0, 1]")
    stats = {
        "max": float(levels.max()),
        "mean": float(levels.mean()),
        "std": [float(s) for s in levels.reshape(-1, levels.shape[-1]).std(axis=0)],
    }
    if stats["max"] <= BLACK_MAX or (stats["mean"] < BLACK_MEAN and stats["max"] <= BLACK_PEAK):
        flags.append("all_black")
    if min(levels.shape[:2]) >= MIN_SIDE:  # one block's means cannot spread: flatness is not judged
        stats["block_std"] = [float(s) for s in _block_means(levels).reshape(-1, levels.shape[-1]).std(axis=0)]
        if all(s < UNIFORM_STD for s in stats["block_std"]) and all(s < PATTERN_STD for s in stats["std"]):
            flags.append("near_uniform")  # (a watermark on a flat image spreads its pixels by ~4 levels)
    return not flags, flags, stats


def _float_range(arr: np.ndarray) -> tuple[float, float]:
    """The range a float image file's values stand in: 0..1 when every finite value lies in it, as float
    TIFFs are usually written, else 0..255 (as `images.to_rgb` reads them)."""
    finite = arr[np.isfinite(arr)]
    return (0.0, 1.0) if finite.size and finite.max() <= 1.0 else (0.0, 255.0)


def _block_means(levels: np.ndarray, k: int = UNIFORM_BLOCK) -> np.ndarray:
    """Means of the k x k blocks of an HxWxC array at least k on each side (the edge rows and columns
    past a whole block are left out)."""
    h, w, c = levels.shape
    return levels[: h // k * k, : w // k * k].reshape(h // k, k, w // k, k, c).mean(axis=(1, 3))


@register
class Health(Metric):
    INFO = INFO

    def _score(self, items: list[Item]) -> list[tuple[float, dict]]:
        from PIL import Image

        out: list[tuple[float, dict]] = []
        for item in items:
            try:
                with Image.open(item.image_path) as image:
                    image.load()
                    arr = np.asarray(to_rgb(image) if image.mode not in ("L", "RGB", "F") else image)
            except FileNotFoundError:
                out.append((float("nan"), {"reason": f"{MISSING_FILE}: image {item.image_path}", "retry": True}))
                continue
            except Exception as exc:  # any decoder failure (PIL raises many types) is a per-item reason
                # a damaged file, not a failed generation: unscored like every metric's, not unhealthy
                reason = f"image unreadable: {item.image_path}: {type(exc).__name__}: {exc}"
                out.append((float("nan"), {"reason": reason}))
                continue
            if min(arr.shape[:2]) < MIN_SIDE:
                out.append((float("nan"), {"reason": TOO_SMALL, "size": [arr.shape[1], arr.shape[0]]}))
                continue
            ok, flags, stats = _check(arr, _float_range(arr) if arr.dtype.kind == "f" else None)
            out.append((1.0 if ok else 0.0, {"flags": flags, **stats}))
        return out
