#!/usr/bin/env bash
# On the GPU machine, in the checkout root, after scripts/gpu/stage.sh here (.gpu carried):
#
#   bash scripts/gpu/device_run.sh [tests] [train|sweep] [bench]     (default: tests train bench)
#
#   tests  the engine's tests on CUDA (ctest label gpu), alongside the training step if any;
#   train  tools/train/retrain.sh: the default model pair, trained on the GPU;
#   sweep  tools/train/gpu_sweep.sh: TTT settings compared on held-out NLL; the best TTT point
#          (lowest NLL at positions 256-512 relative to its baseline) comes back with its baseline;
#   bench  bench/engine_bench.py on a random bf16 Qwen3-0.6B-shaped model, with the GPU to itself.
# What comes back lands in $OUT: gpu_tests.xml, logs.tar (logs, losses, sweep results) and one
# tar per model (a file that comes back holds at most 16 MiB).
set -uo pipefail
out=${OUT:?OUT must name the output folder}
steps=" ${*:-tests train bench} "
has() { [[ $steps == *" $1 "* ]]; }
python3 -c 'import tarfile; tarfile.open(".gpu/stage.tar.xz").extractall(".gpu/stage")'
src=$(cat .gpu/stage/source_dir)   # the absolute paths the build recorded
if [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"; fi
ln -sfn .gpu/stage/build-cuda build-cuda
torchlib=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$torchlib:$PWD/.gpu/stage/lib" PYTHONUNBUFFERED=1 PY=python3
logs=.gpu/logs && mkdir -p $logs
{ nvidia-smi -L; python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)'; } | tee $logs/machine.txt

train=
if has train; then
  timeout 400 tools/train/retrain.sh .gpu/train --corpus .gpu/stage/corpus > $logs/train.txt 2>&1 &
  train=$!
elif has sweep; then
  timeout 360 tools/train/gpu_sweep.sh .gpu/train --corpus .gpu/stage/corpus > $logs/train.txt 2>&1 &
  train=$!
fi
if has tests; then
  timeout 240 ctest --test-dir build-cuda -L gpu -FS engine_fixtures -j 6 --output-on-failure \
    --output-junit "$out/gpu_tests.xml" > $logs/gpu_tests.txt 2>&1
  echo "ctest rc=$?" >> $logs/gpu_tests.txt
  tail -n 4 $logs/gpu_tests.txt
fi
if [ -n "$train" ]; then
  wait $train; echo "train rc=$?" >> $logs/train.txt
  cat $logs/train.txt
  (cd .gpu/train && cp *.log results.* ../logs/ 2>/dev/null; for d in */; do cp "$d/loss.jsonl" "../logs/${d%/}.loss.jsonl" 2>/dev/null; done)
fi
keep="ttt no_ttt"
if has sweep && [ -f .gpu/train/results.json ]; then
  keep=$(python3 - <<'PY'
import json
r = json.load(open(".gpu/train/results.json"))["results"]
late = {k.split("/")[-2]: v["buckets"]["256-512"] for k, v in r.items() if "TTT off" not in k}
def gain(p):
    base = "no_ttt_long" if p.endswith("_long") else "no_ttt"
    return late[base] - late[p]
best = max((p for p in late if not p.startswith("no_ttt")), key=gain)
print(best, "no_ttt_long" if best.endswith("_long") else "no_ttt")
PY
)
fi
for m in $keep; do
  [ -d .gpu/train/$m/model ] && tar -cf "$out/$m.tar" -C .gpu/train $m/model $m/loss.jsonl
done

if has bench; then
  timeout 180 python3 bench/engine_bench.py --shape qwen3-0.6b --device cuda --dtype bf16 --rounds 2 --threads 4 \
    --models .gpu/bench --binary build-cuda/bin/adaptd-bench-engine > $logs/engine_bench.txt 2>&1
  echo "bench rc=$?" >> $logs/engine_bench.txt
  tail -n 12 $logs/engine_bench.txt
fi
tar -cf "$out/logs.tar" -C .gpu logs
ls -la "$out"
