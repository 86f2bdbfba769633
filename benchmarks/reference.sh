#!/usr/bin/env bash
# Regenerate the committed reference records under results/reference/<tag>/ (records only; the
# heavy artifacts stay git-ignored), then the leaderboards and the plot built from them.
#   1. data-free: every criterion but bnscale on resnet18_cifar (random init), 2x, protected scope;
#   2. digits: every criterion on one trained resnet20_cifar base (16x16), 2x, finetuned.
set -euo pipefail
cd "$(dirname "$0")/.."
PBKIT=${PBKIT:-.venv/bin/pbkit}
TAG=${TAG:-cpu-$(nproc)core}
OUT=results/reference/$TAG
METHODS=${METHODS:-"l1 l2 lamp fpgm bnscale random"}
mkdir -p "$OUT"
# bnscale needs trained BatchNorm gammas (a random init has them all at 1.0): digits block only.
for m in ${METHODS//bnscale/}; do
  $PBKIT run configs/bench/resnet18_cifar.yaml --set prune.method="$m" --set out="$OUT/runs" \
    --set run_id="resnet18_cifar-$m-protected-2x"
done
for m in $METHODS; do
  $PBKIT run configs/bench/digits-resnet20.yaml --set prune.method="$m" --set out="$OUT/runs" \
    --set run_id="digits-resnet20_cifar-$m-protected-2x"
done
$PBKIT report "$OUT/runs" --format md --plot "$OUT/speedups.png" > "$OUT/LEADERBOARD.md"
echo "wrote $OUT/LEADERBOARD.md and $OUT/speedups.png"
