#!/usr/bin/env bash
# A sweep of In-Place TTT settings for the default model shape on a GPU (models/README.md): one
# no-TTT base, then every point continues from it at once (seed 1: the same tokens for the same
# steps), the no-TTT continuations being the baselines; then held-out NLL of all on the GPU.
#
#   tools/train/gpu_sweep.sh OUT [train.py flags for every run, e.g. --corpus DIR (two words)]
# Writes OUT/<point>/ (model, loss), OUT/*.log and OUT/results.{md,json}.
set -euo pipefail
out=${1:?usage: gpu_sweep.sh OUT [train.py flags]}
shift
PY=${PY:-.venv/bin/python}
shape=(--d 256 --ffn 768 --layers 6 --heads 8 --kv-heads 2)
mkdir -p "$out"
$PY -m tools.train.train --out "$out/base" --no-ttt "${shape[@]}" --seq 512 --batch 32 --warmup 100 --lr 2e-3 \
  --steps 2400 --minutes 2 --save-dtype float32 "$@" > "$out/base.log" 2>&1
cont=(--init "$out/base/model" "${shape[@]}" --seq 256 --batch 32 --warmup 20 --lr 1e-3 --seed 1 --ttt-layers 1,3,5 --chunk 32 --minutes 4)
ttt="--chunk 32 --target input_embed --ttt-layers 1,3,5"
points=(
  "c32:--steps 800 $ttt"
  "c16:--steps 800 $ttt --chunk 16"
  "lr3:--steps 800 $ttt --ttt-lr 3"
  "c32_long:--steps 1600 $ttt"
  "no_ttt:--steps 800 --no-ttt"
  "no_ttt_long:--steps 1600 --no-ttt"
)
models=() pids=()
for p in "${points[@]}"; do
  name=${p%%:*}
  # shellcheck disable=SC2086  # the point's flags split into words
  $PY -m tools.train.train --out "$out/$name" "${cont[@]}" ${p#*:} "$@" > "$out/$name.log" 2>&1 &
  pids+=($!)
  models+=(--model "$out/$name/model")
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "gpu_sweep.sh: ${points[$i]%%:*} failed (its log: $out/${points[$i]%%:*}.log)" >&2; exit 1; }
  # A point stopped by --minutes saw fewer tokens than its baseline: not comparable.
  want=$(sed -n 's/.*--steps \([0-9]*\).*/\1/p' <<< "${points[$i]}")
  got=$(wc -l < "$out/${points[$i]%%:*}/loss.jsonl")
  [ "$got" = "$want" ] || { echo "gpu_sweep.sh: ${points[$i]%%:*} ran $got of $want steps" >&2; exit 1; }
done
corpus=$(printf '%s\n' "$@" | sed -n '/^--corpus$/{n;p}')
$PY -m tools.train.evaluate "${models[@]}" --device "${DEVICE:-cuda}" ${corpus:+--corpus "$corpus"} \
  --json "$out/results.json" | tee "$out/results.md"
