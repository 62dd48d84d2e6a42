"""A procedurally generated world of one coloured shape on a background.

`sample_scene(rng)` draws a `Scene` (all of its randomness, including texture
noise, is drawn here); `render(scene, size)` paints it at any size with the same
geometry; `caption(scene.labels, phrasing)` writes one of several phrasings.
So the labels of every image are exact, and the same scene renders the same at
64 px and at 256 px.

Vocabulary (also what the oracle metrics parse):

- shapes: circle, square, triangle, star
- shape colours: red, green, blue, yellow, purple, orange
- background colours: white, gray, and the shape colours (never the shape's own)
- sizes: small, large (unnamed: medium)
- positions: left, right, top, bottom, center (unnamed: center, jittered)
- artists, each a rendering style: "greg rutkowski" (thick black outline),
  "ian mcque" (light diagonal stripes on the shape), "claude monet" (soft,
  blurred edges), "james gurney" (coarse grain over the whole image)
- mediums: "photo" (plain), "35mm photograph" (vignette), "watercolor"
  (mottled fill)

Style sizes are fractions of the image size, so a style looks the same at any
resolution: outline S/40 thick, stripes S/8 apart, blur sigma S/64, grain cells S/32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

SHAPES = ("circle", "square", "triangle", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    **COLORS,
}
COLOR_WORDS = {"grey": "gray"}  # spelling variants the parser accepts
SIZES = ("small", "large")
RADIUS = {"small": 0.15, None: 0.22, "large": 0.30}  # circumradius as a fraction of the image size
POSITIONS: dict[str, tuple[float, float]] = {  # shape centre (x, y) as fractions of the image size
    "left": (0.30, 0.5), "right": (0.70, 0.5), "top": (0.5, 0.30), "bottom": (0.5, 0.70), "center": (0.5, 0.5),
}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom", "center": "in the center"}
ARTISTS: dict[str, str] = {  # artist -> style
    "greg rutkowski": "outline",
    "ian mcque": "stripes",
    "claude monet": "blur",
    "james gurney": "grain",
}
STYLES = tuple(ARTISTS.values())
MEDIUMS: dict[str, str] = {"photo": "plain", "35mm photograph": "vignette", "watercolor": "mottled"}

OUTLINE_COLOR = (15, 15, 15)
OUTLINE_WIDTH = 1 / 40
STRIPE_PERIOD = 1 / 8
STRIPE_DUTY = 0.45
STRIPE_LIGHTEN = 0.6
BLUR_SIGMA = 1 / 64
GRAIN_CELLS = 32
GRAIN_AMPLITUDE = 32.0
TEMPLATES = (
    "{obj} on {a_bg} {bg} background{pos}",
    "{bg} background with {obj}{pos}",
    "{obj}{pos}, {bg} background",
    "{obj}{pos} against {a_bg} {bg} background",
    "{medium_of}{obj} on {a_bg} {bg} background{pos}",
)


@dataclass(frozen=True)
class Labels:
    """What a scene shows, in vocabulary words (None: not chosen)."""

    shape: str
    color: str
    background: str
    size: str | None = None
    position: str | None = None
    artist: str | None = None
    medium: str | None = None

    @property
    def style(self) -> str | None:
        return ARTISTS[self.artist] if self.artist else None

    def __post_init__(self) -> None:
        checks = (("shape", self.shape, SHAPES), ("color", self.color, COLORS),
                  ("background", self.background, BACKGROUNDS), ("size", self.size, (None, *SIZES)),
                  ("position", self.position, (None, *POSITIONS)), ("artist", self.artist, (None, *ARTISTS)),
                  ("medium", self.medium, (None, *MEDIUMS)))
        for name, value, valid in checks:
            if value not in valid:
                raise ValueError(f"Labels.{name}={value!r}: expected one of {', '.join(map(str, valid))}")
        if self.color == self.background:
            raise ValueError(f"Labels: shape colour and background are both {self.color!r}; they must differ")


@dataclass(frozen=True)
class Scene:
    """Labels plus the exact geometry and texture noise that rendering needs."""

    labels: Labels
    center: tuple[float, float]   # fractions of the image size
    radius: float                 # fraction of the image size
    noise: np.ndarray             # (GRAIN_CELLS+1, GRAIN_CELLS+1) uniform in [-1, 1], for grain and mottling

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Scene) and self.labels == other.labels and self.center == other.center
                and self.radius == other.radius and np.array_equal(self.noise, other.noise))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Phrasing:
    """How a caption is worded, drawn apart from the labels so swapped captions keep it."""

    template: int
    medium_suffix: bool   # the medium as ", photo" at the end instead of "photo of ..."


@dataclass(frozen=True)
class Sample:
    image: np.ndarray     # (size, size, 3) uint8
    caption: str
    labels: Labels


# ---------------------------------------------------------------- sampling

def sample_labels(rng: np.random.Generator, *, p_artist: float = 0.6, p_medium: float = 0.35) -> Labels:
    """Uniform shape and colour; background never the shape's colour; optional words."""
    color = str(rng.choice(list(COLORS)))
    background = str(rng.choice([b for b in BACKGROUNDS if b != color]))
    shape = str(rng.choice(SHAPES))
    size = str(rng.choice(SIZES)) if rng.random() < 0.5 else None
    position = str(rng.choice(list(POSITIONS))) if rng.random() < 0.5 else None
    artist = str(rng.choice(list(ARTISTS))) if rng.random() < p_artist else None
    medium = str(rng.choice(list(MEDIUMS))) if rng.random() < p_medium else None
    return Labels(shape, color, background, size, position, artist, medium)


def scene_for(labels: Labels, rng: np.random.Generator) -> Scene:
    """Geometry and noise for `labels`: named positions are exact, unnamed ones jitter a little."""
    cx, cy = POSITIONS[labels.position or "center"]
    if labels.position is None:
        cx, cy = cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04)
    noise = rng.uniform(-1.0, 1.0, size=(GRAIN_CELLS + 1, GRAIN_CELLS + 1))
    return Scene(labels, (float(cx), float(cy)), RADIUS[labels.size], noise)


def sample_scene(rng: np.random.Generator, **kwargs) -> Scene:
    return scene_for(sample_labels(rng, **kwargs), rng)


def sample_phrasing(rng: np.random.Generator) -> Phrasing:
    return Phrasing(int(rng.integers(len(TEMPLATES))), bool(rng.random() < 0.5))


def sample(rng: np.random.Generator, size: int = 64, **kwargs) -> Sample:
    """One (image, caption, labels) triple."""
    scene = sample_scene(rng, **kwargs)
    text = caption(scene.labels, sample_phrasing(rng))
    return Sample(render(scene, size), text, scene.labels)


# ---------------------------------------------------------------- captions

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(labels: Labels, phrasing: Phrasing) -> str:
    """The caption of `labels` in the wording `phrasing` chooses."""
    words = " ".join(w for w in (labels.size, labels.color, labels.shape) if w)
    obj = f"{_article(words)} {words}"
    pos = f" {POSITION_PHRASES[labels.position]}" if labels.position else ""
    template = TEMPLATES[phrasing.template]
    medium = labels.medium
    medium_of = ""
    if medium and "{medium_of}" in template and not phrasing.medium_suffix:
        medium_of = f"{_article(medium)} {medium} of "
        medium = None
    text = template.format(obj=obj, bg=labels.background, a_bg=_article(labels.background), pos=pos,
                           medium_of=medium_of)
    if medium:
        text += f", {medium}"
    if labels.artist:
        text += f", by {labels.artist}"
    return text


def swapped(labels: Labels, attribute: str, rng: np.random.Generator) -> Labels:
    """`labels` with one attribute changed to another valid value (a hard negative)."""
    if attribute == "color":
        options = [c for c in COLORS if c not in (labels.color, labels.background)]
    elif attribute == "background":
        options = [b for b in BACKGROUNDS if b not in (labels.color, labels.background)]
    elif attribute == "shape":
        options = [s for s in SHAPES if s != labels.shape]
    elif attribute == "artist":
        options = [a for a in (*ARTISTS, None) if a != labels.artist]
    else:
        raise ValueError(f"swapped(attribute={attribute!r}): expected color, background, shape or artist")
    pick = options[int(rng.integers(len(options)))]
    return replace(labels, **{attribute: pick})


# ---------------------------------------------------------------- rendering

def _polygon(labels_shape: str) -> np.ndarray | None:
    """Unit polygon (circumradius 1, pointing up) of a shape; None for the circle."""
    if labels_shape == "square":
        h = 1 / math.sqrt(2)
        return np.array([(-h, -h), (h, -h), (h, h), (-h, h)])
    if labels_shape == "triangle":
        angles = [math.radians(-90 + 120 * k) for k in range(3)]
        pts = np.array([(math.cos(a), math.sin(a)) for a in angles])
        return pts + np.array([0.0, 0.25])  # centre the bounding box vertically
    if labels_shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.5
            a = math.radians(-90 + 36 * k)
            pts.append((r * math.cos(a), r * math.sin(a)))
        return np.array(pts) + np.array([0.0, 0.1])
    return None


def signed_distance(scene: Scene, size: int) -> np.ndarray:
    """Signed distance in pixels to the shape's boundary (negative inside), at pixel centres."""
    coords = (np.arange(size) + 0.5) / size
    x = coords[None, :] - scene.center[0]
    y = coords[:, None] - scene.center[1]
    r = scene.radius
    poly = _polygon(scene.labels.shape)
    if poly is None:
        return (np.sqrt(x * x + y * y) - r) * size
    px, py = np.broadcast_arrays(x / r, y / r)
    best = np.full(px.shape, np.inf)
    inside = np.zeros(px.shape, bool)
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, -1, axis=0)):
        ex, ey = bx - ax, by - ay
        t = np.clip(((px - ax) * ex + (py - ay) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        dx, dy = px - ax - t * ex, py - ay - t * ey
        best = np.minimum(best, dx * dx + dy * dy)
        crosses = ((ay > py) != (by > py)) & (px < (bx - ax) * (py - ay) / (ey + 1e-12) + ax)
        inside ^= crosses
    dist = np.sqrt(best) * r * size
    return np.where(inside, -dist, dist)


def _upsample_noise(noise: np.ndarray, size: int) -> np.ndarray:
    """Bilinear interpolation of the noise grid to (size, size)."""
    cells = noise.shape[0] - 1
    pos = (np.arange(size) + 0.5) / size * cells
    i = np.clip(pos.astype(int), 0, cells - 1)
    f = pos - i
    rows = noise[i] * (1 - f)[:, None] + noise[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def vignette(height: int, width: int) -> np.ndarray:
    """The "35mm photograph" brightness factor: 1 inside the inscribed circle, 0.6 at the corners."""
    ys = (np.arange(height) + 0.5) / height - 0.5
    xs = (np.arange(width) + 0.5) / width - 0.5
    r2 = (xs[None, :] ** 2 + ys[:, None] ** 2) * 2  # 1 at the corners
    return 1 - 0.4 * np.clip(r2 - 0.5, 0, None) / 0.5


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Paint `scene` as a (size, size, 3) uint8 RGB array."""
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"render(size={size!r}): expected an integer >= 16")
    from scipy.ndimage import gaussian_filter

    lab = scene.labels
    sdf = signed_distance(scene, size)
    cover = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
    fill = np.broadcast_to(np.array(COLORS[lab.color], float), (size, size, 3)).copy()
    noise = _upsample_noise(scene.noise, size)
    if lab.medium == "watercolor":
        fill *= (0.88 + 0.12 * noise)[..., None]
    if lab.style == "stripes":
        idx = np.arange(size)
        phase = ((idx[None, :] + idx[:, None] + 1.0) / (size * STRIPE_PERIOD)) % 1.0
        stripe = (phase < STRIPE_DUTY)[..., None]
        fill = np.where(stripe, fill + (255.0 - fill) * STRIPE_LIGHTEN, fill)
    if lab.style == "outline":
        ring = np.clip(0.5 + sdf + OUTLINE_WIDTH * size, 0.0, 1.0)[..., None]  # 1 within the band
        fill = fill * (1 - ring) + np.array(OUTLINE_COLOR, float) * ring
    img = np.array(BACKGROUNDS[lab.background], float) * (1 - cover) + fill * cover
    if lab.style == "blur":
        img = gaussian_filter(img, sigma=(BLUR_SIGMA * size, BLUR_SIGMA * size, 0), mode="nearest")
    if lab.style == "grain":
        img = img + (GRAIN_AMPLITUDE * noise)[..., None]
    if lab.medium == "35mm photograph":
        img = img * vignette(size, size)[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
