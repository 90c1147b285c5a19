"""Session routing across adaptd replicas (deploy/README.md "Routing").

A session belongs to the replica named on line crc32(session_id) mod B of the ownership map;
crc32 is zlib's, which HAProxy's `crc32` converter computes too, so the proxy and every server
agree. The map assigns each bucket by rendezvous hashing over the replica list: adding a replica
moves only the buckets it wins (about B / n of them), and only to it.

  python -m tools.routing map r0 r1 r2 [--buckets 1024] > owners.map
  python -m tools.routing haproxy --map owners.map --listen 127.0.0.1:8080 r0=127.0.0.1:50051 ... > haproxy.cfg
      [--http-listen 127.0.0.1:8081 --http r0=127.0.0.1:8080 ...]   # the OpenAI HTTP door too
  (deploy/k8s/base/routing/ holds the map and config of the Kubernetes StatefulSet: scripts/k8s_routing.sh)
  python -m tools.routing owner --map owners.map SESSION_ID
  python -m tools.routing moves old.map new.map      # the buckets whose owner changes
"""
from __future__ import annotations

import argparse
import hashlib
import pathlib
import re
import sys
import zlib

REPLICA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # also a valid HAProxy backend name


def make_map(replicas: list[str], buckets: int = 1024) -> list[str]:
    """The owner of each bucket: the replica with the highest hash of (replica, bucket)."""
    if not replicas or len(set(replicas)) != len(replicas):
        raise ValueError("replicas: a non-empty list without repeats")
    bad = [r for r in replicas if not REPLICA.match(r)]
    if bad:
        raise ValueError(f"replica names must match {REPLICA.pattern}: {bad}")
    if not 1 <= buckets <= 65536:
        raise ValueError("buckets: in [1, 65536]")

    def score(replica: str, bucket: int) -> bytes:
        return hashlib.sha256(f"{replica}/{bucket}".encode()).digest()
    return [max(replicas, key=lambda r: score(r, b)) for b in range(buckets)]


def render_map(owners: list[str]) -> str:
    return "".join(f"{b} {r}\n" for b, r in enumerate(owners))


def read_map(path: str | pathlib.Path) -> list[str]:
    owners = []
    for line in pathlib.Path(path).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        bucket, replica = line.split()
        if int(bucket) != len(owners):
            raise ValueError(f"{path}: bucket {bucket} out of order")
        owners.append(replica)
    return owners


def owner(owners: list[str], session_id: str) -> str:
    return owners[zlib.crc32(session_id.encode()) % len(owners)]


# The OpenAI door's ids carry their session: "resp_" or "conv_" (5 bytes), the session in
# unpadded base64url (which has no '.'), a '.', the rest (server/src/openai_json.cc).
ID_SESSION = "bytes(5),field(1,.),ub64dec"
HTTP_CUT = ("'{\"error\":{\"message\":\"behind the proxy, a Responses body over its 16 KiB buffer must name its "
            "session in X-Adaptd-Session\",\"type\":\"invalid_request_error\",\"param\":null,"
            "\"code\":\"session_header_required\"}}'")


def http_unavailable(message: str) -> str:
    """A 503 from the proxy in the OpenAI error shape (the SDK retries it); `message` without quotes."""
    body = f'{{"error":{{"message":"{message}","type":"server_error","param":null,"code":"unavailable"}}}}'
    return f"  http-error status 503 content-type application/json string '{body}'"


def render_haproxy(map_path: str, buckets: int, listen: str, servers: dict[str, str], dns: bool = False,
                   http_listen: str | None = None, http_servers: dict[str, str] | None = None) -> str:
    """An HAProxy config: gRPC (HTTP/2) in on `listen`, each session to its owner's backend.

    A backend per replica holds only that replica: while it is down its sessions get 503, which
    gRPC clients see as UNAVAILABLE, never another replica. Calls without a session (create with
    a server-made id, list, server info) go to any replica that is up. With `dns`, server names
    are resolved at run time (Kubernetes: a pod's name resolves only while it exists).

    With `http_listen`, a second frontend takes the OpenAI-compatible HTTP/1.1 door to each
    replica's `http_servers` address, routed by the same map. Its session is the one the server
    will use: the one inside a response or conversation id in the path, else inside the body's
    `previous_response_id` or `conversation` (bodies up to the proxy's 16 KiB buffer), else the
    X-Adaptd-Session header; none (a throw-away session) goes to any replica."""
    if (http_listen is None) != (http_servers is None):
        raise ValueError("http_listen and http_servers go together")
    if http_servers is not None and set(http_servers) != set(servers):
        raise ValueError("http_servers must name the same replicas as servers")
    lines = [
        "# Rendered by tools/routing.py haproxy; route by the session-id header, see deploy/README.md.",
        "global",
        "  maxconn 4096",
        "defaults",
        "  mode http",
        "  timeout connect 2s",
        "  timeout client 1h",
        "  timeout server 1h",
        "  retries 1",
    ]
    server_opts = "proto h2 check inter 1s fall 1 rise 1"
    if dns:
        lines += ["resolvers cluster", "  parse-resolv-conf", "  hold valid 5s"]
        server_opts += " resolvers cluster init-addr none"
    lines += [
        "frontend grpc",
        f"  bind {listen} proto h2",
        f"  http-request set-var(txn.owner) req.hdr(x-adaptd-session),crc32,mod({buckets}),map_int({map_path})"
        " if { req.hdr(x-adaptd-session) -m len gt 0 }",
        "  use_backend owner_%[var(txn.owner)] if { var(txn.owner) -m found }",
        "  default_backend any",
    ]
    for name, address in servers.items():
        lines += [f"backend owner_{name}", f"  server {name} {address} {server_opts}"]
    lines += ["backend any", "  balance roundrobin"]
    lines += [f"  server {name} {address} {server_opts}" for name, address in servers.items()]
    if http_listen is not None:
        http_opts = server_opts.replace("proto h2 ", "")
        owner_of = f"crc32,mod({buckets}),map_int({map_path})"
        unset = "if !{ var(txn.session) -m found }"
        lines += [
            "frontend openai",
            f"  bind {http_listen}",
            "  option http-buffer-request",
            f"  http-request set-var(txn.session) path,field(4,/),{ID_SESSION}"
            " if { path_reg ^/v1/(responses|conversations)/(resp|conv)_[A-Za-z0-9_-]+[.] }",
        ]
        for field in ("previous_response_id", "conversation", "conversation.id"):
            lines.append(f"  http-request set-var(txn.session) req.body,json_query('$.{field}'),{ID_SESSION}"
                         f" {unset} METH_POST {{ path /v1/responses }}")
        # A Responses body the buffer did not hold whole may name its session past the buffer:
        # without the header it cannot be routed, so it is refused rather than sent anywhere.
        lines += [
            "  http-request set-var(txn.body_size) req.body_size",
            "  acl body_cut req.body_len,sub(txn.body_size) lt 0",
            "  http-request return status 400 content-type application/json hdr x-should-retry false string "
            + HTTP_CUT + f" {unset} METH_POST {{ path /v1/responses }} !{{ req.hdr(x-adaptd-session) -m found }} body_cut",
        ]
        lines += [
            f"  http-request set-var(txn.session) req.hdr(x-adaptd-session) {unset}"
            " { req.hdr(x-adaptd-session) -m len gt 0 }",
            f"  http-request set-var(txn.owner) var(txn.session),{owner_of} if {{ var(txn.session) -m len gt 0 }}",
            "  use_backend http_owner_%[var(txn.owner)] if { var(txn.owner) -m found }",
            "  default_backend http_any",
        ]
        for name, address in http_servers.items():
            lines += [f"backend http_owner_{name}", f"  server {name} {address} {http_opts}",
                      http_unavailable("the replica that owns this session is unavailable; retry shortly")]
        lines += ["backend http_any", "  balance roundrobin"]
        lines += [f"  server {name} {address} {http_opts}" for name, address in http_servers.items()]
        lines.append(http_unavailable("no replica is available; retry shortly"))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.routing", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("map", help="the ownership map of a replica list")
    m.add_argument("replicas", nargs="+")
    m.add_argument("--buckets", type=int, default=1024)
    h = sub.add_parser("haproxy", help="an HAProxy config routing by the map")
    h.add_argument("--map", required=True, help="the map's path as HAProxy will read it")
    h.add_argument("--map-file", help="the map's path here, if not --map")
    h.add_argument("--listen", default="0.0.0.0:8080")
    h.add_argument("--dns", action="store_true", help="resolve the servers' names at run time (Kubernetes)")
    h.add_argument("--http-listen", help="also route the OpenAI HTTP door, in on this address")
    h.add_argument("--http", action="append", default=[], metavar="REPLICA=HOST:PORT",
                   help="a replica's HTTP door (with --http-listen, one per replica)")
    h.add_argument("servers", nargs="+", help="REPLICA=HOST:PORT, one per replica of the map")
    o = sub.add_parser("owner", help="the replica that owns a session")
    o.add_argument("--map", required=True)
    o.add_argument("session_id")
    mv = sub.add_parser("moves", help="how many buckets change owner between two maps, and to whom")
    mv.add_argument("old")
    mv.add_argument("new")
    args = ap.parse_args(argv)
    if args.cmd == "map":
        sys.stdout.write(render_map(make_map(args.replicas, args.buckets)))
    elif args.cmd == "haproxy":
        owners = read_map(args.map_file or args.map)
        servers = dict(s.split("=", 1) for s in args.servers)
        if set(servers) != set(owners):
            ap.error(f"servers must name exactly the map's replicas: {sorted(set(owners))}")
        http = dict(s.split("=", 1) for s in args.http) if args.http_listen else None
        if http is not None and set(http) != set(owners):
            ap.error(f"--http must name exactly the map's replicas: {sorted(set(owners))}")
        sys.stdout.write(render_haproxy(args.map, len(owners), args.listen, servers, args.dns, args.http_listen, http))
    elif args.cmd == "owner":
        print(owner(read_map(args.map), args.session_id))
    else:
        old, new = read_map(args.old), read_map(args.new)
        if len(old) != len(new):
            ap.error("the maps have different bucket counts: every session could move")
        moved = [(o, n) for o, n in zip(old, new) if o != n]
        print(f"{len(moved)} of {len(old)} buckets move")
        for (o, n) in sorted(set(moved)):
            print(f"  {o} -> {n}: {moved.count((o, n))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
