"""CLIP directional similarity of an img2img edit to its prompt edit.

`cos(E_img(output) - E_img(init), E_txt(prompt) - E_txt(source_prompt))` with
unit CLIP embeddings (the directional measure of StyleGAN-NADA and
InstructPix2Pix). It asks whether the image moved in the direction the prompt
moved, independent of how well either image matches its own prompt. Range
[-1, 1]; 0 means the change is unrelated to the prompt change.

NaN with a reason when the item has no init image or no source prompt, and when
either direction is zero (output identical to the init image, or prompt equal
to the source prompt), where no direction exists.
"""

from __future__ import annotations

import math

import numpy as np

from harness.metrics.base import Item, MetricInfo, register
from harness.metrics.clip_embed import CLIP_OPTIONS, ClipMetric, cosine

INFO = MetricInfo(
    name="clip_directional",
    description="cosine between the CLIP image change (init -> output) and the text change (source -> prompt)",
    unit="cosine",
    range=(-1.0, 1.0),
    higher_is_better=True,
    needs=frozenset({"image", "init_image", "prompt", "source_prompt"}),
)
_ZERO = 1e-6


@register
class ClipDirectional(ClipMetric):
    INFO = INFO
    OPTIONS = dict(CLIP_OPTIONS)

    def _score(self, items: list[Item]) -> list[tuple[float, dict]]:
        outputs = self.embedder.images([item.image_path for item in items])
        inits = self.embedder.images([item.init_image_path for item in items], [item.init_size for item in items])
        prompts = self.embedder.texts([item.prompt for item in items])
        sources = self.embedder.texts([item.source_prompt or "" for item in items])
        results: list[tuple[float, dict]] = []
        for out, init, prompt, source in zip(outputs, inits, prompts, sources):
            detail = {"truncated": prompt.truncated or source.truncated}
            if detail["truncated"]:
                detail["limit"] = prompt.limit
            if isinstance(out, str) or isinstance(init, str):
                # an init image that does not decode may be restored: not stored, the next eval retries
                results.append((math.nan, {"reason": out} if isinstance(out, str) else
                                {"reason": f"init {init}", "retry": True}))
                continue
            image_dir = out.astype(np.float64) - init.astype(np.float64)
            text_dir = prompt.vector.astype(np.float64) - source.vector.astype(np.float64)
            if np.linalg.norm(image_dir) < _ZERO:
                results.append((math.nan, {"reason": "output embeds identical to the init image: no image direction"}))
            elif np.linalg.norm(text_dir) < _ZERO:
                reason = "prompt embeds identical to the source prompt: no text direction"
                results.append((math.nan, {"reason": reason}))
            else:
                results.append((cosine(image_dir, text_dir), detail))
        return results
