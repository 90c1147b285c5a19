"""Renders deploy/k8s's overlays and checks what they would deploy, offline.

  python -m tools.check_k8s [--kubernetes 1.30.0]

For each overlay (cpu, gpu): `kubectl kustomize`; every built-in object validates strictly
against the stated Kubernetes version's schemas (kubernetes-validate); the ServiceMonitor
against deploy/k8s/schemas/servicemonitor.schema.json. Then the parts that must agree: the
routing files are what scripts/k8s_routing.sh renders for the StatefulSet's replica count
(and the backup job's), HAProxy accepts the config, every flag in the flag file exists in
adaptd, and the termination grace period covers preStop, the drain and the final snapshots.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

from tools import routing

ROOT = pathlib.Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy/k8s"
OVERLAYS = ("cpu", "gpu")
SNAPSHOT_FLUSH_SECONDS = 30  # room for the final snapshots and the store's close


def render(overlay: str) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kubectl kustomize {overlay}: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def adaptd_flags() -> set[str]:
    return set(re.findall(r"ABSL_FLAG\([^,]+,\s*(\w+),", (ROOT / "server/src/main.cc").read_text())) | {"flagfile"}


def check_objects(docs: list[dict], version: str) -> list[str]:
    failures = []
    schema = json.loads((K8S / "schemas/servicemonitor.schema.json").read_text())
    for d in docs:
        name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            if d.get("kind") == "ServiceMonitor":
                jsonschema.validate(d, schema)
            else:
                kubernetes_validate.validate(d, version, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            failures.append(f"{name}: {getattr(e, 'message', e)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            failures.append(f"{name}: no schema for it in Kubernetes {version}: {e}")
    return failures


def check_consistency(docs: list[dict]) -> list[str]:
    failures = []
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    sts = by[("StatefulSet", "adaptd")]
    n = sts["spec"]["replicas"]
    names = [f"adaptd-{i}" for i in range(n)]
    flags_cm = next(d for (k, name), d in by.items() if k == "ConfigMap" and name.startswith("adaptd-flags"))
    proxy_cm = next(d for (k, name), d in by.items() if k == "ConfigMap" and name.startswith("adaptd-proxy"))
    if flags_cm["data"]["owners.map"] != routing.render_map(routing.make_map(names)):
        failures.append(f"owners.map is not the map of {names}: run scripts/k8s_routing.sh {n}")
    if proxy_cm["data"]["owners.map"] != flags_cm["data"]["owners.map"]:
        failures.append("the proxy's owners.map differs from the replicas'")
    servers = {r: f"{r}.adaptd:50051" for r in names}
    http = {r: f"{r}.adaptd:8080" for r in names}
    want_cfg = routing.render_haproxy("/etc/haproxy/owners.map", 1024, "0.0.0.0:8080", servers, dns=True,
                                      http_listen="0.0.0.0:8081", http_servers=http)
    if proxy_cm["data"]["haproxy.cfg"] != want_cfg:
        failures.append(f"haproxy.cfg is not the config of {names}: run scripts/k8s_routing.sh {n}")
    if shutil.which("haproxy"):
        with tempfile.TemporaryDirectory() as tmp:
            (pathlib.Path(tmp) / "owners.map").write_text(proxy_cm["data"]["owners.map"])
            cfg = proxy_cm["data"]["haproxy.cfg"].replace("/etc/haproxy/owners.map", f"{tmp}/owners.map")
            (pathlib.Path(tmp) / "haproxy.cfg").write_text(cfg)
            check = subprocess.run(["haproxy", "-c", "-f", f"{tmp}/haproxy.cfg"], capture_output=True, text=True)
            if check.returncode != 0:
                failures.append(f"haproxy -c: {check.stdout}{check.stderr}")
    else:
        failures.append("haproxy is not installed (scripts/setup.sh installs it)")
    cron = by[("CronJob", "adaptd-backup")]
    env = {e["name"]: e.get("value") for e in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    if env.get("REPLICAS") != str(n):
        failures.append(f"the backup job backs up {env.get('REPLICAS')} replicas, the StatefulSet has {n}")
    known = adaptd_flags()
    container = sts["spec"]["template"]["spec"]["containers"][0]
    lines = flags_cm["data"]["flags"].splitlines() + container["args"]
    flags = {}
    for line in lines:
        m = re.match(r"--(\w+)(?:=(.*))?$", line.strip())
        if not m or m.group(1) not in known:
            failures.append(f"not a flag of adaptd: {line!r}")
        else:
            flags[m.group(1)] = m.group(2)
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    needed = int(pre_stop[-1]) + int(flags.get("shutdown_grace_seconds", 10)) + SNAPSHOT_FLUSH_SECONDS
    if grace < needed:
        failures.append(f"terminationGracePeriodSeconds {grace} < preStop + drain + {SNAPSHOT_FLUSH_SECONDS} s = {needed}")
    probes = [container.get(p, {}).get("grpc", {}).get("port") for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    health = flags.get("health_listen", "")
    if not health or any(str(p) != health.rsplit(":", 1)[-1] for p in probes):
        failures.append(f"the gRPC probes {probes} do not all use --health_listen {health!r}")
    return failures


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kubernetes", default="1.30.0", help="the Kubernetes version to validate against (>= 1.24)")
    args = ap.parse_args(argv)
    if shutil.which("kubectl") is None:
        print("kubectl is not installed: it renders the kustomize overlays")
        return 1
    failures = []
    for overlay in OVERLAYS:
        docs = render(overlay)
        found = check_objects(docs, args.kubernetes) + check_consistency(docs)
        kinds = sorted({d["kind"] for d in docs})
        print(f"overlay {overlay}: {len(docs)} objects ({', '.join(kinds)}), {len(found)} problems")
        failures += [f"{overlay}: {f}" for f in found]
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
