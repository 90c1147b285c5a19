"""The Python client (clients/python) against the real adaptd on 127.0.0.1: every RPC, its errors,
and the example. Run by ctest (label integration), which passes ADAPTD_BINARY, ADAPTD_MODEL and a
PYTHONPATH with the client and its generated stubs."""
import hashlib
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from adaptd_client import AdaptdError, Client
from tools import adaptd_process

KEY = "py-key"


@pytest.fixture()
def server(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"acme {hashlib.sha256(KEY.encode()).hexdigest()}\n")
    proc, ports = adaptd_process.start(os.environ["ADAPTD_BINARY"],
                                       [f"--model={os.environ['ADAPTD_MODEL']}", f"--store={tmp_path / 'store'}",
                                        f"--api_keys={keys}", "--listen=127.0.0.1:0", "--metrics_listen="],
                                       tmp_path / "adaptd.log")
    yield f"127.0.0.1:{ports['serving']}"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def codes(fn):
    with pytest.raises(AdaptdError) as e:
        fn()
    return e.value.code


def test_every_rpc(server):
    with Client(server, KEY) as c:
        info = c.server_info()
        assert info.vocab_size > 0 and list(info.ttt_layers)
        s = c.create_session("py-1", chat_format="raw")  # a document model: in ChatML it stops at once
        assert s.name == "sessions/py-1" and s.version == 0 and s.options.chat_format == "raw"

        pieces = list(c.chat("py-1", "What does the page allocator do?", max_new_tokens=12))
        assert pieces and all(isinstance(p, str) for p in pieces)
        turn = c.chat_turn("py-1", [("user", "And the slab allocator?")], max_new_tokens=12)
        assert turn.usage.version == 2 and turn.usage.completion_tokens == len(turn.token_ids)
        raw = c.generate("py-1", "Memory is", max_new_tokens=6)
        assert raw.usage.version == 3

        before = c.score("py-1", "Pages are four kilobytes.").nll
        usage = c.ingest("py-1", "Pages are four kilobytes. " * 12)
        assert usage.updates_applied > 0 and usage.version == 4
        assert c.score("py-1", "Pages are four kilobytes.").nll != before
        assert c.get_session("py-1").version == 4  # Score changed nothing
        adapted = c.score("py-1", "Pages are four kilobytes.", adapt=True)
        assert adapted.version == 5 and c.get_session("py-1").version == 5
        c.rollback_session("py-1", 4)

        fork = c.fork_session("py-1", "py-2", version=2)
        assert fork.version == 2
        assert [x.session_id for x in c.list_sessions(page_size=1)] == ["py-1", "py-2"]
        assert c.reset_session("py-2").version == 3
        ctx = c.create_context("py-2")
        assert ctx.name == "sessions/py-2/contexts/1" and ctx.current and ctx.version == 4
        assert [x.context_id for x in c.list_contexts("py-2")] == [0, 1]
        assert c.switch_context("py-2", 0).version == 5
        assert codes(lambda: c.switch_context("py-2", 9)) == "NOT_FOUND"
        assert c.rollback_session("py-2", 1).version == 1
        assert [x.context_id for x in c.list_contexts("py-2")] == [0]  # the rollback undid them
        assert c.migrate_session("py-1").version == 4  # bound already: unchanged

        blob = c.export_session("py-1")
        copy = c.import_session(blob, "py-3")
        assert copy.version == 4
        again = c.chat_turn("py-3", "Tell me more.", max_new_tokens=8)
        assert again.token_ids == c.chat_turn("py-1", "Tell me more.", max_new_tokens=8).token_ids
        c.delete_session("py-3")
        assert codes(lambda: c.get_session("py-3")) == "NOT_FOUND"


def test_errors_have_their_codes(server):
    with Client(server, "wrong") as bad:
        assert codes(bad.server_info) == "UNAUTHENTICATED"
    with Client(server, KEY) as c:
        c.create_session("e")
        assert codes(lambda: c.create_session("e")) == "ALREADY_EXISTS"
        assert codes(lambda: c.chat_turn("e", [("user", b"caf\xc3")])) == "INVALID_ARGUMENT"
        assert codes(lambda: c.chat_turn("e", "hi", temperature=float("nan"))) == "INVALID_ARGUMENT"
        assert codes(lambda: c.import_session(b"not a blob", "x")) == "INVALID_ARGUMENT"
        assert codes(lambda: c.rollback_session("e", 5)) == "INVALID_ARGUMENT"


def test_example_runs(server):
    example = pathlib.Path(__file__).resolve().parents[2] / "clients" / "python" / "example.py"
    out = subprocess.run([sys.executable, str(example), "--target", server], capture_output=True, text=True,
                         env={**os.environ, "ADAPTD_API_KEY": KEY}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "TTT updates" in out.stdout and "exported" in out.stdout
