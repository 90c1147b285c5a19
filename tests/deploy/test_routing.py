"""Three adaptd replicas, each with its own store, behind a real HAProxy routing by the session-id
header (tools/routing.py), gRPC and the OpenAI HTTP door alike: sessions stay on their owners, a replica that is down fails its own
sessions fast and only those, it continues them with their state once back, and export/import
moves a session to another replica. Run by ctest (label deploy), which passes ADAPTD_BINARY,
ADAPTD_MODEL and a PYTHONPATH with the client and its generated stubs."""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

import openai
import pytest

from adaptd_client import AdaptdError, Client
from tools import adaptd_process, routing

KEY = "route-key"
REPLICAS = ["r0", "r1", "r2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: pathlib.Path, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}: {log.read_text()}")


class Cluster:
    def __init__(self, root: pathlib.Path):
        self.root = root
        (root / "keys.txt").write_text(f"acme {hashlib.sha256(KEY.encode()).hexdigest()}\n")
        self.map = root / "owners.map"
        self.map.write_text(routing.render_map(routing.make_map(REPLICAS, 256)))
        self.owners = routing.read_map(self.map)
        self.ports = {r: free_port() for r in REPLICAS}
        self.http_ports = {r: free_port() for r in REPLICAS}
        self.procs = {}
        for r in REPLICAS:
            self.start(r)
        self.proxy_port, self.http_proxy_port = free_port(), free_port()
        cfg = root / "haproxy.cfg"
        cfg.write_text(routing.render_haproxy(str(self.map), len(self.owners), f"127.0.0.1:{self.proxy_port}",
                                              {r: f"127.0.0.1:{p}" for r, p in self.ports.items()},
                                              http_listen=f"127.0.0.1:{self.http_proxy_port}",
                                              http_servers={r: f"127.0.0.1:{p}" for r, p in self.http_ports.items()}))
        check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        log = root / "haproxy.log"
        self.proxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=open(log, "w"), stderr=subprocess.STDOUT)
        wait_for_port(self.proxy_port, self.proxy, log)
        wait_for_port(self.http_proxy_port, self.proxy, log)

    def start(self, r: str) -> None:
        self.procs[r], _ = adaptd_process.start(
            os.environ["ADAPTD_BINARY"],
            [f"--model={os.environ['ADAPTD_MODEL']}", f"--store={self.root / r}", f"--api_keys={self.root / 'keys.txt'}",
             f"--listen=127.0.0.1:{self.ports[r]}", f"--http_listen=127.0.0.1:{self.http_ports[r]}",
             "--metrics_listen=", f"--replica_id={r}",
             f"--ownership_map={self.map}"], self.root / f"{r}.log")

    def kill(self, r: str, sig=signal.SIGKILL) -> int:
        self.procs[r].send_signal(sig)
        return self.procs[r].wait(timeout=30)

    def owner(self, session_id: str) -> str:
        return routing.owner(self.owners, session_id)

    def close(self) -> None:
        self.proxy.terminate()
        self.proxy.wait(timeout=10)
        for r, p in self.procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                assert p.wait(timeout=30) == 0, (self.root / f"{r}.log").read_text()


@pytest.fixture()
def cluster(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed: run scripts/setup.sh")
    c = Cluster(tmp_path)
    yield c
    c.close()


def code(fn):
    with pytest.raises(AdaptdError) as e:
        fn()
    return e.value.code


def test_sessions_stay_on_their_owners(cluster):
    ids = [f"user-{i}" for i in range(24)]
    assert {cluster.owner(i) for i in ids} == set(REPLICAS)  # every replica gets some
    with Client(f"127.0.0.1:{cluster.proxy_port}", KEY) as proxy:
        for i in ids:
            proxy.create_session(i)
            assert proxy.chat_turn(i, "What does the page allocator do?", max_new_tokens=4).usage.version == 1
        made = [proxy.create_session().session_id for _ in range(6)]  # ids made by whichever replica
        for i in made:
            assert proxy.chat_turn(i, "Hello.", max_new_tokens=2).usage.version == 1
    for r in REPLICAS:  # each replica holds exactly its own sessions and refuses the others
        with Client(f"127.0.0.1:{cluster.ports[r]}", KEY) as direct:
            assert direct.server_info().replica_id == r
            assert sorted(s.session_id for s in direct.list_sessions()) == sorted(
                i for i in ids + made if cluster.owner(i) == r)
            other = next(i for i in ids if cluster.owner(i) != r)
            assert code(lambda: direct.get_session(other)) == "FAILED_PRECONDITION"
            assert code(lambda: direct.create_session(other)) == "FAILED_PRECONDITION"


def test_a_replica_down_fails_only_its_sessions_and_resumes_them(cluster):
    ids = [f"conv-{i}" for i in range(12)]
    with Client(f"127.0.0.1:{cluster.proxy_port}", KEY, timeout=10) as proxy:
        for i in ids:
            proxy.create_session(i)
            proxy.chat_turn(i, "Tell me about pages.", max_new_tokens=4)
        cluster.kill("r1")
        for i in ids:
            start = time.time()
            if cluster.owner(i) == "r1":
                assert code(lambda: proxy.chat_turn(i, "Still there?", max_new_tokens=4)) == "UNAVAILABLE"
                assert time.time() - start < 5  # fails fast, never routed elsewhere
            else:
                assert proxy.chat_turn(i, "Still there?", max_new_tokens=4).usage.version == 2
        cluster.start("r1")
        deadline = time.time() + 15
        for i in ids:
            if cluster.owner(i) != "r1":
                continue
            while True:  # HAProxy's health check marks it up within a second or two
                try:
                    assert proxy.chat_turn(i, "Back?", max_new_tokens=4).usage.version == 2  # its state survived
                    break
                except AdaptdError as e:
                    assert e.code == "UNAVAILABLE" and time.time() < deadline, e
                    time.sleep(0.2)


def test_export_import_moves_a_session_to_another_replica(cluster):
    with Client(f"127.0.0.1:{cluster.proxy_port}", KEY) as proxy:
        src = next(f"mover-{k}" for k in range(1000) if cluster.owner(f"mover-{k}") == "r0")
        proxy.create_session(src)
        for q in ("What is a page?", "And a slab?"):
            proxy.chat_turn(src, q, max_new_tokens=4)
        blob = proxy.export_session(src)
        dst = next(f"moved-{k}" for k in range(1000) if cluster.owner(f"moved-{k}") == "r2")
        moved = proxy.import_session(blob, dst)
        assert moved.version == 2
        proxy.delete_session(src)
        assert proxy.chat_turn(dst, "And the buddy allocator?", max_new_tokens=4).usage.version == 3
    with Client(f"127.0.0.1:{cluster.ports['r2']}", KEY) as r2:
        assert r2.get_session(dst).version == 3
    with Client(f"127.0.0.1:{cluster.ports['r0']}", KEY) as r0:
        assert code(lambda: r0.get_session(src)) == "NOT_FOUND"


def test_a_replica_refuses_a_map_without_it(tmp_path):
    bad = tmp_path / "owners.map"
    bad.write_text(routing.render_map(routing.make_map(["r0", "r1"], 16)))
    gapped = tmp_path / "gapped.map"
    gapped.write_text("0 r0\n2 r1\n")
    (tmp_path / "keys.txt").write_text(f"acme {hashlib.sha256(KEY.encode()).hexdigest()}\n")
    for path, message in ((bad, "gives replica r9 no bucket"), (gapped, "line 2")):
        run = subprocess.run([os.environ["ADAPTD_BINARY"], f"--model={os.environ['ADAPTD_MODEL']}",
                              f"--store={tmp_path / 'store'}", f"--api_keys={tmp_path / 'keys.txt'}",
                              "--listen=127.0.0.1:0", "--metrics_listen=",
                              "--replica_id=r9", f"--ownership_map={path}"], capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and message in run.stderr, run.stderr


def door(cluster, session=None, port=None):
    headers = {"X-Adaptd-Session": session} if session else {}
    return openai.OpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{port or cluster.http_proxy_port}/v1",
                         default_headers=headers, max_retries=0, timeout=30)


def test_the_openai_door_routes_by_the_session_in_the_header_the_path_or_the_body(cluster):
    """The HTTP frontend sends each request to the replica that owns the session the server will
    use: a response's or conversation's id in the path or in the body names it even without the
    header, so the SDK's own calls (retrieve, previous_response_id, conversation) land right."""
    model = door(cluster).models.list().data[0].id
    ids = [f"door-{i}" for i in range(9)]
    assert {cluster.owner(i) for i in ids} == set(REPLICAS)
    first = {}
    for i in ids:
        first[i] = door(cluster, i).responses.create(model=model, input="Name a kernel allocator.",
                                                     max_output_tokens=3)
    bare = door(cluster)  # no X-Adaptd-Session: only the ids route these
    for i in ids:
        again = bare.responses.create(model=model, input="And another?", max_output_tokens=3,
                                      previous_response_id=first[i].id)
        assert again.usage.model_extra["adaptd"]["version"] == 2
        assert bare.responses.retrieve(first[i].id).output_text == first[i].output_text
        assert [t.id for t in bare.responses.input_items.list(again.id).data]
    conv = door(cluster, ids[0]).conversations.create()
    for body in ({"conversation": conv.id}, {"conversation": {"id": conv.id}}):
        bare.responses.create(model=model, input="Hello.", max_output_tokens=2, **body)
    assert len(bare.conversations.items.list(conv.id).data) == 4  # two turns, a message and a reply each
    assert bare.responses.create(model=model, input="Hi.", max_output_tokens=2).usage.output_tokens > 0  # throw-away
    for r in REPLICAS:  # each replica holds exactly its own sessions
        with Client(f"127.0.0.1:{cluster.ports[r]}", KEY) as direct:
            assert sorted(s.session_id for s in direct.list_sessions()) == sorted(i for i in ids if cluster.owner(i) == r)


def test_the_openai_door_fails_only_a_down_replicas_sessions(cluster):
    model = door(cluster).models.list().data[0].id
    down = next(f"gone-{k}" for k in range(1000) if cluster.owner(f"gone-{k}") == "r1")
    up = next(f"kept-{k}" for k in range(1000) if cluster.owner(f"kept-{k}") == "r2")
    made = {s: door(cluster, s).responses.create(model=model, input="Hello.", max_output_tokens=2) for s in (down, up)}
    cluster.kill("r1")
    start = time.time()
    with pytest.raises(openai.InternalServerError) as e:  # 503 in the OpenAI error shape; the SDK would retry it
        door(cluster).responses.retrieve(made[down].id)
    assert e.value.status_code == 503 and e.value.body["code"] == "unavailable" and time.time() - start < 5
    with pytest.raises(openai.InternalServerError):
        door(cluster, down).responses.create(model=model, input="Still there?", max_output_tokens=2)
    assert door(cluster).responses.retrieve(made[up].id).output_text == made[up].output_text
    cluster.start("r1")
    deadline = time.time() + 15
    while True:  # HAProxy marks it up within a second or two; its state survived
        try:
            assert door(cluster).responses.retrieve(made[down].id).output_text == made[down].output_text
            break
        except openai.InternalServerError:
            assert time.time() < deadline
            time.sleep(0.2)


def test_a_long_responses_body_routes_by_the_header_or_is_refused(cluster):
    """The proxy reads 16 KiB of a body: a longer one whose session is past that is refused with
    400 unless X-Adaptd-Session names it (JSON whitespace makes it long, not tokens)."""
    import http.client
    model = door(cluster).models.list().data[0].id
    sid = next(f"long-{k}" for k in range(1000) if cluster.owner(f"long-{k}") == "r2")
    first = door(cluster, sid).responses.create(model=model, input="Hello.", max_output_tokens=2)
    body = ('{"model": ' + json.dumps(model) + ', "input": "Again.", "max_output_tokens": 2,' + " " * (20 << 10)
            + '"previous_response_id": ' + json.dumps(first.id) + "}")

    def post(headers):
        conn = http.client.HTTPConnection("127.0.0.1", cluster.http_proxy_port, timeout=30)
        conn.request("POST", "/v1/responses", body=body, headers={"Authorization": f"Bearer {KEY}",
                                                                 "Content-Type": "application/json", **headers})
        r = conn.getresponse()
        out = (r.status, dict(r.getheaders()), json.loads(r.read()))
        conn.close()
        return out
    status, headers, err = post({})
    assert status == 400 and err["error"]["code"] == "session_header_required", err
    assert headers.get("x-should-retry") == "false"
    status, _, done = post({"X-Adaptd-Session": sid})
    assert status == 200 and done["usage"]["adaptd"]["version"] == 2, done
