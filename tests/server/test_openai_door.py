"""The OpenAI-compatible HTTP door against the real adaptd with the default model (SmolLM2-135M-
Instruct, its int4 blocks, ntp_gradient sessions) on 127.0.0.1, driven by the official `openai`
SDK (a client no one here wrote) and, for what the SDK hides, raw HTTP. Run by ctest (label
integration), which passes ADAPTD_BINARY, ADAPTD_MODEL and a PYTHONPATH with the gRPC client."""
import hashlib
import http.client
import json
import os
import pathlib
import signal
import socket
import urllib.request

import openai
import pytest

from adaptd_client import Client
from tools import adaptd_process

KEY, OTHER_KEY = "door-key", "other-key"
MAX_BODY = 64 << 10


class Server:
    """adaptd with its HTTP door; restartable on the same store (kill -9 tests)."""

    def __init__(self, tmp):
        self.tmp = tmp
        (tmp / "keys.txt").write_text(f"acme {hashlib.sha256(KEY.encode()).hexdigest()}\n"
                                      f"globex {hashlib.sha256(OTHER_KEY.encode()).hexdigest()}\n")
        self.start()

    def start(self):
        self.proc, ports = adaptd_process.start(
            os.environ["ADAPTD_BINARY"],
            [f"--model={os.environ['ADAPTD_MODEL']}", "--dtype=f32", "--weights=int4-g32",
             f"--store={self.tmp / 'store'}", f"--api_keys={self.tmp / 'keys.txt'}", "--listen=127.0.0.1:0",
             "--metrics_listen=127.0.0.1:0", "--http_listen=127.0.0.1:0", f"--http_max_body_bytes={MAX_BODY}",
             "--session_defaults=update_rule: \"ntp_gradient\"", "--max_context_tokens=512"],
            self.tmp / "adaptd.log")
        self.http, self.grpc, self.metrics = ports["http"], ports["serving"], ports["metrics"]

    def client(self, session=None, key=KEY, **kw):
        headers = {"X-Adaptd-Session": session} if session else {}
        return openai.OpenAI(api_key=key, base_url=f"http://127.0.0.1:{self.http}/v1", default_headers=headers,
                             max_retries=kw.pop("max_retries", 0), **kw)

    def grpc_client(self):
        return Client(f"127.0.0.1:{self.grpc}", KEY)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("door"))
    yield s
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=60) == 0


@pytest.fixture(scope="module")
def model(server):
    return server.client().models.list().data[0].id


def vendor(usage):
    return usage.model_extra["adaptd"]


def ask(client, model, text, **kw):
    return client.responses.create(model=model, input=text, temperature=0, max_output_tokens=kw.pop("max", 12), **kw)


def test_models_name_the_served_model(server):
    models = server.client().models.list().data
    assert len(models) == 1 and models[0].id == "smollm2-135m-instruct"
    extra = models[0].model_extra["adaptd"]
    info = server.grpc_client().server_info()
    assert extra["fingerprint"] == info.model_fingerprint and extra["fingerprint"].endswith("-int4-g32")
    assert extra["fast_layers"] == list(info.fast_layers) and len(extra["fast_layers"]) > 0
    assert server.client().models.retrieve(models[0].id).id == models[0].id
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("gpt-4o")


def test_responses_continue_through_previous_response_id(server, model):
    c = server.client("resp-1")
    r1 = ask(c, model, "My name is Ada and I keep bees. Say hello.")
    assert r1.status in ("completed", "incomplete") and r1.output_text
    r2 = ask(c, model, "What do I keep?", previous_response_id=r1.id)
    v1, v2 = vendor(r1.usage), vendor(r2.usage)
    assert v2["context"] == v1["context"] and v2["version"] == v1["version"] + 1  # continued, no new context
    assert r2.usage.input_tokens < r1.usage.input_tokens + r1.usage.output_tokens  # only the new message fed
    got = c.responses.retrieve(r2.id)
    assert got.output_text == r2.output_text and got.usage.output_tokens == r2.usage.output_tokens
    items = c.responses.input_items.list(r2.id).data
    assert [(i.role, i.content[0].text) for i in items] == [("user", "What do I keep?")]
    # A fresh response (neither previous_response_id nor conversation) opens a new context.
    r3 = ask(c, model, "Another topic.")
    assert vendor(r3.usage)["context"] == v1["context"] + 1
    # An older response continues in a fork of the session at its version.
    r4 = ask(c, model, "Say it again.", previous_response_id=r1.id)
    assert vendor(r4.usage)["session"] != "resp-1" and vendor(r4.usage)["version"] == v1["version"] + 1
    assert ask(c, model, "More.", previous_response_id=r4.id).output_text is not None


def test_conversations_hold_their_items(server, model):
    c = server.client("conv-1")
    conv = c.conversations.create()
    r1 = ask(c, model, "I live in Lisbon.", conversation=conv.id)
    r2 = ask(c, model, "Where do I live?", conversation={"id": conv.id})
    assert vendor(r2.usage)["version"] == vendor(r1.usage)["version"] + 1
    assert c.conversations.retrieve(conv.id).id == conv.id
    items = c.conversations.items.list(conv.id, order="asc").data
    assert [(i.role, i.content[0].text) for i in items] == [
        ("user", "I live in Lisbon."), ("assistant", r1.output_text),
        ("user", "Where do I live?"), ("assistant", r2.output_text)]
    page = c.conversations.items.list(conv.id, limit=1)  # desc by default
    assert page.data[0].content[0].text == r2.output_text and page.has_more
    with pytest.raises(openai.BadRequestError):
        c.conversations.delete(conv.id)
    with pytest.raises(openai.BadRequestError):  # both at once, as the OpenAI API refuses it
        ask(c, model, "x", conversation=conv.id, previous_response_id=r1.id)


def test_another_key_sees_nothing(server, model):
    c = server.client("private-1")
    conv = c.conversations.create()
    r = ask(c, model, "A secret.", conversation=conv.id)
    other = server.client("private-1", key=OTHER_KEY)
    for fn in (lambda: other.conversations.retrieve(conv.id), lambda: other.conversations.items.list(conv.id),
               lambda: other.responses.retrieve(r.id), lambda: ask(other, model, "x", previous_response_id=r.id)):
        with pytest.raises(openai.NotFoundError):
            fn()
    with pytest.raises(openai.AuthenticationError):
        server.client("private-1", key="wrong").responses.retrieve(r.id)


def test_a_second_conversation_benefits_from_the_first(server, model):
    fact = "My cat is called Pickle. My cat Pickle is orange. I love my cat Pickle."
    answer = "Your cat is called Pickle."
    c = server.client("memory-1")
    conv = c.conversations.create()
    for _ in range(3):
        ask(c, model, fact, conversation=conv.id, max=8)
    c.conversations.create()  # a fresh conversation of the same session: the window is empty again
    g = server.grpc_client()
    g.create_session("memory-fresh")
    learned, fresh = g.score("memory-1", answer).nll, g.score("memory-fresh", answer).nll
    assert learned < fresh * 0.97, (learned, fresh)  # the fast weights carried it across
    other = server.client("memory-2")  # another session learned nothing of it
    ask(other, model, "Tell me about the weather.", max=8)
    assert abs(g.score("memory-2", answer).nll - fresh) < abs(learned - fresh) / 2


def chat(client, model, messages, **kw):
    return client.chat.completions.create(model=model, messages=messages, temperature=0,
                                          max_completion_tokens=kw.pop("max", 10), **kw)


def test_chat_completions_match_the_resent_history(server, model):
    c = server.client("chat-1")
    h = [{"role": "user", "content": "My favourite colour is green."}]
    a1 = chat(c, model, h)
    h += [{"role": "assistant", "content": a1.choices[0].message.content}, {"role": "user", "content": "And yours?"}]
    a2 = chat(c, model, h)
    u1, u2 = vendor(a1.usage), vendor(a2.usage)
    assert (u1["version"], u2["version"], u1["context"], u2["context"]) == (1, 2, 0, 0)
    assert a2.usage.prompt_tokens < 20  # only the new message (and the closing of the reply) was fed
    learned = server.grpc_client().get_session("chat-1").state.tokens_learned
    # The whole history again: already answered, the committed reply, nothing learned twice.
    again = chat(c, model, h)
    assert again.choices[0].message.content == a2.choices[0].message.content
    assert vendor(again.usage)["version"] == 2
    assert server.grpc_client().get_session("chat-1").state.tokens_learned == learned
    # A new chat on the same session: a new context.
    new = chat(c, model, [{"role": "user", "content": "Hello, who are you?"}])
    assert (vendor(new.usage)["context"], vendor(new.usage)["version"]) == (1, 4)  # the context event, the turn
    # Editing the history part-way: 409 naming the message, not retried; a header asks for a new context.
    edited = [h[0], {"role": "assistant", "content": "Something else."}, h[2]]
    counting = server.client("chat-1", max_retries=2)
    with pytest.raises(openai.ConflictError) as e:
        chat(counting, model, edited)
    assert e.value.response.headers["x-should-retry"] == "false" and "messages[1]" in e.value.message
    branched = chat(c, model, edited, extra_headers={"X-Adaptd-New-Context": "true"})
    assert vendor(branched.usage)["context"] == 2


def test_streamed_text_equals_the_reply(server, model):
    c = server.client()  # no session: a throw-away one, each time
    messages = [{"role": "user", "content": "Name three fruits."}]
    whole = chat(c, model, messages, max=16, seed=3).choices[0].message.content
    stream = chat(c, model, messages, max=16, seed=3, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == whole
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-2].choices[0].finish_reason in ("stop", "length")
    r = c.responses.create(model=model, input="Name three fruits.", temperature=0, max_output_tokens=16)
    with c.responses.stream(model=model, input="Name three fruits.", temperature=0, max_output_tokens=16) as s:
        deltas = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert deltas == r.output_text == final.output_text and r.output_text


def test_store_false_leaves_the_session_unchanged(server, model):
    c = server.client("dry-1")
    r1 = ask(c, model, "Remember: the code is 4711.")
    g = server.grpc_client()
    before, sessions = g.get_session("dry-1"), {s.session_id for s in g.list_sessions()}
    r2 = ask(c, model, "What is the code?", previous_response_id=r1.id, store=False)
    assert r2.output_text
    after = g.get_session("dry-1")
    assert (after.version, after.state.tokens_learned) == (before.version, before.state.tokens_learned)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r2.id)
    assert {s.session_id for s in g.list_sessions()} == sessions  # the temporary fork is gone


def test_kill9_between_turns_continues_identically(server, model):
    c = server.client("steady-1")
    a1 = ask(c, model, "I am a pilot from Oslo.")
    a2 = ask(c, model, "What is my job?", previous_response_id=a1.id)
    b1 = ask(server.client("steady-2"), model, "I am a pilot from Oslo.")
    assert b1.output_text == a1.output_text
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    server.start()
    b2 = ask(server.client("steady-2"), model, "What is my job?", previous_response_id=b1.id)
    assert b2.output_text == a2.output_text and vendor(b2.usage)["version"] == vendor(a2.usage)["version"]


def test_errors_have_the_sdk_exceptions(server, model):
    c = server.client("errors-1")
    m = [{"role": "user", "content": "hi"}]
    for kw in ({"n": 2}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
               {"response_format": {"type": "json_object"}}, {"extra_body": {"frobnicate": 1}},
               {"top_p": 7}, {"extra_body": {"top_p": "high"}}):
        with pytest.raises(openai.BadRequestError) as e:
            chat(c, model, m, **kw)
        assert e.value.body["param"] in ("n", "tools", "response_format", "frobnicate", "top_p"), kw
    with pytest.raises(openai.NotFoundError):
        chat(c, "gpt-4o", m)
    with pytest.raises(openai.BadRequestError):
        chat(c, model, [{"role": "tool", "content": "x"}])
    with pytest.raises(openai.BadRequestError):  # past the session's window
        chat(c, model, m, max=100000)
    with pytest.raises(openai.NotFoundError):
        ask(c, model, "x", previous_response_id="resp_bm9wZQ.nothing")
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve("not-an-id")
    with pytest.raises(openai.BadRequestError):
        server.client().conversations.create()  # a conversation needs a session


def raw(server, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=60)
    conn.request(method, path, body=body, headers={"Authorization": f"Bearer {KEY}", **(headers or {})})
    r = conn.getresponse()
    return r.status, r.getheaders(), r.read()


def test_malformed_and_oversized_bodies(server):
    status, _, body = raw(server, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    status, _, body = raw(server, "POST", "/v1/chat/completions", b"[1, 2]")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = raw(server, "POST", "/v1/chat/completions", b"\"" + b"x" * (MAX_BODY + 10) + b"\"")
    assert status == 413 and "too large" in json.loads(body)["error"]["message"]
    status, _, body = raw(server, "GET", "/v1/nothing")
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_url"
    bad = json.dumps({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "\udcff"}]})
    status, _, _ = raw(server, "POST", "/v1/chat/completions", bad.encode())
    assert status == 400


def sse(server, path, payload, session):
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=120)
    conn.request("POST", path, body=json.dumps(payload),
                 headers={"Authorization": f"Bearer {KEY}", "X-Adaptd-Session": session})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    return conn, r


def test_sse_framing(server, model):
    _, r = sse(server, "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "Hi"}],
                                                "stream": True, "max_tokens": 6, "temperature": 0}, "sse-1")
    events = r.read().decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    _, r = sse(server, "/v1/responses", {"model": model, "input": "Hi", "stream": True, "max_output_tokens": 6,
                                         "temperature": 0}, "sse-1")
    frames = [f for f in r.read().decode().split("\n\n") if f]
    types, seqs = [], []
    for f in frames:
        event, data = f.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        d = json.loads(data[6:])
        assert d["type"] == event[7:]
        types.append(d["type"])
        seqs.append(d["sequence_number"])
    assert seqs == list(range(len(seqs)))
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert types[-1] in ("response.completed", "response.incomplete")


def test_disconnect_mid_stream_commits_what_was_generated(server, model):
    messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    conn, r = sse(server, "/v1/chat/completions", {"model": model, "messages": messages, "stream": True,
                                                   "max_tokens": 400, "temperature": 0}, "gone-1")
    r.fp.readline()  # the first event has begun: generation is under way
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    c = server.client("gone-1")
    again = None
    for _ in range(100):  # the cancelled turn commits shortly after
        try:
            again = chat(c, model, messages, max=400)
            break
        except openai.ConflictError:  # session busy while the cancelled turn commits
            continue
    assert vendor(again.usage)["version"] == 1  # the committed (cut) reply, not a new turn
    assert 0 < again.usage.completion_tokens < 400


def test_http_metrics_by_route_and_status(server):
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics").read().decode()
    assert 'adaptd_http_requests_total{route="/v1/chat/completions",status="200"}' in body
    assert 'adaptd_http_requests_total{route="/v1/chat/completions",status="400"}' in body
    names = pathlib.Path(__file__).parents[2].joinpath("server/metrics.txt").read_text().splitlines()
    for name in [n.split()[0] for n in names if n.endswith(" http")]:
        assert f"# TYPE {name} " in body, name
