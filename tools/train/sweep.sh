#!/usr/bin/env bash
# The short measured sweep behind the default model's TTT settings (models/README.md):
# equal steps and tokens for every point, then held-out NLL per position bucket.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-200}
common="--steps $STEPS --batch 4 --warmup 20 --save-dtype float32"
points=(
  "c32:--chunk 32"
  "c64:--chunk 64"
  "c128:--chunk 128"
  "c64_embed:--chunk 64 --target input_embed"
  "c64_layers02:--chunk 64 --ttt-layers 0,2"
  "no_ttt:--no-ttt"
)
models=()
for p in "${points[@]}"; do
  name=${p%%:*}
  [ -f "runs/sweep/$name/model/config.json" ] || \
    .venv/bin/python -m tools.train.train --out "runs/sweep/$name" ${p#*:} $common > "runs/sweep/$name.log" 2>&1
  models+=(--model "runs/sweep/$name/model")
done
.venv/bin/python -m tools.train.evaluate "${models[@]}" --json runs/sweep/results.json | tee runs/sweep/results.md
