#!/bin/bash
# Usage (on a CUDA machine, from the repository root): bash experiments/gpu/throughput.sh [runner|sd2|unet|attention|geglu|all] [OUT]
# The GPU figures of the README's Throughput section, each command's output also saved under OUT
# (default gpu-figures/). `runner`: the harness against the naive loop on SD1.5's shapes (random
# weights, 512x512, 50 steps; two alternated rounds), then the compiled rows; `sd2`: the same sweep on
# SD v2's shapes, with the timesteps-on-the-card and compiled + CUDA graphs rows; `unet`: the UNet
# alone for SD v1 and SD v2 shapes, eager, compiled and compiled with CUDA graphs, SD v1 in bf16, SD v1
# compiled with and without the skip-connection layout (harness/layouts.py); `attention`: SD v1's 40-wide
# heads through the Triton kernel of narrow_heads_kernel.py against SDPA, alone and in the compiled UNet;
# `geglu`: the feed-forward's GEGLU projections through geglu_kernel.py against the compiled module, alone
# and in the compiled UNet (with the narrow-head kernel too).
# Each part fits in ten minutes on an H100 (`geglu` is expected to, not yet run there); every command has
# its own time limit so one that hangs leaves the next its turn.
set -o pipefail
part=${1:-all}
out=${2:-gpu-figures}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'diffusers', diffusers.__version__)" | tee -a "$out/gpu.txt"

if [[ $part == runner || $part == all ]]; then
  timeout 450 python3 -m harness bench --model sd15-random --device cuda --repeat 2 --ablate compile,cudagraphs 2>&1 \
    | grep -v "it/s]" | tee "$out/bench_sd15.txt"
fi
if [[ $part == sd2 || $part == all ]]; then
  timeout 365 python3 -m harness bench --model sd2-random --device cuda --ablate schedule,cudagraphs 2>&1 \
    | grep -v "it/s]" | tee "$out/bench_sd2.txt"
fi
if [[ $part == unet || $part == all ]]; then
  for model in sd15 sd2; do
    timeout 240 python3 -m harness bench-unet --model $model --device cuda --modes eager,compile,cudagraphs 2>&1 \
      | tee "$out/unet_$model.txt"
  done
  timeout 70 python3 -m harness bench-unet --model sd15 --device cuda --dtype bf16 --modes eager 2>&1 \
    | tee "$out/unet_sd15_bf16.txt"
  timeout 200 python3 experiments/gpu/unet_variants.py --variants skips,base --top 20 2>&1 \
    | tee "$out/unet_sd15_skips.txt"
fi
if [[ $part == attention || $part == all ]]; then
  timeout 400 python3 experiments/gpu/narrow_heads.py --unet 2>&1 | tee "$out/narrow_heads.txt"
fi
if [[ $part == geglu || $part == all ]]; then
  timeout 590 python3 experiments/gpu/geglu.py --unet 2>&1 | tee "$out/geglu.txt"
fi
