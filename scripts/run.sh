#!/usr/bin/env bash
# The main job: sets up, builds and starts adaptd with the default model
# (models/adaptd-tiny-ttt), its session store in runs/store and an API key for the tenant
# "local" (made once: runs/api_key, its hash in runs/keys.txt). Then, from another shell:
#   ADAPTD_API_KEY=$(cat runs/api_key) build/bin/adaptctl chat my-session
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
# New sessions, unless created with other options, decay dW by 0.1 before each update (on the
# default model that keeps the In-Place gain past the window: README, adaptation benchmark) and
# render chats as raw text (the default model continues documents; in ChatML it stops at once).
exec build/bin/adaptd --model models/adaptd-tiny-ttt --store runs/store --api_keys runs/keys.txt \
  --session_defaults 'decay: 0.1 chat_format: "raw"' "$@"
