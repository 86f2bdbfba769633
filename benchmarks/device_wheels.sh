#!/usr/bin/env bash
# Wheels that pbkit needs on a lent GPU machine whose image has torch, timm, onnx, onnxruntime,
# nvidia-ml-py, click, rich, pyyaml, psutil, matplotlib and scikit-learn but not these (Python
# 3.12 there). Run here; carry .whl; there:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     export PYTHONPATH=/tmp/site:$PWD && PYTHON=python3 benchmarks/gpu_suite.sh
# Versions come from requirements/gpu.lock; .whl/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { sed -n "s/^$1==\([^ ]*\).*/\1/p" requirements/gpu.lock | head -1; }
# YOLOv8 runs there would also need: ultralytics ultralytics-thop ultralytics-platform polars
# polars-runtime-32 (55 MB of the 64 MB a call may carry); the GPU suite does not use them.
PKGS=(pydantic pydantic-core annotated-types typing-inspection torch-pruning ${EXTRA:-})
for p in "${PKGS[@]}"; do
  v=$(pin "$p")
  [ -n "$v" ] || { echo "skip $p (not in requirements/gpu.lock)"; continue; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 --platform any -d .whl "$p==$v"
done
ls -la .whl
