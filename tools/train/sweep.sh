#!/usr/bin/env bash
# The measured CPU sweep behind the first default model pair (models/README.md; the current pair
# comes from tools/train/gpu_sweep.sh on a GPU). One no-TTT base model is
# pretrained; every sweep point then continues from it on the same tokens (same seed, steps,
# batch): TTT points gain their TTT modules (conv starts at zero, so step 0 equals the base),
# and the no_ttt points are the honest baselines trained on exactly the same tokens.
# Held-out NLL per position bucket, TTT on and off, goes to runs/sweep/results.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
BASE_STEPS=${BASE_STEPS:-850}
STEPS=${STEPS:-150}
mkdir -p runs/sweep
[ -f runs/base/model/config.json ] || \
  $PY -m tools.train.train --out runs/base --no-ttt --batch 8 --steps "$BASE_STEPS" --warmup 40 \
    --lr 2e-3 --save-dtype float32 > runs/base.log 2>&1
common="--init runs/base/model --steps $STEPS --batch 8 --warmup 10 --lr 1e-3 --seed 1 --save-dtype float32"
points=(
  "c32:--chunk 32"
  "c64:--chunk 64"
  "c128:--chunk 128"
  "c64_embed:--chunk 64 --target input_embed"
  "c32_embed:--chunk 32 --target input_embed"
  "c128_embed:--chunk 128 --target input_embed"
  "c32_embed_seq256:--chunk 32 --target input_embed --seq 256 --batch 16"
  "no_ttt_seq256:--no-ttt --seq 256 --batch 16"
  "c64_layers02:--chunk 64 --ttt-layers 0,2"
  "no_ttt:--no-ttt"
)
models=()
for p in "${points[@]}"; do
  name=${p%%:*}
  [ -f "runs/sweep/$name/model/config.json" ] || \
    $PY -m tools.train.train --out "runs/sweep/$name" $common ${p#*:} > "runs/sweep/$name.log" 2>&1
  models+=(--model "runs/sweep/$name/model")
done
$PY -m tools.train.evaluate "${models[@]}" --json runs/sweep/results.json | tee runs/sweep/results.md
