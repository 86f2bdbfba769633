#!/usr/bin/env bash
# The GPU suite, for a machine with an NVIDIA GPU (the CPU suite runs in CI):
#   1. the gpu-marked tests (every GPU backend: parity, CUDA-event timing, NVML memory, machine record);
#   2. dense-vs-pruned benches of ResNet-50 and ViT-S/16 on torch-cuda, torch-cuda-graph and
#      torch-compile, fp32 and fp16, batch 1 and 32 (configs/bench/gpu/), records (with the machine
#      record) under results/gpu/<gpu>/runs/, then the leaderboard and the speed-up plot;
#   3. the measurement's own fidelity (benchmarks/fidelity.py) on the GPU backends.
# Set PBKIT / PYTHON to use another environment (default: .venv from `make setup`), BACKENDS to add
# tensorrt / ort-trt / ort-cuda where installed, SKIP_TESTS=1 to bench only.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PBKIT=${PBKIT:-"$PYTHON -m pbkit.cli"}
GPU=$($PYTHON -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "-"))')
OUT=${OUT:-results/gpu/$GPU}
mkdir -p "$OUT/runs"
if [ -z "${SKIP_TESTS:-}" ]; then
  $PYTHON -m pytest -q -m gpu tests/test_gpu.py tests/test_device.py tests/test_distributed.py
  $PYTHON benchmarks/train_throughput.py --device cuda --out "$OUT"
fi
SETS=()
if [ -n "${BACKENDS:-}" ]; then SETS+=(--set "bench.backends=[${BACKENDS}]"); fi
for model in tv_resnet50 timm_vit_small_patch16_224; do
  $PBKIT run "configs/bench/gpu/$model.yaml" --set out="$OUT/runs" --set run_id="$model-protected-2x" "${SETS[@]}"
done
find "$OUT/runs" \( -name '*.pt' -o -name '*.onnx' -o -name '*.plan' -o -name 'trt-cache' \) -prune -exec rm -rf {} +
$PBKIT report "$OUT/runs" --format md --plot "$OUT/speedups.png" > "$OUT/LEADERBOARD.md"
$PYTHON benchmarks/fidelity.py --backends torch-cuda torch-cuda-graph ort-cpu --out "$OUT"
echo "wrote $OUT (records, LEADERBOARD.md, speedups.png, fidelity-*)"
