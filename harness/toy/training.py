"""The machinery the toy training stages share: profiles (how much each stage trains), the
invocation (`Setup`), seeded per-step data, resumable checkpoints and the training loop.

Every step's data and noise come from generators seeded by (seed, stage, step)
(`step_rng`), so a stopped stage resumes from its last checkpoint with the same
data it would have seen, and worker processes that compute batches ahead
(`batches`) give the same batches. The stages themselves are in `train_vae`,
`train_unet` and `train_clip`; `train` is the entry point.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.toy import models, world

SEED = 20240229


@dataclass(frozen=True)
class Budget:
    steps: int
    batch: int
    lr: float


@dataclass(frozen=True)
class Profile:
    """How much each stage trains: step budgets and how many world scenes each stage draws from."""
    name: str
    vae: Budget
    decoder: Budget
    unet: Budget
    clip: Budget
    vae_size: int = 64  # px of the VAE stage's images (the decoder stage always uses 128)
    vae_scenes: int = 2000
    decoder_scenes: int = 1000
    unet_scenes: tuple[tuple[int, int], ...] = ((128, 2000), (256, 500))  # (px, scenes)
    clip_scenes: int = 2500
    ema_decay: float = 0.995
    vae_blocks: tuple[int, ...] = (8, 16, 32, 32)  # the VAE's block widths (the rest is models.VAE_CONFIG)
    latent_channels: int = 4
    vae_edge: float = 0.0     # weight of an L1 loss on image gradients (keeps outlines and stripes sharp)
    vae_texture: float = 0.0  # weight of an L1 loss on local high-frequency energy (keeps grain)
    vae_probe: int = 64  # 256 px scenes whose latents' spread sets the VAE's scaling_factor
    unet_blocks: tuple[int, ...] = tuple(models.UNET_CONFIG["block_out_channels"])  # the UNet's block widths
    overrides: tuple[tuple[str, str], ...] = ()  # fields set by `with_overrides` (recorded in configs.json)

    def budget(self, stage: str) -> Budget:
        return getattr(self, stage)

    def vae_config(self) -> dict:
        return {**models.VAE_CONFIG, "block_out_channels": list(self.vae_blocks),
                "latent_channels": self.latent_channels}

    def with_overrides(self, items: dict[str, str]) -> Profile:
        """This profile with fields set from strings (`--set FIELD=VALUE`): numbers, comma lists for
        tuples, `steps,batch,lr` for a stage's budget, `px:scenes,...` for `unet_scenes`; each checked
        against what training can use (a ValueError names the field and the range)."""
        from dataclasses import fields, replace

        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("name", "overrides")}
        values = {}
        for key, text in items.items():
            if key not in known:
                raise ValueError(f"--set {key}={text}: unknown field {key!r}; expected one of {', '.join(known)}")
            current = known[key]
            try:
                values[key] = _parse_field(key, current, text)
            except ValueError as exc:  # out of range (says what was expected) or malformed
                expected = str(exc) if str(exc).startswith("expected") else \
                    f"expected {_FORMS.get(key, type(current).__name__)} like {_show(current)}"
                raise ValueError(f"--set {key}={text}: {expected}") from None
        return replace(self, **values, overrides=tuple(sorted({**dict(self.overrides), **items}.items())))

    def stage_tag(self, stage: str) -> str:
        """The profile's name, plus a digest of the overrides of the fields `stage` uses (`STAGE_FIELDS`) if
        any: names the stage's resumable state, so an override of another stage's field keeps it. What a stage
        takes from an earlier one (the VAE) is checked by content instead (`loop`'s `inputs`)."""
        mine = tuple((k, v) for k, v in self.overrides if k in STAGE_FIELDS[stage])
        if not mine:
            return self.name
        import hashlib

        return f"{self.name}-{hashlib.sha256(repr(mine).encode()).hexdigest()[:8]}"


# The profile fields each stage reads (its resumable state is named by their overrides, `Profile.stage_tag`).
# The decoder and unet stages read the VAE from the output folder, not from these fields.
STAGE_FIELDS = {
    "vae": ("vae", "vae_size", "vae_scenes", "vae_blocks", "latent_channels", "vae_edge", "vae_texture",
            "vae_probe"),
    "decoder": ("decoder", "decoder_scenes", "vae_edge", "vae_texture"),
    "unet": ("unet", "unet_scenes", "unet_blocks", "ema_decay"),
    "clip": ("clip", "clip_scenes"),
}


_FORMS = {"vae": "steps,batch,lr", "decoder": "steps,batch,lr", "unet": "steps,batch,lr", "clip": "steps,batch,lr",
          "vae_blocks": "4 block widths", "unet_blocks": "3 block widths", "unet_scenes": "px:scenes pairs"}


def _show(value) -> str:
    """A field's value as `--set` spells it."""
    if isinstance(value, Budget):
        return f"{value.steps},{value.batch},{value.lr:g}"
    if value and isinstance(value, tuple) and isinstance(value[0], tuple):
        return ",".join(":".join(map(str, pair)) for pair in value)
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _parse_field(key: str, current, text: str):
    """`text` as a value of the profile field `key` (whose value now is `current`); a ValueError starting
    "expected" says what range a well-formed value missed, any other one that the text is malformed."""
    def at_least(value, low: float, what: str):
        if not (math.isfinite(value) and value >= low):
            raise ValueError(f"expected {what}, got {value:g}")
        return value

    if isinstance(current, Budget):
        steps, batch, lr = text.split(",")
        smallest = 4 if key == "unet" else 1  # the unet stage's 256 px steps use a quarter of the batch
        return Budget(at_least(int(steps), 1, "steps >= 1"), at_least(int(batch), smallest, f"batch >= {smallest}"),
                      at_least(float(lr), 1e-12, "a learning rate > 0"))
    if key == "unet_scenes":
        pairs = tuple(tuple(int(x) for x in pair.split(":", 1)) for pair in text.split(","))
        if not all(len(p) == 2 for p in pairs):
            raise ValueError("px:scenes")
        if sorted(px for px, _ in pairs) != [128, 256]:  # the sizes the unet stage draws its batches at
            raise ValueError("expected scenes at 128 px and at 256 px (the sizes the unet stage trains at)")
        for _, scenes in pairs:
            at_least(scenes, 1, "scenes >= 1 at each size")
        return tuple(sorted(pairs))
    if isinstance(current, tuple):
        widths = tuple(int(x) for x in text.split(","))
        if len(widths) != len(current):
            raise ValueError(f"expected {len(current)} block widths (one per block), got {len(widths)}")
        group = models.UNET_CONFIG["norm_num_groups"] if key == "unet_blocks" else 1
        if any(w < 1 or w % group for w in widths):
            raise ValueError("expected widths >= 1" + (f", each a multiple of {group} (the norm groups)"
                                                        if group > 1 else ""))
        return widths
    if isinstance(current, float):
        value = float(text)
        if key == "ema_decay" and not 0 <= value < 1:
            raise ValueError(f"expected 0 <= ema_decay < 1, got {value:g}")
        return at_least(value, 0, f"{key} >= 0")
    value = int(text)
    if key == "vae_size" and (value < 64 or value % 8):
        raise ValueError(f"expected a multiple of 8, at least 64, got {value}")
    return at_least(value, 1, f"{key} >= 1")


PROFILES = {
    # About two hours on a 2-core CPU (vae 10 min, decoder 22, unet 60, clip 25).
    "cpu": Profile("cpu", vae=Budget(1500, 16, 4e-4), decoder=Budget(1500, 8, 3e-4),
                   unet=Budget(4000, 32, 5e-4), clip=Budget(3000, 32, 5e-4)),
    # Minutes on one H100 (with --workers computing batches ahead): larger batches, more steps and scenes.
    # A wider VAE with losses that keep the styles' fine detail (outlines, stripes, grain).
    "gpu": Profile("gpu", vae=Budget(2500, 32, 4e-4), decoder=Budget(1000, 32, 2e-4),
                   unet=Budget(4500, 256, 7e-4), clip=Budget(7000, 128, 5e-4),
                   vae_size=128, vae_scenes=4000, decoder_scenes=3000,
                   unet_scenes=((128, 12000), (256, 3000)), clip_scenes=12000, ema_decay=0.998,
                   vae_blocks=(16, 32, 64, 64), vae_edge=1.0, vae_texture=1.0, unet_blocks=(64, 64, 64)),
}



@dataclass(frozen=True)
class Setup:
    """One training invocation: where to write, on what, how much (`profile`), a wall-time cap per
    stage, steps at which stages stop early (`stop_at`, which reproduces a run a wall-time cap
    stopped: configs.json records the step) and how many worker processes compute batches ahead."""
    out: Path
    device: str = "cpu"
    profile: Profile = PROFILES["cpu"]
    minutes: float | None = None
    workers: int = 0
    stop_at: tuple[tuple[str, int], ...] = ()


def pick_device(name: str = "auto") -> str:
    """`auto`: cuda if available, else cpu; a named device must exist here (a SettingsError says why not)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    from harness.devices import pick_device as checked

    return checked(name)


def step_rng(stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([SEED, sum(map(ord, stage)), step])


def to_tensor(images: list[np.ndarray], device: str = "cpu") -> torch.Tensor:
    """uint8 HWC images -> float NCHW in [-1, 1]."""
    arr = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(device)


def _fork_pool(workers: int):
    import multiprocessing

    return multiprocessing.get_context("fork").Pool(workers)


def render_all(scenes: list[world.Scene], size: int, workers: int = 0) -> np.ndarray:
    """The scenes rendered at `size` px (uint8 NHWC), by `workers` processes when > 0 (same pixels)."""
    if workers <= 0 or len(scenes) < 64:
        return np.stack([world.render(s, size) for s in scenes])
    with _fork_pool(workers) as pool:
        return np.stack(pool.starmap(world.render, [(s, size) for s in scenes], chunksize=32))


def render_pool(n: int, size: int, seed_tag: str, workers: int = 0) -> tuple[list[world.Scene], np.ndarray]:
    rng = np.random.default_rng([SEED, sum(map(ord, seed_tag))])
    scenes = [world.sample_scene(rng) for _ in range(n)]
    return scenes, render_all(scenes, size, workers)


def world_token_ids(encode) -> list[int]:
    """Every token id that world captions (and the empty prompt) can produce; `encode(texts)` gives id lists."""
    rng = np.random.default_rng(0)
    texts = [""]
    words = [*world.SHAPES, *world.BACKGROUNDS, *world.SIZES, *world.POSITION_PHRASES.values(),
             *world.ARTISTS, *world.MEDIUMS, "a", "an", "of", "on", "with", "against", "background", ",", "by",
             "grey", "in", "the", "at"]
    texts += words
    texts += [world.caption(world.sample_labels(rng), world.sample_phrasing(rng)) for _ in range(3000)]
    ids: set[int] = set()
    for row in encode(texts):
        ids.update(int(i) for i in row)
    return sorted(ids)


def work_dir(out: Path) -> Path:
    """Where resumable state and cached latents go: `$HARNESS_CACHE/toy-train/<hash of out>`, not the data folder."""
    import hashlib

    from harness.checkpoints import cache_dir

    tag = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:8]
    path = cache_dir() / "toy-train" / tag
    path.mkdir(parents=True, exist_ok=True)
    return path


class Checkpoint:
    """Resumable training state in `<work dir>/train-<stage>-<stage tag>.pt` (`Profile.stage_tag`)."""

    def __init__(self, setup: Setup, stage: str) -> None:
        tag = setup.profile.stage_tag(stage)
        suffix = "" if tag == "cpu" else f"-{tag}"
        self.path = work_dir(setup.out) / f"train-{stage}{suffix}.pt"

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=False)
        except (RuntimeError, OSError, EOFError) as exc:
            raise ValueError(f"{self.path}: the resumable training state cannot be read ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'damaged'}); delete it to train this stage "
                             "from its start") from exc

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


def lr_at(step: int, budget: Budget, warmup: int = 50) -> float:
    if step < warmup:
        return budget.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, budget.steps - warmup)
    return budget.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class _Steps(torch.utils.data.Dataset):
    def __init__(self, make, start: int, stop: int) -> None:
        self.make, self.start, self.stop = make, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        return self.make(self.start + i)


def batches(make, start: int, stop: int, workers: int = 0):
    """`make(step)` for step in [start, stop), in order; with `workers` > 0 computed ahead by forked
    processes. `make` is a pure function of the step (its randomness comes from `step_rng`), so the
    batches are the same either way; it must stay on the CPU."""
    if workers <= 0:
        return (make(step) for step in range(start, stop))
    loader = torch.utils.data.DataLoader(_Steps(make, start, stop), batch_size=None, num_workers=workers,
                                         prefetch_factor=4, multiprocessing_context="fork")
    return iter(loader)


def encoder_digest(out: Path) -> str:
    """A digest of what the latents depend on: the VAE encoder's weights and the scaling factor
    (the `decoder` stage leaves it unchanged)."""
    import json

    from safetensors.torch import load_file

    scale = json.loads((out / models.CONFIGS_FILE).read_text())["vae"]["scaling_factor"]
    return weights_encoder_digest(load_file(str(out / "vae.safetensors")), scale)


def weights_encoder_digest(weights: dict, scale: float) -> str:
    """`encoder_digest` of VAE weights as saved (fp16 tensors, `saved_weights`) with this scaling factor."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(weights.items()):
        if key.startswith(("encoder.", "quant_conv.")):
            digest.update(key.encode() + value.numpy().tobytes())
    digest.update(repr(scale).encode())
    return digest.hexdigest()[:10]


def saved_weights(module) -> dict:
    """`module`'s weights as `models.save_part` writes them (CPU, fp16; no sparse tables: the VAE has none)."""
    return {k: v.detach().to("cpu", torch.float32).to(torch.float16) for k, v in module.state_dict().items()}


def loop(stage: str, setup: Setup, modules: dict, opt, make_batch, loss_fn, extra_state=None,
          clip_norm: float | None = None, after_step=None, inputs: str = "") -> tuple[int, int]:
    """From the checkpointed step to the stage's budget: `loss = loss_fn(make_batch(step))`, backward,
    gradient norm clipped to `clip_norm` if given, optimizer step, `after_step()`; return the step it started
    at and the last step done (equal: the resumable state had nothing left to train).
    `inputs` is a digest of what the stage trains on beyond the world (the VAE encoder, for the stages
    after it): a resumable state saved with other inputs is stale and the stage starts over."""
    budget = setup.profile.budget(stage)
    ckpt = Checkpoint(setup, stage)
    start = 0
    state = ckpt.load()
    if state is not None and state.get("inputs", "") != inputs:
        print(f"[{stage}] the resumable state {ckpt.path.name} was trained on other inputs (VAE encoder "
              f"{state.get('inputs') or 'unknown'}, now {inputs or 'none'}); starting {stage} over", flush=True)
        state = None
    if state is not None:
        for name, module in modules.items():
            module.load_state_dict(state[name])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        if extra_state is not None:
            extra_state.load_state_dict(state["extra"])
        print(f"[{stage}] resuming at step {start}", flush=True)
    t0 = time.time()
    step = start
    stop_step = min(budget.steps, dict(setup.stop_at).get(stage, budget.steps))
    if start > stop_step:  # training cannot go back: replaying the stop needs a fresh start
        raise ValueError(f"--stop-at {stage}={stop_step}: the resumable state {ckpt.path} is at step {start} "
                         f"already; delete it to train {stage} again from step 0")
    for batch in batches(make_batch, start, stop_step, setup.workers):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, budget) * group.get("lr_scale", 1.0)
        loss_t = loss_fn({k: v.to(setup.device) for k, v in batch.items()})
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for m in modules.values() for p in m.parameters()], clip_norm)
        opt.step()
        if after_step is not None:
            after_step()
        step += 1
        if step % 25 == 0 or step == budget.steps:
            rate = (time.time() - t0) / (step - start)
            print(f"[{stage}] step {step}/{budget.steps} loss {float(loss_t.detach()):.4f} {rate:.3f}s/step",
                  flush=True)
        stop = setup.minutes is not None and time.time() - t0 > setup.minutes * 60
        if step % 100 == 0 or step == stop_step or stop:
            state = {name: m.state_dict() for name, m in modules.items()}
            state.update(opt=opt.state_dict(), step=step, inputs=inputs)
            if extra_state is not None:
                state["extra"] = extra_state.state_dict()
            ckpt.save(state)
        if stop:
            print(f"[{stage}] stopped by --minutes={setup.minutes} at step {step}/{budget.steps}; the saved "
                  f"weights are a partial run (re-run to resume)", flush=True)
            break
    return start, step


def trained(setup: Setup, stage: str, step: int) -> dict:
    """What `configs.json` records about how a part was made."""
    budget = setup.profile.budget(stage)
    made = {"profile": setup.profile.name, "device": setup.device.split(":")[0], "steps": step,
            "of": budget.steps, "batch": budget.batch}
    if setup.profile.overrides:
        made["set"] = dict(setup.profile.overrides)
    return {stage: made}
