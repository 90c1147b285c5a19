#!/usr/bin/env bash
# Builds the engine and its tests against the CUDA LibTorch of the project venv's torch wheel,
# on this machine (no GPU and no CUDA toolkit needed), and stages what a GPU machine needs to run
# them in .gpu/ (git-ignored): the binaries, their CTest files, the oracle fixtures, the Debian
# Abseil libraries they link, and the training corpus. scripts/gpu/device_run.sh runs them there,
# against that machine's own torch (it must be the same version as the venv's; device_run.sh
# checks).
#
#   bash scripts/gpu/stage.sh      # then carry .gpu to the GPU machine
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
targets=(parity_test checkpoint_test session_test session_codec_test executor_test adaptd-bench-engine)

cmake -S . -B build-cuda -DADAPTD_CUDA=ON -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build-cuda -j2 --target "${targets[@]}"
# The fixtures the engine tests read, made afresh (the tokenizer's are not needed there).
.venv/bin/python tests/engine/make_fixtures.py build/fixtures/engine > /dev/null

rm -rf .gpu && mkdir -p .gpu/stage/build-cuda/bin .gpu/stage/lib .gpu/stage/corpus
for t in "${targets[@]}"; do cp "build-cuda/bin/$t" .gpu/stage/build-cuda/bin/; done
(cd build-cuda && find . -name CTestTestfile.cmake -o -name '*_include.cmake' -o -name '*_tests.cmake' |
  tar -cf - -T -) | tar -xf - -C .gpu/stage/build-cuda
mkdir -p .gpu/stage/build-cuda/fixtures
cp -r build/fixtures/engine .gpu/stage/build-cuda/fixtures/ && rm -rf .gpu/stage/build-cuda/fixtures/engine/tokenizer
# Shared libraries from Debian (Abseil): everything the binaries link outside the C/C++ runtime
# and the wheel.
for t in "${targets[@]}"; do ldd "build-cuda/bin/$t"; done | awk '$3 ~ /^\/(usr\/)?lib\/x86_64-linux-gnu\// {print $3}' |
  grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|libutil)\.so' | sort -u | xargs -r cp -L -t .gpu/stage/lib
cp data/corpus/{train.bin,heldout.bin,heldout.idx.json,manifest.json,tokenizer.json} .gpu/stage/corpus/
echo "$root" > .gpu/stage/source_dir   # the build's absolute paths, linked to the checkout there
.venv/bin/python -c 'import torch; print(torch.__version__)' > .gpu/stage/torch_version
tar -C .gpu/stage -cJf .gpu/stage.tar.xz . && rm -rf .gpu/stage
du -h .gpu/stage.tar.xz
