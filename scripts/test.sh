#!/usr/bin/env bash
# The project's test command: sets up what is missing (scripts/setup.sh, idempotent), then runs
# every test. Extra arguments go to pytest (e.g. scripts/test.sh -k closed_form).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
