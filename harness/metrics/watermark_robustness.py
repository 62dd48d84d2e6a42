"""How well the SD invisible watermark survives common edits, measured on natural photos.

    python -m harness.metrics.watermark_robustness [--n 60] [--size 512] [--message sdv1] [--patterns 1200]

Takes scikit-image's bundled sample photos (no download), cuts them into
`--n` distinct size x size views (crops at several scales and places, mirror
images), embeds the message the way the SD scripts do (uint8 path), applies
each edit, and prints a markdown table: the detection rate of the message,
the median share of message bits a plain single decode gets right, and how
often a plain decode returns the exact message (what a string-match check
would report). The "clean" row is the false-positive rate on photos; the
last row (`--patterns`) the rate on flat two-colour stripes and checkerboards.

Detection looks for the message the way a user would (`looked_for`): a preset
among the three presets, as `harness watermark detect` and the `watermark`
metric do by default (their p-values corrected for the three), any other text
on its own, as `detect --message TEXT` does. On an embedded image a hit is a
detection whose best match is the embedded message: an sdv2 image flagged as
sdxl is a miss. On an unmarked image (the false-positive rows) every detection
counts, whichever message it names.

Needs scikit-image (a test dependency of this project).
"""

from __future__ import annotations

import argparse
import io
import time
from typing import Callable, Iterable, Iterator

import numpy as np

from harness.metrics.watermark import (
    DEFAULT_MESSAGES, Message, block_votes, bits_from_votes, detect, embed, resolve_message,
)

COLOR_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
GRAY_SOURCES = ("camera", "moon", "brick", "grass", "gravel")
SCALES = (1.0, 1.4, 2.0)         # view side = shorter source side / scale
ANCHORS = ((0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0))


def natural_images(n: int, size: int = 512, gray: bool = True) -> list[tuple[str, np.ndarray]]:
    """`n` distinct size x size RGB uint8 views of scikit-image's sample photos, deterministic.

    Views are taken round-robin over the sources so a small `n` still spans all of them.
    """
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("natural_images needs scikit-image: pip install scikit-image") from exc
    sources = list(COLOR_SOURCES) + (list(GRAY_SOURCES) if gray else [])
    generators = [_views(name, getattr(data, name)(), size) for name in sources]
    out: list[tuple[str, np.ndarray]] = []
    seen: set[bytes] = set()
    while len(out) < n and generators:
        for gen in list(generators):
            try:
                name, view = next(gen)
            except StopIteration:
                generators.remove(gen)
                continue
            digest = view.tobytes()[::97]
            if digest not in seen:
                seen.add(digest)
                out.append((name, view))
            if len(out) == n:
                break
    if len(out) < n:
        raise ValueError(f"natural_images: only {len(out)} distinct views available, asked for {n}")
    return out


def _views(name: str, image: np.ndarray, size: int) -> Iterator[tuple[str, np.ndarray]]:
    from PIL import Image

    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    rgb = np.ascontiguousarray(rgb.astype(np.uint8))
    height, width = rgb.shape[:2]
    for flip in (False, True):
        for scale in SCALES:
            side = int(min(height, width) / scale)
            for ay, ax in ANCHORS:
                top, left = int(round((height - side) * ay)), int(round((width - side) * ax))
                crop = rgb[top:top + side, left:left + side]
                view = np.asarray(Image.fromarray(crop).resize((size, size), Image.LANCZOS))
                if flip:
                    view = view[:, ::-1]
                yield f"{name}/s{scale}/a{ay},{ax}/{'flip' if flip else 'orig'}", np.ascontiguousarray(view)


def two_colour_patterns(n: int, size: int = 256, seed: int = 7) -> Iterator[tuple[str, np.ndarray]]:
    """`n` flat two-colour images: checkerboards, vertical and horizontal stripes of random
    cell sizes (1-39 px), phases and colours. Their reads repeat with short periods, the
    hard case for a fair-coin null (see `watermark`'s docstring). Made one at a time."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cell_h, cell_w = rng.integers(1, 40, 2)
        phase_y, phase_x = rng.integers(0, 40, 2)
        colours = rng.integers(0, 256, (2, 3), dtype=np.uint8)
        rows, cols = (yy + phase_y) // cell_h, (xx + phase_x) // cell_w
        kind = ("checkerboard", "vertical stripes", "horizontal stripes")[i % 3]
        mask = {"checkerboard": rows + cols, "vertical stripes": cols, "horizontal stripes": rows}[kind] % 2
        image = np.where(mask.astype(bool)[..., None], colours[0], colours[1]).astype(np.uint8)
        yield f"{kind}/{cell_h}x{cell_w}", image


def jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    def apply(rgb: np.ndarray) -> np.ndarray:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return apply


def resize_half_and_back(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    height, width = rgb.shape[:2]
    small = Image.fromarray(rgb).resize((width // 2, height // 2), Image.BICUBIC)
    return np.asarray(small.resize((width, height), Image.BICUBIC))


def crop_top_left(pixels: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda rgb: np.ascontiguousarray(rgb[pixels:, pixels:])


def crop_bottom_right(pixels: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda rgb: np.ascontiguousarray(rgb[:-pixels, :-pixels])


def identity(rgb: np.ndarray) -> np.ndarray:
    return rgb


def conditions(message: str) -> list[tuple[str, bool, str, Callable[[np.ndarray], np.ndarray]]]:
    """(label, embedded?, embed path, edit) for each row."""
    return [
        ("clean (false positives)", False, "uint8", identity),
        (f"{message} embedded, PNG", True, "uint8", identity),
        (f"{message} embedded, JPEG q90", True, "uint8", jpeg(90)),
        (f"{message} embedded, JPEG q75", True, "uint8", jpeg(75)),
        (f"{message} embedded, resize 0.5x and back", True, "uint8", resize_half_and_back),
        (f"{message} embedded, 2 px crop top-left", True, "uint8", crop_top_left(2)),
        (f"{message} embedded, 2 px crop bottom-right", True, "uint8", crop_bottom_right(2)),
        (f"{message} embedded on the float32 path (diffusers SDXL style), PNG", True, "float32", identity),
    ]


def measure(n: int = 60, size: int = 512, message: str = "sdv1", patterns: int = 0) -> list[dict]:
    msg = resolve_message(message)
    images = natural_images(n, size)
    rows = [_row(label, msg, [edit(embed(rgb, msg, path) if embedded else rgb) for _, rgb in images], embedded)
            for label, embedded, path, edit in conditions(message)]
    if patterns:
        rows.append(_row("two-colour stripes and checkerboards, 256 px (false positives)", msg,
                         (rgb for _, rgb in two_colour_patterns(patterns)), False))
    return rows


def looked_for(msg: Message) -> list[str | Message]:
    """The messages detection looks for: the presets for a preset (the default of `detect` and the
    metric), else the message alone (`detect --message TEXT`)."""
    return list(DEFAULT_MESSAGES) if msg.name in DEFAULT_MESSAGES else [msg]


def _row(label: str, msg: Message, tests: Iterable[np.ndarray], embedded: bool) -> dict:
    """One table row. On embedded images a hit is `msg` detected as the best match; on unmarked
    images any detection is a false positive."""
    detected, accuracy, exact = 0, [], 0
    messages = looked_for(msg)
    for test in tests:
        result = detect(test, messages)
        detected += bool(result["detected"]) and (not embedded or result["best"] == msg.name)
        plain = bits_from_votes(block_votes(np.ascontiguousarray(test[:, :, ::-1])), len(msg.bits))
        accuracy.append(float((plain == msg.array).mean()))
        exact += bool((plain == msg.array).all())
    count = len(accuracy)
    return {"condition": label, "images": count, "detected": detected,
            "rate": detected / count, "plain_accuracy": float(np.median(accuracy)),
            "plain_min": float(np.min(accuracy)), "plain_max": float(np.max(accuracy)),
            "exact": exact / count}


def markdown(rows: list[dict]) -> str:
    lines = ["| condition | images | detected | detection rate | bits right, plain decode (median, min-max) "
             "| exact string match, plain decode |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['condition']} | {row['images']} | {row['detected']} | {row['rate']:.0%} | "
                     f"{row['plain_accuracy']:.0%} ({row['plain_min']:.0%}-{row['plain_max']:.0%}) | "
                     f"{row['exact']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="number of distinct photos (default 60)")
    parser.add_argument("--size", type=int, default=512, help="side of the square test images (default 512)")
    parser.add_argument("--message", default="sdv1",
                        help="message to embed and detect: sdv1, sdv2, sdxl (looked for among the three presets, "
                             "as detect does by default) or a text (looked for alone); a hit is a detection whose "
                             "best match is this message")
    parser.add_argument("--patterns", type=int, default=1200,
                        help="synthetic two-colour stripe and checkerboard images for a second "
                             "false-positive row (default 1200; 0 leaves it out)")
    args = parser.parse_args(argv)
    if args.size < 256:
        parser.error("--size must be at least 256: the codec needs 256x256")
    start = time.time()
    rows = measure(args.n, args.size, args.message, args.patterns)
    msg = resolve_message(args.message)
    names = ", ".join(m if isinstance(m, str) else m.name for m in looked_for(msg))
    print(markdown(rows))
    print(f"\n{args.n} views of scikit-image sample photos at {args.size}x{args.size}; detection = "
          f"harness.metrics.watermark.detect (messages {names}; alpha 1e-3 per image, Bonferroni over "
          f"messages x reads; on embedded images a hit is {msg.name} detected as the best match, on unmarked "
          f"images any detection); plain decode = one imwatermark-style read of the message, uint8 path, no "
          f"re-alignment. {time.time() - start:.0f} s.")


if __name__ == "__main__":
    main()
