#!/usr/bin/env bash
# Renders deploy/k8s/base/routing/{owners.map,haproxy.cfg} for a StatefulSet of N adaptd pods
# (adaptd-0 .. adaptd-N-1, reached through the headless Service "adaptd"). Changing N moves
# sessions: read deploy/README.md "Scaling out" first. Usage: scripts/k8s_routing.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
replicas=() servers=() http=()
for ((i = 0; i < n; i++)); do
  replicas+=("adaptd-$i")
  servers+=("adaptd-$i=adaptd-$i.adaptd:50051")
  http+=(--http "adaptd-$i=adaptd-$i.adaptd:8080")
done
out=deploy/k8s/base/routing
.venv/bin/python -m tools.routing map "${replicas[@]}" >"$out/owners.map"
.venv/bin/python -m tools.routing haproxy --dns --map /etc/haproxy/owners.map --listen 0.0.0.0:8080 \
  --http-listen 0.0.0.0:8081 "${http[@]}" --map-file "$out/owners.map" "${servers[@]}" >"$out/haproxy.cfg"
echo "rendered $out for $n replicas"
