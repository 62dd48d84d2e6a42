"""Text-encoder embeddings of a prompt with A1111 emphasis (:mod:`harness.emphasis`).

Each run of text is tokenized on its own and its tokens carry its weight; the encoder's output for a
token is scaled by that weight, and the whole embedding is then scaled back to its unweighted mean, so
emphasis shifts attention between words without making the prompt louder (skipped where the mean is
float noise: an encoder whose outputs average to 0, see `_restorable`). The tokens are framed and
padded exactly as the pipeline's own `encode_prompt` frames them (start, text cut to the model's length,
end, padding), so a prompt whose weights are all 1 gets the pipeline's embeddings bit for bit.
"""

from __future__ import annotations

import torch

from .emphasis import parse


def _restorable(plain: torch.Tensor, restore: torch.Tensor) -> bool:
    """Whether scaling back to the unweighted mean is meaningful: a positive, finite factor from a mean
    that is not float noise. An encoder whose last LayerNorm has no bias (the built-in random models)
    averages every token to about 0, and dividing noise by noise would scale, flip or blow up the whole
    embedding; such a prompt keeps its weights without the restoration."""
    return bool(torch.isfinite(restore) and restore > 0 and plain.mean().abs() > 1e-3 * plain.abs().mean())


def weighted_embeddings(pipe, prompt: str, device) -> torch.Tensor:
    """(1, L, D) embeddings of `prompt` read as A1111 emphasis, in the text encoder's dtype on `device`."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in parse(prompt):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += tokens
        weights += [weight] * len(tokens)
    room = tokenizer.model_max_length - 2
    ids, weights = ids[:room], weights[:room]
    pad = room - len(ids)
    ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
    weights = [1.0, *weights, 1.0] + [1.0] * pad
    input_ids = torch.tensor([ids], device=device)
    mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        mask = torch.tensor([[1] * (len(ids) - pad) + [0] * pad], device=device)
    with torch.no_grad():
        z = encoder(input_ids, attention_mask=mask)[0]
        if any(w != 1.0 for w in weights):
            scale = torch.tensor(weights, device=z.device, dtype=torch.float32)[None, :, None]
            plain = z.float()
            z = weighted = plain * scale
            restore = plain.mean() / weighted.mean()
            if _restorable(plain, restore):
                z = weighted * restore
    return z.to(dtype=encoder.dtype, device=device)
