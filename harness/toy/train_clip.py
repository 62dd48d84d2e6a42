"""Training stage of the toy CLIP (`clip`): contrastive, with attribute-swapped captions as hard negatives."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.toy import models, world
from harness.toy.training import (
    SEED,
    Setup,
    loop,
    render_pool,
    step_rng,
    trained,
    world_token_ids,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_tensor(images: np.ndarray, device: str = "cpu") -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device)


def train_clip(setup: Setup) -> None:
    import open_clip

    profile, device = setup.profile, setup.device
    budget = profile.clip
    size = models.CLIP_CONFIG["vision_cfg"]["image_size"]
    scenes, pool = render_pool(profile.clip_scenes, size, "clip", setup.workers)
    torch.manual_seed(SEED + 2)
    clip = models.build_clip().to(device)
    context = models.CLIP_CONFIG["text_cfg"]["context_length"]
    bpe = open_clip.get_tokenizer("ViT-B-32")  # OpenAI CLIP BPE, the tokenizer the scorer uses

    def tokenize(texts):
        return bpe(texts, context_length=context)

    keep = torch.tensor(world_token_ids(lambda texts: tokenize(texts).tolist()))
    with torch.no_grad():
        mask = torch.zeros(clip.token_embedding.weight.shape[0], dtype=torch.bool)
        mask[keep] = True
        clip.token_embedding.weight[~mask.to(device)] = 0.0
    opt = torch.optim.Adam(clip.parameters(), lr=budget.lr)
    attrs = ("color", "shape", "background", "artist")

    def make_batch(step: int) -> dict:
        rng = step_rng("clip", step)
        idx = rng.integers(len(scenes), size=budget.batch)
        imgs = pool[idx].astype(np.float32)
        imgs += rng.normal(0, rng.uniform(0, 6), size=(len(idx), 1, 1, 1)) * rng.standard_normal(imgs.shape[1:])
        captions, negatives = [], []
        for i in idx:
            phr = world.sample_phrasing(rng)
            lab = scenes[i].labels
            captions.append(world.caption(lab, phr))
            negatives += [world.caption(world.swapped(lab, a, rng), phr) for a in attrs]
        return {"x": clip_tensor(np.clip(imgs, 0, 255)), "texts": tokenize(captions + negatives)}

    def loss_fn(b: dict) -> torch.Tensor:
        img_f = F.normalize(clip.encode_image(b["x"]), dim=-1)
        txt_f = F.normalize(clip.encode_text(b["texts"]), dim=-1)
        n = img_f.shape[0]
        pos, neg = txt_f[:n], txt_f[n:].view(n, len(attrs), -1)
        scale = clip.logit_scale.exp().clamp(max=100)
        logits = scale * img_f @ pos.T
        target = torch.arange(n, device=logits.device)
        contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        hard = torch.cat([(img_f * pos).sum(-1, keepdim=True), torch.einsum("bd,bkd->bk", img_f, neg)], dim=1)
        hard_loss = F.cross_entropy(scale * hard, torch.zeros(n, dtype=torch.long, device=logits.device))
        return contrastive + hard_loss

    _, step = loop("clip", setup, {"clip": clip}, opt, make_batch, loss_fn)
    models.save_part(clip, "clip", setup.out)
    models.write_configs(setup.out, clip=models.CLIP_CONFIG, trained=trained(setup, "clip", step))
    print("[clip] saved", flush=True)

