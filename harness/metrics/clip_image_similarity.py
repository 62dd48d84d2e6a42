"""CLIP image similarity of an img2img output to its init image.

`cos(E_img(output), E_img(init))` with unit CLIP image embeddings, in [-1, 1]:
1 means CLIP sees the same picture, lower means less of the original survives.
This is the "how far did it drift" axis of an img2img strength study; pair it
with clip_score (adherence to the new prompt). Items without an init image
(txt2img) get NaN with a reason.
"""

from __future__ import annotations

import math

from harness.metrics.base import Item, MetricInfo, register
from harness.metrics.clip_embed import CLIP_OPTIONS, ClipMetric, cosine

INFO = MetricInfo(
    name="clip_image_similarity",
    description="cosine between CLIP image embeddings of the output and its init image",
    unit="cosine",
    range=(-1.0, 1.0),
    higher_is_better=True,
    needs=frozenset({"image", "init_image"}),
)


@register
class ClipImageSimilarity(ClipMetric):
    INFO = INFO
    OPTIONS = dict(CLIP_OPTIONS)

    def _score(self, items: list[Item]) -> list[tuple[float, dict]]:
        outputs = self.embedder.images([item.image_path for item in items])
        inits = self.embedder.images([item.init_image_path for item in items], [item.init_size for item in items])
        results: list[tuple[float, dict]] = []
        for out, init in zip(outputs, inits):
            if isinstance(out, str) or isinstance(init, str):
                # an init image that does not decode may be restored: not stored, the next eval retries
                results.append((math.nan, {"reason": out} if isinstance(out, str) else
                                {"reason": f"init {init}", "retry": True}))
            else:
                results.append((cosine(out, init), {}))
        return results
