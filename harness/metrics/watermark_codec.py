"""The invisible watermark codec of the reference Stable Diffusion scripts: messages, embedding,
and the raw block decode that detection (`harness.metrics.watermark`) builds on.

Library: `invisible-watermark` (import `imwatermark`), method `dwtDct`. Known messages:

- `sdv1`: the bytes `StableDiffusionV1` (136 bits), embedded by SD 1.x `scripts/txt2img.py`;
- `sdv2`: the bytes `SDV2` (32 bits), SD 2.x scripts;
- `sdxl`: the 48 bits `0xB3EC907BB19E`, diffusers' SDXL pipelines;
- any other text (UTF-8 bytes; prefix `text:` for text that equals a preset name).

How the codec works, as far as detection depends on it: the image goes BGR ->
YUV (OpenCV); only the U channel carries the message (the codec's per-channel
scales are [0, 36, 36] but its loop visits channels 0 and 1 only). U's Haar
approximation band is cut into 4x4 blocks; in each block the largest-magnitude
coefficient other than the first is moved so that `|c| mod 36` is 9 (bit 0) or
27 (bit 1). Bit i of the message goes into blocks i, i+n, i+2n, ... in raster
order, and decoding takes the majority vote of `|c| mod 36 > 18` per bit.

Two consequences shape detection (`harness.metrics.watermark.detect`):

1. dtype matters. OpenCV's YUV conversion adds 128 to U for uint8 input but 0.5
   for float input, so uint8 and float32 arrays of the same picture can pick
   different coefficients and read them modulo 36 with a different offset
   (255 = 7 * 36 + 3 in the band), and bits of negative coefficients flip. The
   SD scripts embed on uint8 arrays, diffusers' SDXL watermarker on float32
   arrays in 0..255. A message written on one path reads back fully on that path
   and partly (or inverted) on the other, depending on the picture's colours, so
   detection reads both.
2. The block grid is anchored at the top-left pixel and a row holds
   `width // 8` blocks, so cropping even 1-2 px shifts every block. Detection
   re-anchors by padding the image at the top-left by 0-2 px (edge pixels) and
   at the bottom-right up to a multiple of 8, which recovers small crops from
   any side of an image whose size was a multiple of 8 (as SD sizes are).

Size. imwatermark refuses an image whose area is under 256x256 (`rows * cols <
256 * 256`), whatever its shape: 512x192 is marked (diffusers' SDXL watermarker
skips only images under 256 px wide). A thin image that passes the area test can
still have too few blocks: a side under 8 px gives none (the codec then silently
writes nothing and reads zeros; under 4 px it fails inside PyWavelets). So an
image must have at least 65536 pixels and a block per message bit
(`size_problem`), which at that area holds for the presets whenever both sides
are at least 8 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.metrics.base import read_rgb
from harness.provenance import write_durably

PRESETS: dict[str, bytes] = {
    "sdv1": b"StableDiffusionV1",
    "sdv2": b"SDV2",
    "sdxl": bytes.fromhex("B3EC907BB19E"),
}
MIN_SIDE = 256        # side of the codec's minimum area: it refuses rows * cols < 256 * 256
MIN_AREA = MIN_SIDE * MIN_SIDE
TOO_SMALL = "image smaller than 256x256 in area: under 65536 pixels, the dwtDct codec's minimum"
PATHS = ("uint8", "float32")
GRID = 8              # pixels per block side: 4x4 blocks of the half-resolution Haar band
_SCALE = 36           # imwatermark dwtDct quantisation step for the U channel
ICC_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")  # formats Pillow writes an ICC profile into


@dataclass(frozen=True)
class Message:
    """A watermark message: its name and its bits (MSB first, as imwatermark packs bytes)."""

    name: str
    bits: tuple[int, ...]

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.bits, dtype=bool)


def resolve_message(message: str | bytes | Message) -> Message:
    """`sdv1`/`sdv2`/`sdxl`, `text:...`, any other text, raw bytes, or a Message."""
    if isinstance(message, Message):
        return message
    if isinstance(message, (bytes, bytearray)):
        payload, name = bytes(message), f"bytes:{bytes(message).hex()}"
    elif isinstance(message, str):
        if message in PRESETS:
            payload, name = PRESETS[message], message
        else:
            text = message[5:] if message.startswith("text:") else message
            payload, name = text.encode("utf-8"), f"text:{text}"
    else:
        raise TypeError(f"watermark message must be one of {', '.join(PRESETS)}, a text or bytes; "
                        f"got {type(message).__name__}")
    if not payload:
        raise ValueError("watermark message is empty; give sdv1, sdv2, sdxl or a non-empty text")
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
    return Message(name, tuple(int(b) for b in bits))


def size_problem(height: int, width: int, n_bits: int) -> str | None:
    """Why an image of this size cannot carry a message of `n_bits` bits, or None when it can: the
    codec's own area minimum, then a block of GRID x GRID pixels for every bit (see the docstring)."""
    if height * width < MIN_AREA:
        return TOO_SMALL
    blocks = (height // GRID) * (width // GRID)
    if blocks < n_bits:
        return (f"image has {blocks} blocks of {GRID}x{GRID} px, fewer than the {n_bits} bits of the message: "
                f"each bit needs a block, and a side under {GRID} px has none")
    return None


# -- embedding -----------------------------------------------------------------
def embed(image: Any, message: str | bytes | Message = "sdv1", path: str = "uint8"):
    """Watermark an RGB image (PIL image or HxWx3 uint8 array); returns the same type.

    `path="uint8"` is what the SD 1.x/2.x scripts do (RGB -> BGR uint8 into the
    codec, back to RGB); `path="float32"` is diffusers' SDXL watermarker (float
    array in 0..255 into the codec, rounded back to uint8).
    """
    from imwatermark import WatermarkEncoder

    if path not in PATHS:
        raise ValueError(f"embed: path={path!r}; expected one of {', '.join(PATHS)}")
    msg = resolve_message(message)
    rgb, back = to_rgb_array(image, "embed")
    height, width = rgb.shape[:2]
    problem = size_problem(height, width, len(msg.bits))
    if problem:
        raise ValueError(f"embed: {problem} (got {width}x{height})")
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", list(msg.bits))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    if path == "uint8":
        out = encoder.encode(bgr, "dwtDct")
    else:
        out = np.clip(np.round(encoder.encode(bgr.astype(np.float32), "dwtDct")), 0, 255).astype(np.uint8)
    return back(np.ascontiguousarray(out[:, :, ::-1]))


def embed_file(src: Path | str, dst: Path | str, message: str | bytes | Message = "sdv1",
               path: str = "uint8") -> Path:
    """Watermark the image file `src` into `dst` (format from dst's suffix). The mark goes on the pixels as
    displayed (EXIF orientation applied, so `dst` needs no orientation tag); PNG text chunks, the ICC
    profile, and transparency where the format holds it are kept (the mark is in the colour channels only).
    An image that cannot carry the message is an error naming `src`."""
    from PIL import Image

    dst = Path(dst)
    fmt = Image.registered_extensions().get(dst.suffix.lower())
    if fmt is None:
        raise ValueError(f"embed_file: unknown image format for {dst} (use .png, .jpg, .webp ...)")
    if not dst.parent.is_dir():
        raise ValueError(f"embed_file: the output folder {dst.parent} does not exist")
    if path not in PATHS:
        raise ValueError(f"embed_file: path={path!r}; expected one of {', '.join(PATHS)}")
    msg = resolve_message(message)
    image, texts, icc_profile = _read_as_displayed(src)
    try:
        marked = embed(image, msg, path)
    except ValueError as exc:  # what the image cannot do: say which file
        raise ValueError(f"{src}: {str(exc).removeprefix('embed: ')}") from None
    if marked.mode == "RGBA" and fmt in ("JPEG", "BMP"):  # formats without transparency
        marked = marked.convert("RGB")
    kwargs: dict[str, Any] = {}
    if icc_profile and fmt in ICC_FORMATS:
        kwargs["icc_profile"] = icc_profile
    if texts and fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in texts.items():
            info.add_text(key, value)
        kwargs["pnginfo"] = info
    write_durably(dst, lambda handle: marked.save(handle, format=fmt, **kwargs))
    return dst


def _read_as_displayed(src: Path | str):
    """(RGB image as displayed, with the alpha channel when `src` has transparency; its PNG text chunks;
    its ICC profile if an RGB one, else None). EXIF orientation is applied, as `harness.images` reads
    init images."""
    from PIL import Image, ImageOps

    from ..images import to_rgb

    _, reason = read_rgb(src)  # a missing or undecodable file: read_rgb's reason, not a traceback
    if reason is not None:
        raise ValueError(f"embed_file: cannot read {src}: {reason}")
    with Image.open(src) as original:
        shown = ImageOps.exif_transpose(original)
        image = to_rgb(shown)
        if "A" in original.getbands() or "transparency" in original.info:
            image.putalpha(shown.convert("RGBA").getchannel("A"))  # embed() keeps an RGBA image's alpha
        icc_profile = original.info.get("icc_profile")
        texts = dict(getattr(original, "text", {}) or {})
    # The pixels written are RGB: a CMYK or grey profile would describe them wrongly (bytes 16-19 of an
    # ICC profile name its colour space), so only an RGB profile is carried over.
    return image, texts, icc_profile if icc_profile and icc_profile[16:20] == b"RGB " else None


# -- reading -------------------------------------------------------------------
def block_votes(bgr: np.ndarray) -> np.ndarray:
    """The codec's 0/1 reading of every block, in its raster order (bool array).

    Same arithmetic as imwatermark's dwtDct decoder, vectorised; pass a uint8 or
    a float32 BGR array to read on that path.
    """
    return votes_from_u(u_channel(bgr))


def u_channel(bgr: np.ndarray) -> np.ndarray:
    """The U plane of OpenCV's BGR -> YUV conversion, the only plane carrying the message."""
    import cv2

    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:, :, 1]


def votes_from_u(u: np.ndarray) -> np.ndarray:
    rows, cols = u.shape
    band = haar_approximation(u[: rows // 4 * 4, : cols // 4 * 4])
    br, bc = band.shape[0] // 4, band.shape[1] // 4
    blocks = band[: br * 4, : bc * 4].reshape(br, 4, bc, 4).swapaxes(1, 2).reshape(br * bc, 16)
    magnitude = np.abs(blocks[:, 1:])
    peak = magnitude[np.arange(len(magnitude)), magnitude.argmax(axis=1)]
    return (peak % _SCALE) > 0.5 * _SCALE


def haar_approximation(channel: np.ndarray) -> np.ndarray:
    """The Haar approximation band, bit for bit what `pywt.dwt2(channel, "haar")[0]` gives.

    PyWavelets filters axis 0 then axis 1 with taps 1/sqrt(2) in the input's float
    type (float64 for integer input); the same operations in the same order give
    identical floats at a tenth of the cost, since the detail bands are not needed.
    """
    x = channel.astype(np.float32 if channel.dtype == np.float32 else np.float64)
    tap = x.dtype.type(0.7071067811865476)
    rows = x[0::2] * tap + x[1::2] * tap
    return rows[:, 0::2] * tap + rows[:, 1::2] * tap


def bits_from_votes(votes: np.ndarray, n_bits: int) -> np.ndarray:
    """Majority vote per message bit (block j carries bit j mod n), as the codec decodes."""
    index = np.arange(len(votes)) % n_bits
    ones = np.bincount(index, weights=votes.astype(np.int64), minlength=n_bits)
    total = np.bincount(index, minlength=n_bits)
    return ones * 255 > total * 127  # the codec's mean * 255 > 127, in integers


def to_rgb_array(image: Any, where: str):
    """(HxWx3 uint8 RGB array, function turning such an array back into the input's type)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        mode, alpha = image.mode, image.getchannel("A") if "A" in image.getbands() else None

        def back(arr: np.ndarray):
            out = Image.fromarray(arr, "RGB")
            if alpha is not None and mode == "RGBA":
                out.putalpha(alpha)
            return out

        return np.asarray(image.convert("RGB")), back
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"{where}: expected a PIL image or an HxWx3 uint8 RGB array, got "
                         f"{type(image).__name__} with shape {arr.shape} and dtype {arr.dtype}")
    return arr, lambda out: out
