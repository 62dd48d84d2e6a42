"""Detecting the invisible watermark of the Stable Diffusion scripts, and the `watermark` metric.

The codec (messages, embedding, the raw block decode) is in `watermark_codec`,
whose docstring says how it works and why detection reads two dtype paths at
several grid offsets.

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
matches up to 72 % of sdv1 by its bit-of-byte profile alone, binomial p ~ 1e-7. For
messages of 8 bytes or more a third p-value therefore conditions on how many
ones were read at each of the 8 bit-of-byte positions (`p_columns`): under the
null, which bytes got them is unrelated to the message, so the matches in each
column are a shifted hypergeometric and the total is their exact convolution
(`column_pvalue`). A real mark keeps its power (an exact sdv1 read: 1e-25; 75 %
of bits right at random places: ~1e-6). Shorter messages (sdv2, sdxl, short texts of
one's own) have too few bytes per column for it and keep the two nulls above. `p_value` is the
largest of the p-values computed.

`detect` makes A reads (2 dtype paths x geometries; A = 18 for sizes that are
multiples of 8) for each of M messages and keeps each message's read with the
smallest p-value, which is corrected by Bonferroni over all M x A tests:
`p_corrected = min(1, p_value * M * A)`. An image is `detected` when any
message has `p_corrected < alpha = 1e-3`. By the union bound a clean image is
then flagged with probability at most 1e-3, whatever the dependence between
reads. At M = 3, A = 18 detection needs at least 93 of 136 bits for sdv1 (68 %)
and, with the errors at random places, about 100 (74 %) in practice, as the
column null binds; 28 of 32 for sdv2, 39 of 48 for sdxl.

Measured on 60 views of scikit-image's photos at 512x512 (`python -m
harness.metrics.watermark_robustness`): a plain single read of a clean photo
gets 43-56 % of the sdv1 bits right (best of all reads: 50-61 %); the
smallest uncorrected p-value over 286 clean images (photos, noise, flat and
gradient images, 256 and 512 px) was 4e-4, against a per-test threshold of
1.9e-5; freshly embedded photos read 100 % (median) and as low as 52 % where
clipping of saturated pixels destroys the embedding; the median corrected p of
an embedded photo is 5e-24 (the column null's floor for an exact read). JPEG q90 or q75
destroys the mark, halving the size and back destroys it about half the time,
and a 2 px crop is recovered by the re-anchoring. Of 1,200 synthetic two-colour
stripe and checkerboard images (256 px), the binomial and balance nulls alone
flagged 2 as sdv1 (vertical stripes 16 px wide); with the column null, none.

Images the codec cannot mark cannot carry the message: under 256x256 pixels in
area (the codec's own test, so 512x192 is read) or with fewer 8x8 blocks than a
message has bits (a side under 8 px has none; see `watermark_codec`). `detect`
then returns `detected=None` with the reason (`TOO_SMALL` for the area), the
metric NaN. Each message is looked for once: a repeated one would count twice
in the Bonferroni correction, so it is an error.
"""

from __future__ import annotations

from math import comb
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from harness.metrics.base import Item, Metric, MetricInfo, Option, parse_positive_float, read_rgb, register
from harness.metrics.watermark_codec import (  # noqa: F401 - the codec's names are part of this module's API
    GRID, MIN_AREA, MIN_SIDE, PATHS, PRESETS, TOO_SMALL, Message, bits_from_votes, block_votes, embed, embed_file,
    haar_approximation, resolve_message, size_problem, to_rgb_array, u_channel, votes_from_u,
)

DEFAULT_MESSAGES = ("sdv1", "sdv2", "sdxl")
ALPHA = 1e-3          # family-wise false-positive rate per clean image
OFFSETS = tuple((dy, dx) for dy in range(3) for dx in range(3))  # top-left padding tried, in pixels
COLUMN_TEST_BITS = 64  # messages of 8 bytes or more also get the byte-column-conditioned null

INFO = MetricInfo(
    name="watermark",
    description="1 if the SD invisible watermark (dwtDct) is detected, else 0; evidence in detail",
    unit="flag",
    range=(0.0, 1.0),
    higher_is_better=False,
    needs=frozenset({"image"}),
)


# -- detection -----------------------------------------------------------------
def _paddings(height: int, width: int) -> list[tuple[tuple[int, int], tuple[tuple[int, int], tuple[int, int]]]]:
    """The image as given, then padded at the top-left by OFFSETS and at the bottom-right to a multiple of 8."""
    out = [((0, 0), ((0, 0), (0, 0)))]
    for dy, dx in OFFSETS:
        pad_h, pad_w = -(height + dy) % GRID, -(width + dx) % GRID
        if dy == dx == pad_h == pad_w == 0:
            continue  # same as the image as given
        out.append(((dy, dx), ((dy, pad_h), (dx, pad_w))))
    return out


def detect(image: Any, messages: Iterable[str | bytes | Message] | None = None, alpha: float = ALPHA) -> dict:
    """Evidence for each message and the decision; see the module docstring for the statistics.

    Returns `{"detected": bool | None, "best": name | None, "messages": {name: evidence},
    "attempts": A, "alpha": alpha}`, plus `"reason"` when the image cannot carry any of the messages, and
    `"not_read": {name: reason}` for messages longer than it can carry (the others are looked for alone).
    """
    msgs = resolve_messages(messages)
    if not msgs:
        raise ValueError("detect: no messages to look for; give e.g. messages=['sdv1']")
    alpha = parse_alpha(alpha)
    rgb, _ = to_rgb_array(image, "detect")
    height, width = rgb.shape[:2]
    too_long = {m.name: problem for m in msgs if (problem := size_problem(height, width, len(m.bits)))}
    if len(too_long) == len(msgs):
        longest = max(msgs, key=lambda m: len(m.bits))
        return {"detected": None, "reason": too_long[longest.name], "size": [width, height], "messages": {}}
    msgs = [m for m in msgs if m.name not in too_long]
    reads: dict[str, list[tuple[int, str, tuple[int, int], np.ndarray]]] = {m.name: [] for m in msgs}
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
                reads[msg.name].append((int((bits == msg.array).sum()), path, offset, bits))
    tests = attempts * len(msgs)
    evidence = {msg.name: _best_read(msg, reads[msg.name], tests) for msg in msgs}
    top = min(evidence, key=lambda name: (evidence[name]["p_corrected"], evidence[name]["p_value"]))
    detected = evidence[top]["p_corrected"] < alpha
    return {"detected": bool(detected), "best": top if detected else None, "messages": evidence,
            "attempts": attempts, "alpha": alpha, "size": [width, height], **({"not_read": too_long} if too_long else {})}


def resolve_messages(messages: Iterable[str | bytes | Message] | None) -> list[Message]:
    """The messages to look for (default: DEFAULT_MESSAGES); ValueError for one given twice, which would
    count twice in the Bonferroni correction: one payload however it is written (`hello` and `text:hello`;
    `sdv1` and `text:StableDiffusionV1`, its bytes)."""
    msgs: list[Message] = []
    for given in (DEFAULT_MESSAGES if messages is None else messages):
        msg = resolve_message(given)
        twin = next((m for m in msgs if m.bits == msg.bits), None)
        if twin is not None:
            shown = repr(given) if msg.name == given else f"{given!r} ({msg.name})"
            also = "" if twin.name == msg.name else f", as {twin.name}"
            raise ValueError(f"message {shown} is given twice{also}; give each message once")
        msgs.append(msg)
    return msgs


def canonical_messages(value: Any) -> str:
    """The messages of an option value as one spelling, so one set written two ways is one metric: each by
    its resolved name (`hello` is `text:hello`), the presets first in their own order, then the others
    sorted (the order changes no score)."""
    msgs = resolve_messages(_parse_messages(value))
    presets = [name for name in PRESETS if any(m.name == name for m in msgs)]
    return "+".join(presets + sorted(m.name for m in msgs if m.name not in PRESETS))


def _best_read(msg: Message, reads: list, tests: int) -> dict:
    """The evidence of the read with the smallest p-value. Reads go in order of matched bits; a read
    whose binomial p (a lower bound of its p-value, and falling with matches) is no smaller than the
    best p-value so far cannot win, nor can any read after it, so few reads are tested fully."""
    best: dict | None = None
    for matched, path, offset, bits in sorted(reads, key=lambda r: -r[0]):
        if best is not None and _p_binomial(matched, len(msg.bits)) >= best["p_value"]:
            break
        evidence = _evidence(msg, matched, bits)
        if best is None or evidence["p_value"] < best["p_value"]:
            best = {**evidence, "p_corrected": min(1.0, evidence["p_value"] * tests), "path": path,
                    "offset": list(offset)}
    assert best is not None
    return best


def _p_binomial(matched: int, n: int) -> float:
    """P[X >= matched], X ~ Binomial(n, 1/2), exact in integers."""
    return sum(comb(n, k) for k in range(matched, n + 1)) / 2 ** n


def _p_hypergeometric(shared: int, n: int, ones_sent: int, ones_read: int) -> float:
    """P[X >= shared], X ~ Hypergeometric(n, ones_sent, ones_read), exact in integers."""
    top = min(ones_sent, ones_read)
    return sum(comb(ones_sent, s) * comb(n - ones_sent, ones_read - s)
               for s in range(max(shared, 0), top + 1)) / comb(n, ones_read)


def _evidence(msg: Message, matched: int, bits: np.ndarray) -> dict:
    n, ones_sent, ones_read = len(msg.bits), sum(msg.bits), int(bits.sum())
    p_binomial = _p_binomial(matched, n)
    # matched = n - ones_sent - ones_read + 2 * (ones in both): condition on the ones read.
    both = (matched - n + ones_sent + ones_read) // 2
    p_balance = _p_hypergeometric(both, n, ones_sent, ones_read)
    p_columns = column_pvalue(msg.array, bits) if n >= COLUMN_TEST_BITS and n % 8 == 0 else None
    return {"matched": matched, "bits": n, "accuracy": matched / n, "ones_read": ones_read,
            "p_binomial": p_binomial, "p_balance": p_balance, "p_columns": p_columns,
            "p_value": max(p_binomial, p_balance, p_columns or 0.0), "exact": matched == n}


def column_pvalue(sent: np.ndarray, read: np.ndarray) -> float:
    """P[matches >= observed] when each bit position within the byte keeps its count of ones read.

    Null: the read's ones in byte column j (d_j of them) sit at byte positions
    unrelated to the message, so the ones shared with the message's K_j ones are
    hypergeometric (N bytes, K_j, d_j) and column j matches N - K_j - d_j + 2 * shared
    bits. The total is the sum of the 8 independent column counts; its law is
    their exact convolution.
    """
    sent_bytes = np.asarray(sent, dtype=bool).reshape(-1, 8)
    read_bytes = np.asarray(read, dtype=bool).reshape(-1, 8)
    n_bytes = len(sent_bytes)
    law = np.ones(1)
    for ones_sent, ones_read in zip(sent_bytes.sum(axis=0).tolist(), read_bytes.sum(axis=0).tolist()):
        column = np.zeros(n_bytes + 1)
        for shared in range(max(0, ones_sent + ones_read - n_bytes), min(ones_sent, ones_read) + 1):
            column[n_bytes - ones_sent - ones_read + 2 * shared] = (
                comb(ones_sent, shared) * comb(n_bytes - ones_sent, ones_read - shared) / comb(n_bytes, ones_read))
        law = np.convolve(law, column)  # sums of non-negative terms: tiny tails keep their precision
    observed = int((sent_bytes == read_bytes).sum())
    return float(min(1.0, law[observed:].sum()))


def detect_paths(paths: Sequence[Path | str], messages: Iterable[str | bytes | Message] | None = None,
                 alpha: float = ALPHA) -> list[dict]:
    """`detect` for image files; an unreadable or too small file gets `detected=None` and a reason."""
    msgs = resolve_messages(messages)
    results = []
    for path in paths:
        image, reason = read_rgb(path)
        if image is None:
            results.append({"path": str(path), "detected": None, "messages": {}, "reason": reason})
            continue
        results.append({"path": str(path), **detect(image, msgs, alpha)})
    return results


# -- the metric ----------------------------------------------------------------
def _parse_messages(value: Any) -> tuple[str, ...]:
    """Messages joined by '+' (so one cannot hold a '+'); a preset name in other case is a likely slip."""
    names = tuple(value) if isinstance(value, (list, tuple)) else tuple(str(value).split("+"))
    if not any(names):
        raise ValueError("no messages given; write e.g. sdv1+sdv2+sdxl")
    for name in names:
        if not name:
            raise ValueError(f"{value!r} has an empty message between '+' signs (a '+' only joins messages, "
                             "so a message cannot hold one); write e.g. sdv1+sdv2")
        check_preset_case(name)
    try:
        resolve_messages(names)
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}, e.g. sdv1+sdv2") from None
    return names


def check_preset_case(name: str) -> None:
    """A preset name in other case (`SDXL`) is a likely slip: ValueError saying how to write either."""
    if name.lower() in PRESETS and name not in PRESETS:
        raise ValueError(f"message {name!r} would be taken as that text; write {name.lower()} for the preset, "
                         f"or text:{name} for the text")


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
                           "or any text", parse=canonical_messages),
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
