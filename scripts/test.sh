#!/usr/bin/env bash
# The project's test command: sets up what is missing (scripts/setup.sh, idempotent), configures
# and builds with ccache and -j2, then runs every test through ctest (C++ and Python).
# Extra arguments go to ctest (e.g. scripts/test.sh -L ttt). No test may take over 5 minutes
# (the slowest takes about one): a hang fails that test instead of eating CI's 90 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
cmake -S . -B build -DADAPTD_WERROR="$werror" >/dev/null
cmake --build build -j2
ctest --test-dir build --output-on-failure --timeout 300 "$@"
