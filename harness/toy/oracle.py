"""Read a toy-world image and a prompt back into the world's vocabulary, with no learned model.

`parse_prompt(text)` finds the attributes a prompt names; `analyze(image)`
measures an RGB image (any size) the way the world draws it:

- background: the median colour of a border strip, nearest background colour;
- foreground mask: pixels more than 60 (RGB distance) from that colour or
  any darkening of it that the world's vignette makes at that pixel, holes
  filled, largest connected part;
- colour: median of the darkest 30 % (by luma) of the mask's interior without
  dark (outline) pixels, so light stripes are left out; nearest shape colour
  after scaling both to a maximum channel of 1 (grain, vignette and mottling
  change brightness, not hue);
- shape: solidity (area / convex hull area) < 0.85 is a star; otherwise the
  fill ratio of the bounding box: > 0.9 square, > 0.64 circle, else triangle;
- style signatures: `outline` = fraction of the mask's boundary pixels with a
  dark pixel (max channel < 70) of the mask within the outline width (S/40)
  plus one pixel of them; `stripes` = amplitude (0..255 luma) of the
  interior's first harmonic along x+y at the world's stripe period (best of
  +-10 %); `blur` = median edge width along the mask's boundary (plateau
  height of the distance-to-background map over its steepest slope) in units
  of the world's blur width (1 = blurred like "by claude monet", about 0.2 for
  a sharp edge at 256 px, 0.4 at 128 px); `grain` = std (0..255 luma) of the
  background away from the shape minus its local mean (a Gaussian of S/16
  over background pixels only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from harness.toy import world

STYLE_THRESHOLDS = {"outline": 0.5, "stripes": 8.0, "blur": 0.6, "grain": 6.0}
MASK_DISTANCE = 60.0
DARK = 70


@dataclass(frozen=True)
class PromptAttrs:
    """What a prompt asks for, in world words (None: not named)."""

    color: str | None = None
    shape: str | None = None
    background: str | None = None
    artist: str | None = None
    medium: str | None = None

    @property
    def style(self) -> str | None:
        return world.ARTISTS[self.artist] if self.artist else None


@dataclass(frozen=True)
class Analysis:
    background: str
    background_rgb: tuple[float, float, float]
    color: str | None
    color_rgb: tuple[float, float, float] | None
    shape: str | None
    styles: dict[str, float] = field(default_factory=dict)
    features: dict[str, float] = field(default_factory=dict)
    reason: str | None = None   # why the foreground could not be measured

    def has_style(self, style: str) -> bool:
        return self.styles.get(style, float("nan")) > STYLE_THRESHOLDS[style]


_WORD = re.compile(r"[a-z0-9]+")
NO_SHAPE = "no foreground shape found"  # the image shows no shape: a miss for what a shape carries


def parse_prompt(text: str) -> PromptAttrs:
    """Attributes named in `text`, the first of each: a colour word belongs to the next shape word or
    'background' unless another colour word comes first (`a circle in red on a white background` names
    the background, white, and no shape colour: the parser does not guess); the artist and the medium
    named first."""
    words = [world.COLOR_WORDS.get(w, w) for w in _WORD.findall(text.lower())]
    colors = set(world.BACKGROUNDS) | set(world.COLORS)
    color = background = shape = None
    for i, word in enumerate(words):
        if word in world.SHAPES and shape is None:
            shape = word
        if word in colors:
            noun = next((w for w in words[i + 1:] if w in world.SHAPES or w in ("background", *colors)), None)
            if noun == "background" and background is None and word in world.BACKGROUNDS:
                background = word
            elif noun in world.SHAPES and color is None and word in world.COLORS:
                color = word
    joined = " ".join(words)
    return PromptAttrs(color, shape, background, _first(world.ARTISTS, joined), _first(world.MEDIUMS, joined))


def _first(names, text: str) -> str | None:
    """The name of `names` that `text` mentions first as whole words (the longest where two start together)."""
    found = [(m.start(), -len(n), n) for n in names for m in [re.search(rf"\b{re.escape(n)}\b", text)] if m]
    return min(found)[2] if found else None


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    dists = [np.linalg.norm(rgb - np.array(palette[n], float)) for n in names]
    return names[int(np.argmin(dists))]


def _nearest_hue(rgb: np.ndarray) -> str:
    """Nearest shape colour after scaling both to a maximum channel of 1 (brightness does not count)."""
    scaled = {name: np.array(c, float) / max(c) for name, c in world.COLORS.items()}
    return _nearest(rgb / max(float(rgb.max()), 1e-6), scaled)


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114])


def analyze(image) -> Analysis:
    """Measure an RGB image (PIL image or HxWx3 uint8 array)."""
    from scipy import ndimage

    img = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"analyze: expected an HxWx3 RGB image, got shape {img.shape}")
    h, w, _ = img.shape
    size = min(h, w)
    strip = max(2, size // 32)
    border = np.concatenate([img[:strip].reshape(-1, 3), img[-strip:].reshape(-1, 3),
                             img[:, :strip].reshape(-1, 3), img[:, -strip:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, world.BACKGROUNDS)
    # Distance to the background colour darkened as much as the world's vignette can darken it there.
    k = np.clip(img @ bg_rgb / max(float(bg_rgb @ bg_rgb), 1e-6), world.vignette(h, w), 1.0)
    dist = np.linalg.norm(img - k[..., None] * bg_rgb, axis=2)
    mask = ndimage.binary_fill_holes(dist > MASK_DISTANCE)
    labels, count = ndimage.label(mask)
    if count == 0 or mask.sum() < 0.002 * size * size:
        return Analysis(background, tuple(bg_rgb), None, None, None, reason=NO_SHAPE)
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    mask = labels == (1 + int(np.argmax(sizes)))

    # colour: interior, without the dark outline
    interior = ndimage.binary_erosion(mask, iterations=max(1, round(size / 40)) + 1)
    pixels = img[interior & (img.max(axis=2) >= DARK)]
    if len(pixels) < 4:
        pixels = img[mask]
    luma = _luma(pixels)
    fg_rgb = np.median(pixels[luma <= np.percentile(luma, 30)], axis=0)  # light stripes left out
    color = _nearest_hue(fg_rgb)

    # shape
    ys, xs = np.nonzero(mask)
    area = float(mask.sum())
    extent = area / float((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    edge = mask & ~ndimage.binary_erosion(mask)
    ey, ex = np.nonzero(edge)
    corners = np.concatenate([np.stack([ex + dx, ey + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    try:
        from scipy.spatial import ConvexHull

        solidity = area / ConvexHull(corners).volume
    except Exception:  # degenerate (a line of pixels)
        solidity = 1.0
    if solidity < 0.85:
        shape = "star"
    elif extent > 0.9:
        shape = "square"
    elif extent > 0.64:
        shape = "circle"
    else:
        shape = "triangle"

    styles = {
        "outline": _outline(img, mask, edge, size),
        "stripes": _stripes(img, interior & (img.max(axis=2) >= DARK), size),
        "blur": _blur(dist, mask, edge, size),
        "grain": _grain(img, mask, size),
    }
    features = {"extent": extent, "solidity": float(solidity), "area": area / (h * w)}
    return Analysis(background, tuple(bg_rgb), color, tuple(fg_rgb), shape, styles, features)


def _outline(img: np.ndarray, mask: np.ndarray, edge: np.ndarray, size: int) -> float:
    """Fraction of the mask's boundary with a dark pixel of the mask within the outline's width inside it
    (a drawn outline's outermost pixels blend into the background, so the boundary itself need not be dark)."""
    from scipy import ndimage

    if not edge.any():
        return 0.0
    dark = mask & (img.max(axis=2) < DARK)
    near = ndimage.binary_dilation(dark, iterations=round(world.OUTLINE_WIDTH * size) + 1)
    return float(near[edge].mean())


def _stripes(img: np.ndarray, interior: np.ndarray, size: int) -> float:
    ys, xs = np.nonzero(interior)
    if len(ys) < 16:
        return 0.0
    luma = _luma(img[ys, xs])
    luma = luma - luma.mean()
    best = 0.0
    for factor in (0.9, 0.95, 1.0, 1.05, 1.1):
        phase = (xs + ys + 1.0) / (size * world.STRIPE_PERIOD * factor)
        best = max(best, 2 * abs(np.mean(luma * np.exp(2j * np.pi * phase))))
    return float(best)


def _blur(dist: np.ndarray, mask: np.ndarray, edge: np.ndarray, size: int) -> float:
    """Edge width (plateau height / steepest slope) at the mask's boundary, in units of the world's blur width."""
    from scipy import ndimage

    if not edge.any():
        return 0.0
    gy, gx = np.gradient(dist)
    slope = ndimage.maximum_filter(np.hypot(gx, gy), size=5)[edge]
    reach = 2 * max(2, round(3 * world.BLUR_SIGMA * size)) + 1
    height = ndimage.maximum_filter(dist, size=reach)[edge]
    width = np.median(height / np.maximum(slope, 1e-6))
    return float(width / (np.sqrt(2 * np.pi) * world.BLUR_SIGMA * size))


def _grain(img: np.ndarray, mask: np.ndarray, size: int) -> float:
    from scipy import ndimage

    far = ~ndimage.binary_dilation(mask, iterations=max(2, size // 16))
    if far.sum() < 16:
        return 0.0
    luma = _luma(img)
    sigma = size / 16
    weight = ndimage.gaussian_filter(far.astype(float), sigma=sigma, mode="nearest")
    local = ndimage.gaussian_filter(luma * far, sigma=sigma, mode="nearest") / np.maximum(weight, 1e-6)
    return float((luma - local)[far].std())
