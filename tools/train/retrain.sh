#!/usr/bin/env bash
# The default model pair (models/README.md), as retrained on a GPU: a no-TTT base model, then
# an In-Place TTT continuation of it (TTT modules added, conv at zero, so it starts equal to the
# base) and a no-TTT continuation for the same number of steps from the same seed, so the
# baseline is trained on exactly the same tokens.
#
#   tools/train/retrain.sh OUT [--corpus DIR]      (PY, BASE_STEPS, BASE_MINUTES, CONT_STEPS,
#                                                   CONT_MINUTES override the budgets)
# Writes OUT/base, OUT/ttt and OUT/no_ttt, each with model/, loss.jsonl, loss.png and a log.
set -euo pipefail
out=${1:?usage: retrain.sh OUT [train.py flags for every run]}
shift
PY=${PY:-.venv/bin/python}
shape=(--d 256 --ffn 768 --layers 6 --heads 8 --kv-heads 2)
mkdir -p "$out"
$PY -m tools.train.train --out "$out/base" --no-ttt "${shape[@]}" --seq 512 --batch 32 --warmup 100 --lr 2e-3 \
  --steps "${BASE_STEPS:-2400}" --minutes "${BASE_MINUTES:-2}" --save-dtype float32 "$@" > "$out/base.log" 2>&1
cont=(--init "$out/base/model" "${shape[@]}" --seq 256 --batch 32 --warmup 20 --lr 1e-3 --seed 1 --ttt-layers 1,3,5 --chunk 32)
$PY -m tools.train.train --out "$out/ttt" "${cont[@]}" --target input_embed \
  --steps "${CONT_STEPS:-1600}" --minutes "${CONT_MINUTES:-2}" "$@" > "$out/ttt.log" 2>&1
steps=$(wc -l < "$out/ttt/loss.jsonl")
$PY -m tools.train.train --out "$out/no_ttt" "${cont[@]}" --no-ttt --steps "$steps" "$@" > "$out/no_ttt.log" 2>&1
tail -n 1 "$out"/*.log
