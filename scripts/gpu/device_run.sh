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
for s in $steps; do
  case $s in tests|train|sweep|bench) ;; *) echo "device_run.sh: unknown step '$s'" >&2; exit 2 ;; esac
done
has() { [[ $steps == *" $1 "* ]]; }
logs=.gpu/logs && mkdir -p $logs
trap 'tar -cf "$out/logs.tar" -C .gpu logs' EXIT   # the logs come back whatever happens
python3 -c 'import tarfile; tarfile.open(".gpu/stage.tar.xz").extractall(".gpu/stage")' || exit 1
torch_here=$(python3 -c 'import torch; print(torch.__version__)')
if [ "$torch_here" != "$(cat .gpu/stage/torch_version)" ]; then
  echo "torch $torch_here here, the build used $(cat .gpu/stage/torch_version)" | tee $logs/machine.txt; exit 1
fi
src=$(cat .gpu/stage/source_dir)   # the absolute paths the build recorded
if [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"; fi
if [ "$(realpath "$src")" != "$(realpath "$PWD")" ]; then echo "$src is another directory" >&2; exit 1; fi
ln -sfn .gpu/stage/build-cuda build-cuda
torchlib=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$torchlib:$PWD/.gpu/stage/lib" PYTHONUNBUFFERED=1 PY=python3
if ldd build-cuda/bin/* 2>&1 | grep "not found" | sort -u | tee $logs/missing_libs.txt | grep -q .; then
  echo "libraries missing here:" >&2; cat $logs/missing_libs.txt >&2; exit 1
fi
{ nvidia-smi -L; python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)'; } | tee $logs/machine.txt

fail=0 train=
if has train; then
  timeout 400 tools/train/retrain.sh .gpu/train --corpus .gpu/stage/corpus > $logs/train.txt 2>&1 &
  train=$!
elif has sweep; then
  timeout 420 tools/train/gpu_sweep.sh .gpu/train --corpus .gpu/stage/corpus > $logs/train.txt 2>&1 &
  train=$!
fi
if has tests; then
  timeout 240 ctest --test-dir build-cuda -L gpu -FS engine_fixtures -j 6 --output-on-failure \
    --output-junit "$out/gpu_tests.xml" > $logs/gpu_tests.txt 2>&1
  echo "ctest rc=$?" >> $logs/gpu_tests.txt
  # Skipped means no GPU was usable: on this machine that is a failure.
  grep -q "ctest rc=0" $logs/gpu_tests.txt || fail=1
  if grep -q "(Skipped)" $logs/gpu_tests.txt; then echo "ctest: tests were skipped: no usable GPU" >> $logs/gpu_tests.txt; fail=1; fi
  tail -n 4 $logs/gpu_tests.txt
fi
if [ -n "$train" ]; then
  wait $train; rc=$?; echo "train rc=$rc" >> $logs/train.txt; [ $rc = 0 ] || fail=1
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
  rc=$?; echo "bench rc=$rc" >> $logs/engine_bench.txt; [ $rc = 0 ] || fail=1
  tail -n 12 $logs/engine_bench.txt
fi
ls -la "$out"
exit $fail
