#!/usr/bin/env bash
# The main job: the default model continues a prompt through one In-Place TTT session.
# Usage: scripts/run.sh "prompt" [--max-new N] [--temperature T]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
prompt=${1:-"The kernel"}
shift || true
exec .venv/bin/python -m tools.ttt_reference.generate --model models/adaptd-tiny-ttt --prompt "$prompt" "$@"
