"""A session that learns a document, then answers about it, and survives being exported.

    python clients/python/example.py [--target 127.0.0.1:50051]   (key: $ADAPTD_API_KEY)
"""
import argparse
import os
import uuid

from adaptd_client import Client

parser = argparse.ArgumentParser()
parser.add_argument("--target", default="127.0.0.1:50051")
args = parser.parse_args()

with Client(args.target, os.environ["ADAPTD_API_KEY"]) as c:
    info = c.server_info()
    print(f"model {info.model_name} ({info.model_fingerprint}), TTT layers {list(info.ttt_layers)}")
    session = c.create_session(f"example-{uuid.uuid4().hex[:8]}").session_id
    note = "The buddy allocator merges a freed block with its free buddy into a larger block."
    before = c.score(session, note).nll
    usage = c.ingest(session, note * 4)
    print(f"ingested {usage.prompt_tokens} tokens, {usage.updates_applied} TTT updates")
    print(f"NLL of the note: {before:.3f} -> {c.score(session, note).nll:.3f} nats/token")
    print("reply: ", end="")
    for piece in c.chat(session, "What does the buddy allocator do?", max_new_tokens=40):
        print(piece, end="", flush=True)
    print()
    blob = c.export_session(session)
    print(f"exported {len(blob)} bytes; version {c.get_session(session).version}")
    c.delete_session(session)
