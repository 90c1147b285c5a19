"""Writes deploy/grafana/adaptd.json, the Grafana dashboard of adaptd, from the panel list below.

  python -m tools.dashboard            # rewrite the file
  python -m tools.dashboard --check    # exit 1 if the committed file differs from this list

Every expression uses only metric names of server/metrics.txt; tools/check_monitoring.py runs
each one against a real Prometheus scraping a real adaptd.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "deploy/grafana/adaptd.json"
R = "[$__rate_interval]"
SEL = '{job=~"$job"}'


def rate(metric: str, by: str = "", selector: str = SEL) -> str:
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate({metric}{selector}{R}))"


def quantiles(histogram: str, legend: str) -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{SEL}{R})))", f"{legend} p{int(q * 100)}")
            for q in (0.5, 0.99)]


# (title, unit, [(expression, legend)])
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Requests by code", "reqps", [(rate("adaptd_requests_total", "code"), "{{code}}")]),
    ("Errors by method and code", "reqps",
     [(rate("adaptd_requests_total", "method, code", '{job=~"$job", code!="OK"}'), "{{method}} {{code}}")]),
    ("Time to first token", "s", quantiles("adaptd_time_to_first_token_seconds", "TTFT")),
    ("Inter-token latency", "s", quantiles("adaptd_inter_token_seconds", "inter-token")),
    ("Tokens/s by kind", "short", [(rate("adaptd_tokens_total", "kind"), "{{kind}}")]),
    ("TTT update overhead (update seconds / forward seconds)", "percentunit",
     [(f"{rate('adaptd_ttt_update_seconds_total')} / {rate('adaptd_forward_seconds_total')}", "overhead")]),
    ("TTT updates/s and rejected updates/s", "short",
     [(rate("adaptd_ttt_updates_total"), "applied"), (rate("adaptd_ttt_updates_rejected_total"), "rejected")]),
    ("||dW|| at committed turns (largest TTT layer)", "short", quantiles("adaptd_session_delta_norm", "||dW||")),
    ("Sessions by tier", "short",
     [(f"sum(adaptd_sessions_in_memory{SEL})", "memory"),
      (f"sum(adaptd_sessions_stored{SEL}) - sum(adaptd_sessions_in_memory{SEL})", "store only")]),
    ("Session memory", "bytes", [(f"sum(adaptd_session_memory_bytes{SEL})", "in memory")]),
    ("Session loads/s by source", "short",
     [(rate("adaptd_session_loads_total"), "loads"), (rate("adaptd_session_replayed_events_total"), "events replayed"),
      (rate("adaptd_session_evictions_total"), "evictions")]),
    ("Session load latency", "s", quantiles("adaptd_session_load_seconds", "load")),
    ("Snapshots: bytes/s written", "Bps", [(rate("adaptd_snapshot_bytes_total"), "bytes"),
                                           (rate("adaptd_deferred_snapshots_total"), "deferred snapshots/s"),
                                           (rate("adaptd_snapshot_failures_total"), "failures/s")]),
    ("Snapshot and commit latency", "s",
     quantiles("adaptd_snapshot_write_seconds", "snapshot") + quantiles("adaptd_turn_commit_seconds", "commit")),
    ("Store size and free disk", "bytes",
     [(f"sum by (instance) (adaptd_store_bytes{SEL})", "store {{instance}}"),
      (f"min by (instance) (adaptd_store_disk_free_bytes{SEL})", "free {{instance}}")]),
    ("Mean batch size (requests per engine step)", "short",
     [(f"{rate('adaptd_engine_step_requests_total')} / {rate('adaptd_engine_steps_total')}", "batch")]),
    ("Queue depth", "short", [(f"sum(adaptd_engine_active_requests{SEL})", "engine requests"),
                              (f"sum(adaptd_active_turns{SEL})", "turns in flight")]),
    ("Ready replicas", "short", [(f"sum(adaptd_ready{SEL})", "ready")]),
]


def panel(i: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict:
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [{"refId": chr(ord("A") + k), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for k, (expr, legend) in enumerate(targets)],
    }


def dashboard() -> dict:
    return {
        "uid": "adaptd",
        "title": "Adaptd",
        "description": "Stateful adaptive LLM sessions: traffic, latency, In-Place TTT overhead, sessions, store.",
        "tags": ["adaptd"],
        "timezone": "",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "job", "type": "query", "label": "Job", "multi": True, "includeAll": True, "allValue": ".*",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(adaptd_ready, job)", "refId": "jobs"},
             "definition": "label_values(adaptd_ready, job)", "refresh": 2},
        ]},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    if args.check:
        if OUT.read_text() != render():
            print(f"{OUT.relative_to(ROOT)} differs from tools/dashboard.py: run python -m tools.dashboard")
            return 1
        return 0
    OUT.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
