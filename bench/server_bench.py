"""Server benchmark (not a test): the default model under many sessions and a memory budget that
forces evictions, measured side by side in one run.

python bench/server_bench.py [--sessions 100] [--turns 20] [--budget_mib 96] [--out runs/bench/server]

1. Starts build/bin/adaptd on a fresh store with --memory_budget_bytes (far below what the
   sessions take, so they are evicted and reloaded from snapshots), and records its idle RSS.
2. adaptd-loadgen runs N sessions x M turns concurrently (closed loop): errors, throughput, time
   to first token and inter-token p50/p99, the server's RSS over time. Then /metrics: evictions
   and session loads must be > 0; peak RSS is compared with the budget plus the idle RSS.
3. Resume vs replay, alternating on sessions of that run: a turn on a session in memory (hot),
   on an evicted one (snapshot load), and on one rolled back to a version with no snapshot left
   (retention keeps the last two), so it replays its whole log of M - 2 turns.
4. Snapshot policies, interleaved turn by turn: sessions that snapshot every event against
   sessions that snapshot only on eviction: turn latency and snapshots written per turn, under
   the budget of step 1 (both are evicted) and on a second server with room for all of them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "clients/python"), str(ROOT / "build/python")]
from adaptd_client import Client  # noqa: E402
from tools import adaptd_process  # noqa: E402
from adaptd.v1 import adaptd_pb2 as pb  # noqa: E402

KEY = "bench-key"


def rss_bytes(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return -1


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + " ") or l.startswith(name + "{"))


def timed_turn(c: Client, session: str) -> float:
    t = time.perf_counter()
    turn = c.chat_turn(session, "One more question about memory.", max_new_tokens=8)
    assert turn.usage is not None
    return (time.perf_counter() - t) * 1e3


# The model and the session defaults of scripts/run.sh (and the k8s flags); --model and
# --session_defaults change them.
SERVED = {"model": "models/smollm2-135m-instruct", "session_defaults": 'update_rule: "ntp_gradient"'}


def start_server(out: pathlib.Path, store: str, budget: int) -> tuple[subprocess.Popen, dict]:
    """adaptd on free ports with a fresh store under `out`; its ports from its JSON startup lines."""
    return adaptd_process.start(ROOT / "build/bin/adaptd",
                                [f"--model={ROOT / SERVED['model']}", f"--store={out / store}",
                                 f"--api_keys={out / 'keys.txt'}", "--listen=127.0.0.1:0",
                                 "--metrics_listen=127.0.0.1:0", f"--memory_budget_bytes={budget}",
                                 "--max_active_turns_per_tenant=1000",
                                 f"--session_defaults={SERVED['session_defaults']}"], out / f"{store}.log")


def compare_snapshot_policies(target: str, metrics_port: int, sessions: int, turns: int, label: str) -> dict:
    """Every event vs on eviction, interleaved: turn latency (median) and snapshots per turn."""
    def written() -> tuple[float, float]:  # (after their event, deferred to eviction or shutdown)
        return (metric(metrics_port, "adaptd_snapshot_write_seconds_count"),
                metric(metrics_port, "adaptd_deferred_snapshots_total"))
    ms = {"every": [], "evict": []}
    with Client(target, KEY) as c:
        for i in range(sessions):
            c.create_session(f"pe{i}")
            c.create_session(f"pv{i}", snapshot_policy=pb.SNAPSHOT_ON_EVICTION)
        before = written()
        for _ in range(turns):
            for i in range(sessions):
                ms["every"].append(timed_turn(c, f"pe{i}"))
                ms["evict"].append(timed_turn(c, f"pv{i}"))
        time.sleep(1)  # the last snapshots land after their acknowledgement
        after = written()
    n = sessions * turns
    med = {k: statistics.median(v) for k, v in ms.items()}
    per_turn = {"every": (after[0] - before[0]) / n, "evict": (after[1] - before[1]) / n}
    print(f"snapshot policy, {label} ({sessions} + {sessions} sessions x {turns} turns, interleaved): turn ms median "
          f"every event {med['every']:.1f}, on eviction {med['evict']:.1f} (ratio {med['evict'] / med['every']:.2f}); "
          f"snapshots per turn: {per_turn['every']:.2f} vs {per_turn['evict']:.2f}")
    return {"turn_ms_median": med, "snapshots_per_turn": per_turn}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--budget_mib", type=int, default=96)
    ap.add_argument("--samples", type=int, default=7, help="sessions per resume/replay measurement")
    ap.add_argument("--policy_sessions", type=int, default=40, help="sessions per snapshot policy")
    ap.add_argument("--policy_turns", type=int, default=5)
    ap.add_argument("--out", default="runs/bench/server")
    ap.add_argument("--model", default=SERVED["model"])
    ap.add_argument("--session_defaults", default=SERVED["session_defaults"])
    args = ap.parse_args()
    SERVED.update(model=args.model, session_defaults=args.session_defaults)
    out = ROOT / args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "keys.txt").write_text(f"bench {hashlib.sha256(KEY.encode()).hexdigest()}\n")
    budget = args.budget_mib << 20
    server, ports = start_server(out, "store", budget)
    target = f"127.0.0.1:{ports['serving']}"
    time.sleep(1)
    idle_rss = rss_bytes(server.pid)
    try:
        result = out / "loadgen.json"
        load = subprocess.run([str(ROOT / "build/bin/adaptd-loadgen"), f"--target={target}", f"--key={KEY}",
                               f"--sessions={args.sessions}", f"--turns={args.turns}", f"--server_pid={server.pid}",
                               "--prefix=lg", "--keep", f"--json={result}"], capture_output=True, text=True)
        print(load.stdout, end="")
        if load.returncode != 0:
            print(load.stderr)
        stats = json.loads(result.read_text())
        evictions = metric(ports["metrics"], "adaptd_session_evictions_total")
        loads = metric(ports["metrics"], "adaptd_session_loads_total")
        in_memory = metric(ports["metrics"], "adaptd_sessions_in_memory")
        peak = stats["peak_rss_bytes"]
        print(f"evictions {evictions:.0f}, session loads {loads:.0f}, in memory at the end {in_memory:.0f}")
        print(f"RSS: idle {idle_rss / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB; budget {args.budget_mib} MiB; "
              f"peak - idle = {(peak - idle_rss) / 2**20:.0f} MiB = budget + {(peak - idle_rss - budget) / 2**20:.0f} MiB")

        # Resume vs replay, alternating: a session in memory, an evicted one (snapshot load), and
        # one rolled back to a version with no snapshot left (a replay of its whole log).
        hot, evicted, replayed = [], [], []
        used = set()
        with Client(target, KEY) as c:
            def pick(tier):
                for s in c.list_sessions(page_size=1000):
                    if s.tier == tier and s.session_id not in used:
                        used.add(s.session_id)
                        return s.session_id
                raise SystemExit(f"no unused session in tier {tier}")
            for _ in range(args.samples):
                hot.append(timed_turn(c, pick("memory")))
                evicted.append(timed_turn(c, pick("store")))
                rb = pick("store")
                c.rollback_session(rb, args.turns - 2)
                assert c.get_session(rb).snapshot_version == 0
                replayed.append(timed_turn(c, rb))
        n = args.samples
        med = {k: statistics.median(v) for k, v in (("hot", hot), ("evicted", evicted), ("replayed", replayed))}
        print(f"first turn ms (median of {n}): in memory {med['hot']:.1f}, evicted (snapshot load) "
              f"{med['evicted']:.1f}, replay of {args.turns - 2} turns {med['replayed']:.1f}")
        print(f"ratios: snapshot load / in memory {med['evicted'] / med['hot']:.2f}; "
              f"replay / snapshot load {med['replayed'] / med['evicted']:.2f}")
        policies = {"budget": compare_snapshot_policies(target, ports["metrics"], args.policy_sessions,
                                                        args.policy_turns, f"{args.budget_mib} MiB budget")}
        roomy, roomy_ports = start_server(out, "store-roomy", 8 << 30)
        try:
            policies["roomy"] = compare_snapshot_policies(f"127.0.0.1:{roomy_ports['serving']}", roomy_ports["metrics"],
                                                          args.policy_sessions, args.policy_turns, "room for all")
        finally:
            roomy.send_signal(signal.SIGTERM)
            roomy.wait(timeout=60)
        summary = {**stats, "evictions": evictions, "session_loads": loads, "idle_rss_bytes": idle_rss,
                   "budget_bytes": budget, "turn_ms_median": med, "snapshot_policies": policies}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        ok = stats["errors"] == 0 and evictions > 0 and loads > 0
        print("OK" if ok else "FAILED: errors, or no evictions/loads")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
