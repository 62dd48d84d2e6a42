"""The invisible watermark of the reference Stable Diffusion scripts: embed and detect.

Codec: `invisible-watermark` (import `imwatermark`), method `dwtDct`. Known messages:

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

Two consequences shape `detect`:

1. dtype matters. OpenCV's YUV conversion adds 128 to U for uint8 input but 0.5
   for float input, so uint8 and float32 arrays of the same picture can pick
   different coefficients and read them modulo 36 with a different offset
   (255 = 7 * 36 + 3 in the band), and bits of negative coefficients flip. The
   SD scripts embed on uint8 arrays, diffusers' SDXL watermarker on float32
   arrays in 0..255. A message written on one path reads back fully on that path
   and partly (or inverted) on the other, depending on the picture's colours, so
   `detect` reads both.
2. The block grid is anchored at the top-left pixel and a row holds
   `width // 8` blocks, so cropping even 1-2 px shifts every block. `detect`
   re-anchors by padding the image at the top-left by 0-2 px (edge pixels) and
   at the bottom-right up to a multiple of 8, which recovers small crops from
   any side of an image whose size was a multiple of 8 (as SD sizes are).

Decision. Each read gives, per message of n bits, the number k of decoded bits
that match. Under the null (no watermark) each bit matches with probability
1/2: `p_binomial = P[X >= k]`, X ~ Binomial(n, 1/2). But clean photos are not
fair coins: their chroma is smooth, so the peak coefficients cluster just above
a multiple of 36 and most bits decode as 0 (a clean photo typically reads all
zeros). A message that is mostly 0 bits would then "match" by accident, so a
second p-value conditions on the number of ones read: with m ones sent and d
read, the ones in both are hypergeometric (n, m, d) if the decoded bits carry
no information about the message (`p_balance`). For the presets, which are near
balanced, the two agree closely.

Text payloads break the fair-coin null in a second way: every ASCII byte has a
0 top bit and letters a 1 next to it, so a read that repeats with the byte
period (flat two-colour stripes 32 px apart, or another text watermark read at
this message's length: its bits fold onto the same bit-of-byte positions)
matches 70 % of sdv1 by its bit-of-byte profile alone, binomial p ~ 1e-6. For
messages of 8 bytes or more a third p-value therefore conditions on how many
ones were read at each of the 8 bit-of-byte positions (`p_columns`): under the
null, which bytes got them is unrelated to the message, so the matches in each
column are a shifted hypergeometric and the total is their exact convolution
(`column_pvalue`). A real mark keeps its power (an exact sdv1 read: 1e-25; 75 %
of bits right at random places: ~1e-6). Shorter messages (sdv2, sdxl, short texts of
one's own) have too few bytes per column for it and keep the two nulls above. `p_value` is the
largest of the p-values computed.

`detect` makes A reads (2 dtype paths x geometries; A = 18 for sizes that are
multiples of 8) for each of M messages and keeps each message's best read,
whose p-value is corrected by Bonferroni over all M x A tests:
`p_corrected = min(1, p_value * M * A)`. An image is `detected` when any
message has `p_corrected < alpha = 1e-3`. By the union bound a clean image is
then flagged with probability at most 1e-3, whatever the dependence between
reads. At M = 3, A = 18 detection needs at least 93 of 136 bits for sdv1 (68 %;
more when the column null binds), 28 of 32 for sdv2, 39 of 48 for sdxl.

Measured on 60 views of scikit-image's photos at 512x512 (`python -m
harness.metrics.watermark_robustness`): a plain single read of a clean photo
gets 43-56 % of the sdv1 bits right (best of all reads: 50-61 %); the
smallest uncorrected p-value over 286 clean images (photos, noise, flat and
gradient images, 256 and 512 px) was 4e-4, against a per-test threshold of
1.9e-5; freshly embedded photos read 100 % (median) and as low as 52 % where
clipping of saturated pixels destroys the embedding; the median corrected p of
an embedded photo is about 1e-24 (the column null's bound). JPEG q90 or q75
destroys the mark, halving the size and back destroys it about half the time,
and a 2 px crop is recovered by the re-anchoring. Of 1,200 synthetic two-colour
stripe and checkerboard images (256 px), the binomial and balance nulls alone
flagged 2 as sdv1 (32 px stripes); with the column null, none.

Images smaller than 256x256 cannot carry the message: `detect` returns
`detected=None` with reason "image smaller than 256x256", the metric NaN.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from harness.metrics.base import Item, Metric, MetricInfo, Option, parse_positive_float, read_rgb, register

PRESETS: dict[str, bytes] = {
    "sdv1": b"StableDiffusionV1",
    "sdv2": b"SDV2",
    "sdxl": bytes.fromhex("B3EC907BB19E"),
}
DEFAULT_MESSAGES = ("sdv1", "sdv2", "sdxl")
ALPHA = 1e-3          # family-wise false-positive rate per clean image
MIN_SIDE = 256        # the codec's minimum
TOO_SMALL = "image smaller than 256x256"
PATHS = ("uint8", "float32")
OFFSETS = tuple((dy, dx) for dy in range(3) for dx in range(3))  # top-left padding tried, in pixels
COLUMN_TEST_BITS = 64  # messages of 8 bytes or more also get the byte-column-conditioned null
_SCALE = 36           # imwatermark dwtDct quantisation step for the U channel
_GRID = 8             # pixels per block side: 4x4 blocks of the half-resolution Haar band

INFO = MetricInfo(
    name="watermark",
    description="1 if the SD invisible watermark (dwtDct) is detected, else 0; evidence in detail",
    unit="flag",
    range=(0.0, 1.0),
    higher_is_better=False,
    needs=frozenset({"image"}),
)


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
    rgb, back = _to_rgb_array(image, "embed")
    height, width = rgb.shape[:2]
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(f"embed: {TOO_SMALL} (got {width}x{height}); the dwtDct codec needs at least 256x256")
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
    """Watermark the image file `src` into `dst` (format from dst's suffix; PNG text chunks kept)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    image, reason = read_rgb(src)
    if image is None:
        raise ValueError(f"embed_file: cannot read {src}: {reason}")
    marked = embed(image, message, path)
    dst = Path(dst)
    kwargs: dict[str, Any] = {}
    if dst.suffix.lower() == ".png":
        with Image.open(src) as original:
            texts = getattr(original, "text", {}) or {}
        if texts:
            info = PngInfo()
            for key, value in texts.items():
                info.add_text(key, value)
            kwargs["pnginfo"] = info
    fmt = Image.registered_extensions().get(dst.suffix.lower())
    if fmt is None:
        raise ValueError(f"embed_file: unknown image format for {dst} (use .png, .jpg, .webp ...)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            marked.save(handle, format=fmt, **kwargs)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


# -- detection -----------------------------------------------------------------
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


def _paddings(height: int, width: int) -> list[tuple[tuple[int, int], tuple[tuple[int, int], tuple[int, int]]]]:
    """The image as given, then padded at the top-left by OFFSETS and at the bottom-right to a multiple of 8."""
    out = [((0, 0), ((0, 0), (0, 0)))]
    for dy, dx in OFFSETS:
        pad_h, pad_w = -(height + dy) % _GRID, -(width + dx) % _GRID
        if dy == dx == pad_h == pad_w == 0:
            continue  # same as the image as given
        out.append(((dy, dx), ((dy, pad_h), (dx, pad_w))))
    return out


def detect(image: Any, messages: Iterable[str | bytes | Message] | None = None, alpha: float = ALPHA) -> dict:
    """Evidence for each message and the decision; see the module docstring for the statistics.

    Returns `{"detected": bool | None, "best": name | None, "messages": {name: evidence},
    "attempts": A, "alpha": alpha}`, plus `"reason"` when the image cannot carry a message.
    """
    from scipy.stats import binom, hypergeom

    msgs = [resolve_message(m) for m in (DEFAULT_MESSAGES if messages is None else messages)]
    if not msgs:
        raise ValueError("detect: no messages to look for; give e.g. messages=['sdv1']")
    alpha = parse_alpha(alpha)
    rgb, _ = _to_rgb_array(image, "detect")
    height, width = rgb.shape[:2]
    if height < MIN_SIDE or width < MIN_SIDE:
        return {"detected": None, "reason": TOO_SMALL, "size": [width, height], "messages": {}}
    best: dict[str, tuple[int, str, tuple[int, int], np.ndarray]] = {}
    attempts = 0
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    for path in PATHS:
        # Colour conversion is per pixel, so padding the U plane equals converting the padded image.
        u = u_channel(bgr if path == "uint8" else bgr.astype(np.float32))
        for offset, padding in _paddings(height, width):
            padded = u if padding == ((0, 0), (0, 0)) else np.pad(u, padding, mode="edge")
            votes = votes_from_u(padded)
            attempts += 1
            for msg in msgs:
                bits = bits_from_votes(votes, len(msg.bits))
                matched = int((bits == msg.array).sum())
                if msg.name not in best or matched > best[msg.name][0]:
                    best[msg.name] = (matched, path, offset, bits)
    tests = attempts * len(msgs)
    evidence: dict[str, dict] = {}
    for msg in msgs:
        matched, path, offset, bits = best[msg.name]
        n, ones_sent, ones_read = len(msg.bits), sum(msg.bits), int(bits.sum())
        p_binomial = float(binom.sf(matched - 1, n, 0.5))
        # matched = n - ones_sent - ones_read + 2 * (ones in both): condition on the ones read.
        both = (matched - n + ones_sent + ones_read) // 2
        p_balance = float(hypergeom.sf(both - 1, n, ones_sent, ones_read))
        p_columns = column_pvalue(msg.array, bits) if n >= COLUMN_TEST_BITS and n % 8 == 0 else None
        p = max(p_binomial, p_balance, p_columns or 0.0)
        evidence[msg.name] = {
            "matched": matched, "bits": n, "accuracy": matched / n, "ones_read": ones_read,
            "p_binomial": p_binomial, "p_balance": p_balance, "p_columns": p_columns, "p_value": p,
            "p_corrected": min(1.0, p * tests), "path": path, "offset": list(offset), "exact": matched == n,
        }
    top = min(evidence, key=lambda name: (evidence[name]["p_corrected"], evidence[name]["p_value"]))
    detected = evidence[top]["p_corrected"] < alpha
    return {"detected": bool(detected), "best": top if detected else None, "messages": evidence,
            "attempts": attempts, "alpha": alpha, "size": [width, height]}


def column_pvalue(sent: np.ndarray, read: np.ndarray) -> float:
    """P[matches >= observed] when each bit position within the byte keeps its count of ones read.

    Null: the read's ones in byte column j (d_j of them) sit at byte positions
    unrelated to the message, so the ones shared with the message's K_j ones are
    hypergeometric (N bytes, K_j, d_j) and column j matches N - K_j - d_j + 2 * shared
    bits. The total is the sum of the 8 independent column counts; its law is
    their exact convolution.
    """
    from scipy.stats import hypergeom

    sent_bytes = np.asarray(sent, dtype=bool).reshape(-1, 8)
    read_bytes = np.asarray(read, dtype=bool).reshape(-1, 8)
    n_bytes = len(sent_bytes)
    law = np.ones(1)
    for ones_sent, ones_read in zip(sent_bytes.sum(axis=0).tolist(), read_bytes.sum(axis=0).tolist()):
        shared = np.arange(max(0, ones_sent + ones_read - n_bytes), min(ones_sent, ones_read) + 1)
        column = np.zeros(n_bytes + 1)
        column[n_bytes - ones_sent - ones_read + 2 * shared] = hypergeom.pmf(shared, n_bytes, ones_sent, ones_read)
        law = np.convolve(law, column)
    observed = int((sent_bytes == read_bytes).sum())
    return float(min(1.0, law[observed:].sum()))


def detect_paths(paths: Sequence[Path | str], messages: Iterable[str | bytes | Message] | None = None,
                 alpha: float = ALPHA) -> list[dict]:
    """`detect` for image files; an unreadable or too small file gets `detected=None` and a reason."""
    msgs = [resolve_message(m) for m in (DEFAULT_MESSAGES if messages is None else messages)]
    results = []
    for path in paths:
        image, reason = read_rgb(path)
        if image is None:
            results.append({"path": str(path), "detected": None, "messages": {}, "reason": reason})
            continue
        results.append({"path": str(path), **detect(image, msgs, alpha)})
    return results


def _to_rgb_array(image: Any, where: str):
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


# -- the metric ----------------------------------------------------------------
def _parse_messages(value: Any) -> tuple[str, ...]:
    names = tuple(value) if isinstance(value, (list, tuple)) else tuple(p for p in str(value).split("+") if p)
    if not names:
        raise ValueError("no messages given; write e.g. sdv1+sdv2+sdxl")
    for name in names:
        resolve_message(name)
    return names


def parse_alpha(value: Any) -> float:
    """A false-positive rate: a number strictly between 0 and 1 (at 1 or more every image is detected)."""
    try:
        alpha = parse_positive_float(value)
    except ValueError:
        alpha = None
    if alpha is None or alpha >= 1:
        raise ValueError(f"alpha must be in (0, 1), got {value!r}")
    return alpha


@register
class Watermark(Metric):
    INFO = INFO
    OPTIONS = {
        "messages": Option("+".join(DEFAULT_MESSAGES), "messages to look for, joined by '+': sdv1, sdv2, sdxl "
                           "or any text", parse=lambda v: "+".join(_parse_messages(v))),
        "alpha": Option(ALPHA, "false-positive rate per clean image (Bonferroni over messages x reads), "
                        "in (0, 1)", parse=parse_alpha),
    }

    def _score(self, items: list[Item]) -> list[tuple[float, dict]]:
        messages = [resolve_message(name) for name in _parse_messages(self.options["messages"])]
        out: list[tuple[float, dict]] = []
        for item in items:
            image, reason = read_rgb(item.image_path)
            if image is None:
                out.append((float("nan"), {"reason": reason}))
                continue
            result = detect(image, messages, self.options["alpha"])
            if result["detected"] is None:
                out.append((float("nan"), result))
            else:
                out.append((1.0 if result["detected"] else 0.0, result))
        return out
