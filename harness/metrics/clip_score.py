"""CLIP score: how well an image matches its prompt.

Per image: `max(scale * cos(E_img(image), E_txt(prompt)), 0)` with unit
CLIP embeddings. `text=...` scores every image against that fixed text
instead (a probe: "is this image red?" across all cells of a study); the
option then enters the metric id, and items without a prompt are scored too.
A text holding commas is quoted: `clip_score:text="a red circle, by ian mcque"`.

- `scale=100` (default) is the convention of most diffusion papers and of
  torchmetrics; `scale=2.5` gives the CLIPScore paper's `2.5 * max(cos, 0)`
  (Hessel et al. 2021), whose values sit roughly in 0..1 for ViT-B/32.
- `clamp="image"` (default) clamps each image's score at 0, so every value is a
  CLIPScore in its own right and means of them are means of CLIPScores.
  `clamp="batch_mean"` reproduces torchmetrics' `CLIPScore`, which averages
  `scale * cos` over the whole batch and clamps only that mean. Per-image values
  are then left unclamped (they can be negative) and
  `ClipScore.aggregate(values) = max(mean(values), 0)` gives torchmetrics' number.
  The two agree whenever no image has a negative cosine; with random or
  unrelated images they differ, and a mean of clamped values is never lower.

Prompts longer than the model's context (77 tokens for the OpenAI and OpenCLIP
models) are truncated by keeping the first 75 BPE tokens (context length less the
start and end tokens); the score's detail then has `truncated=True`, `tokens=n`
(BPE tokens before truncation) and `limit` (the tokens the model read).

SD 1.x was trained with OpenAI ViT-L/14 text features and SD 2.x with OpenCLIP
ViT-H/14, so a single scorer family favours one of them: score with several
models (several metric instances, each its own id) when comparing checkpoints.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from harness.metrics.base import Item, MetricInfo, Option, parse_positive_float, register
from harness.metrics.clip_embed import CLIP_OPTIONS, ClipMetric

INFO = MetricInfo(
    name="clip_score",
    description="CLIP image-prompt agreement: max(scale * cos(image, prompt), 0)",
    unit="scale x cosine",
    range=(0.0, 100.0),
    higher_is_better=True,
    needs=frozenset({"image", "prompt"}),
)


@register
class ClipScore(ClipMetric):
    INFO = INFO
    OPTIONS = {
        "model": CLIP_OPTIONS["model"],
        "pretrained": CLIP_OPTIONS["pretrained"],
        "scale": Option(100.0, "multiplier of the cosine: 100 (common) or 2.5 (CLIPScore paper)",
                        parse=parse_positive_float),
        "clamp": Option("image", "clamp at 0 per image, or only the batch mean as torchmetrics does",
                        choices=("image", "batch_mean")),
        "text": Option("", "score every image against this text instead of its prompt (a fixed probe, "
                       "e.g. text=a red circle); empty: the prompt", in_id="if_set"),
        **{k: CLIP_OPTIONS[k] for k in ("device", "batch_size", "cache")},
    }

    @property
    def info(self) -> MetricInfo:
        scale = self.options["scale"]
        lo = -scale if self.options["clamp"] == "batch_mean" else 0.0
        needs = INFO.needs - {"prompt"} if self.options["text"] else INFO.needs  # a probe needs no prompt
        return MetricInfo(INFO.name, INFO.description, INFO.unit, (lo, scale), INFO.higher_is_better, needs)

    def aggregate(self, values: Sequence[float]) -> float:
        """The summary of a set of values under this metric's clamp convention (NaNs skipped)."""
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            return math.nan
        mean = float(np.mean(finite))
        return max(mean, 0.0) if self.options["clamp"] == "batch_mean" else mean

    def _score(self, items: list[Item]) -> list[tuple[float, dict]]:
        images = self.embedder.images([item.image_path for item in items])
        probe = self.options["text"]
        texts = self.embedder.texts([probe or item.prompt for item in items])
        scale, per_image = self.options["scale"], self.options["clamp"] == "image"
        out: list[tuple[float, dict]] = []
        for image, text in zip(images, texts):
            detail = {"tokens": text.tokens, "truncated": text.truncated}
            if text.truncated:
                detail["limit"] = text.limit
            if isinstance(image, str):
                out.append((math.nan, {"reason": image, **detail}))
                continue
            cos = float(np.dot(image.astype(np.float64), text.vector.astype(np.float64)))
            value = scale * cos
            out.append((max(value, 0.0) if per_image else value, {"cos": cos, **detail}))
        return out
