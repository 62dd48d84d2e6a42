#!/bin/bash
# Usage (on a CUDA machine, from the repository root): bash experiments/gpu/throughput.sh [runner|unet|all] [OUT]
# The GPU figures of the README's Throughput section, each command's output also saved under OUT
# (default gpu-figures/). `runner`: the harness against the naive loop with the compiled rows (CUDA
# events, SD1.5-sized random weights, 512x512, 50 steps), then three alternated rounds of the plain
# pair; `unet`: the UNet alone for SD v1 and SD v2 shapes, eager, compiled and compiled with CUDA graphs.
# Each part fits in ten minutes on an H100; every command has its own time limit so one that hangs
# leaves the next its turn.
set -o pipefail
part=${1:-all}
out=${2:-gpu-figures}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'diffusers', diffusers.__version__)" | tee -a "$out/gpu.txt"

if [[ $part == runner || $part == all ]]; then
  timeout 420 python3 -m harness bench --model sd15-random --device cuda --ablate compile,cudagraphs 2>&1 \
    | grep -v "it/s]" | tee "$out/bench_compiled.txt"
  timeout 300 python3 -m harness bench --model sd15-random --device cuda --repeat 3 2>&1 \
    | grep -v "it/s]" | tee "$out/bench_repeat.txt"
fi
if [[ $part == unet || $part == all ]]; then
  for model in sd15 sd2; do
    timeout 240 python3 -m harness bench-unet --model $model --device cuda --modes eager,compile,cudagraphs 2>&1 \
      | tee "$out/unet_$model.txt"
  done
fi
