#!/usr/bin/env bash
# The main job: sets up, builds and starts adaptd with the default model, SmolLM2-135M-Instruct
# (models/smollm2-135m-instruct: the GGUF file scripts/setup.sh installed, and its ttt.json), its
# session store in runs/store and an API key for the tenant "local" (made once: runs/api_key, its
# hash in runs/keys.txt). Then, from another shell:
#   ADAPTD_API_KEY=$(cat runs/api_key) build/bin/adaptctl chat my-session
# or any OpenAI client on http://127.0.0.1:8080/v1 with that key (X-Adaptd-Session names the
# user's session).
# Extra arguments go to adaptd (e.g. --listen 0.0.0.0:50051); Ctrl-C stops it gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
cmake -S . -B build >/dev/null
cmake --build build -j2 --target adaptd adaptctl >&2
mkdir -p runs
[ -s runs/api_key ] || head -c 24 /dev/urandom | base64 | tr -d '/+=\n' > runs/api_key
echo "local $(tr -d '\n' < runs/api_key | sha256sum | cut -d' ' -f1)" > runs/keys.txt
echo "run.sh: chat with: ADAPTD_API_KEY=\$(cat runs/api_key) build/bin/adaptctl chat my-session" >&2
# New sessions, unless created with other options, learn with ntp_gradient (the model has no
# trained TTT modules; ttt.json names the layers, chunk and step: README, "The default model").
# The frozen base as the file's own 4-bit blocks (--weights int4-g32: Q4_1 codes served as they
# are, 4.8x the f32 decode speed at the same held-out NLL), everything else in f32, not bf16:
# on both CPUs this project has measured (AVX2 alone; AVX512-BF16) bf16 prefills and learns
# slower (bench/quant_bench.py, bench/real_model_bench.py).
exec build/bin/adaptd --model models/smollm2-135m-instruct --dtype f32 --weights int4-g32 --store runs/store \
  --api_keys runs/keys.txt --session_defaults 'update_rule: "ntp_gradient"' --http_listen 127.0.0.1:8080 "$@"
