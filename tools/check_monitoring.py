"""Checks the monitoring that ships in deploy/ against the server that exists.

  python -m tools.check_monitoring [--adaptd build/bin/adaptd] [--keep DIR]

1. Every metric name in the Grafana dashboard and the alert rules is in server/metrics.txt (a
   histogram's _bucket/_sum/_count included), and the dashboard matches tools/dashboard.py.
2. promtool check rules passes.
3. A real adaptd (the default model) under a little load, scraped every second by a real
   Prometheus that loads the alert rules; after at least 3 scrapes every expression of the
   dashboard and of the rules (alerts without their comparison) returns data.
Exit status 0 only if everything passes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import yaml

from tools import adaptd_process

ROOT = pathlib.Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy/grafana/adaptd.json"
RULES = ROOT / "deploy/prometheus/alerts.yml"
METRICS = ROOT / "server/metrics.txt"
KEY = "monitoring-key"
BUILTIN = {"up"}


def known_metrics() -> set[str]:
    names = set()
    for line in METRICS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind = line.split()[:2]
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def without_comparison(expr: str) -> str:
    """The left side of an alert's top-level comparison (outside parentheses, braces, brackets)."""
    depth, quoted = 0, False
    for i, ch in enumerate(expr):
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and expr[i:i + 2] in (">=", "<=", "==", "!=") or (depth == 0 and ch in "<>"):
            return expr[:i].strip()
    return expr.strip()


def unknown_metrics(promql: str, names: set[str]) -> list[str]:
    """The metric names in `promql` (adaptd_* and up) that `names` lacks."""
    used = set(re.findall(r"\b(adaptd_[a-z0-9_]+|up)\b(?!\s*\()", promql))
    return sorted(used - names)


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every dashboard target and alert rule, ready to run."""
    out = []
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        for t in p["targets"]:
            q = t["expr"].replace("$__rate_interval", "30s").replace("$job", ".*")
            out.append((f"panel '{p['title']}' {t['refId']}", q))
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            out.append((f"alert {rule['alert']}", without_comparison(" ".join(rule["expr"].split()))))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(port: int, promql: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


def start_adaptd(binary: str, work: pathlib.Path) -> tuple[subprocess.Popen, dict]:
    (work / "keys.txt").write_text(f"acme {hashlib.sha256(KEY.encode()).hexdigest()}\n")
    return adaptd_process.start(binary, [f"--model={ROOT / 'models/adaptd-tiny-ttt'}", f"--store={work / 'store'}",
                                         f"--api_keys={work / 'keys.txt'}", "--listen=127.0.0.1:0",
                                         "--metrics_listen=127.0.0.1:0", "--memory_budget_bytes=1"],
                                work / "adaptd.log")


def load(target: str) -> None:
    """A little of everything: turns (TTT updates), a score, evictions and reloads, a client error."""
    sys.path[:0] = [str(ROOT / "clients/python"), str(ROOT / "build/python")]
    from adaptd_client import AdaptdError, Client
    from adaptd.v1 import adaptd_pb2 as pb
    with Client(target, KEY) as c:
        c.create_session("m1")
        c.create_session("m2", snapshot_policy=pb.SNAPSHOT_ON_EVICTION)  # its snapshots come at evictions
        for _ in range(3):
            for s in ("m1", "m2"):
                c.chat_turn(s, "Tell me about the page allocator and its free lists. " * 6, max_new_tokens=8)
        c.score("m1", "The slab allocator caches objects.")
        try:
            c.get_session("absent")
        except AdaptdError:
            pass


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adaptd", default=str(ROOT / "build/bin/adaptd"))
    ap.add_argument("--keep", help="keep the work directory here (logs, Prometheus data)")
    args = ap.parse_args(argv)
    failures = []

    from tools import dashboard
    if DASHBOARD.read_text() != dashboard.render():
        failures.append("deploy/grafana/adaptd.json differs from tools/dashboard.py")
    exprs = expressions()
    names = known_metrics() | BUILTIN
    for where, q in exprs:
        failures += [f"{where}: metric {name} is not in server/metrics.txt" for name in unknown_metrics(q, names)]
    rules = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    if rules.returncode != 0:
        failures.append(f"promtool check rules: {rules.stdout}{rules.stderr}")

    work = pathlib.Path(args.keep) if args.keep else pathlib.Path(tempfile.mkdtemp(prefix="adaptd-monitoring-"))
    work.mkdir(parents=True, exist_ok=True)
    adaptd, ports = start_adaptd(args.adaptd, work)
    prom_port = free_port()
    (work / "alerts.yml").write_text(RULES.read_text())
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\nscrape_configs:\n"
        f"  - job_name: adaptd\n    static_configs:\n      - targets: ['127.0.0.1:{ports['metrics']}']\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w"))
    try:
        load(f"127.0.0.1:{ports['serving']}")
        scrapes, deadline = 0, time.time() + 60
        while scrapes < 3 and time.time() < deadline:  # the load ran between scrapes: wait for 3 after it
            time.sleep(1)
            try:
                r = query(prom_port, "count_over_time(up[1m])")["data"]["result"]
                scrapes = int(float(r[0]["value"][1])) if r else 0
            except OSError:
                pass
        time.sleep(3)
        if scrapes < 3:
            failures.append(f"Prometheus scraped adaptd {scrapes} times in 60 s")
        for where, q in exprs:
            answer = query(prom_port, q)
            result = answer.get("data", {}).get("result", [])
            status = "ok" if answer.get("status") == "success" and result else "NO DATA"
            print(f"{status:8} {where}: {q}")
            if status != "ok":
                failures.append(f"{where}: no data for {q}")
    finally:
        prom.send_signal(signal.SIGTERM)
        prom.wait(timeout=30)
        adaptd.send_signal(signal.SIGTERM)
        adaptd.wait(timeout=60)
    for f in failures:
        print("FAILED:", f)
    print(f"{len(exprs)} expressions, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
