"""A thin, typed client of the Adaptd API (proto/adaptd/v1/adaptd.proto).

    from adaptd_client import Client
    with Client("127.0.0.1:50051", api_key) as c:
        c.create_session("alice")
        for piece in c.chat("alice", "Hello!"):
            print(piece, end="")

Every call sends `authorization: Bearer <key>` and, for a session, its id in `x-adaptd-session`
(the routing header). Errors raise AdaptdError with the gRPC code's name (e.g. "NOT_FOUND").
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Optional, Sequence, Union

import grpc

from adaptd.v1 import adaptd_pb2 as pb
from adaptd.v1 import adaptd_pb2_grpc as rpc

_CHUNK = 1 << 20


class AdaptdError(Exception):
    def __init__(self, err: grpc.RpcError):
        self.code = err.code().name
        self.details = err.details()
        super().__init__(f"{self.code}: {self.details}")


@dataclasses.dataclass
class Turn:
    """A finished turn: the reply's text and ids, and the turn's usage."""

    text: str = ""
    token_ids: list = dataclasses.field(default_factory=list)
    usage: Optional[pb.Usage] = None
    finish_reason: str = ""


Messages = Union[str, Sequence[tuple]]  # "text" (one user message) or [(role, content), ...]


class Client:
    def __init__(self, target: str, api_key: str, root_certificates: Optional[bytes] = None,
                 private_key: Optional[bytes] = None, certificate_chain: Optional[bytes] = None,
                 timeout: Optional[float] = 60.0):
        if root_certificates is None:
            self._channel = grpc.insecure_channel(target)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self._channel = grpc.secure_channel(target, creds)
        self._stub = rpc.AdaptdStub(self._channel)
        self._key = api_key
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _md(self, session: str = "", request_id: str = ""):
        md = [("authorization", f"Bearer {self._key}")]
        if session:
            md.append(("x-adaptd-session", session))
        if request_id:
            md.append(("x-request-id", request_id))
        return md

    def _call(self, method, request, session: str = ""):
        try:
            return method(request, metadata=self._md(session), timeout=self._timeout)
        except grpc.RpcError as e:
            raise AdaptdError(e) from None

    def _stream(self, method, request, session: str = "", request_id: str = ""):
        try:
            yield from method(request, metadata=self._md(session, request_id), timeout=self._timeout)
        except grpc.RpcError as e:
            raise AdaptdError(e) from None

    # Sessions.
    def create_session(self, session_id: str = "", update_rule: str = "", chat_format: str = "",
                       max_context_tokens: int = 0, **options) -> pb.Session:
        """`options`: the other SessionOptions fields (lr_scale, clip_tau, decay, ...)."""
        options = pb.SessionOptions(update_rule=update_rule, chat_format=chat_format,
                                    max_context_tokens=max_context_tokens, **options)
        return self._call(self._stub.CreateSession, pb.CreateSessionRequest(session_id=session_id, options=options),
                          session_id)

    def get_session(self, session_id: str) -> pb.Session:
        return self._call(self._stub.GetSession, pb.GetSessionRequest(session_id=session_id), session_id)

    def list_sessions(self, page_size: int = 0) -> Iterator[pb.Session]:
        token = ""
        while True:
            page = self._call(self._stub.ListSessions, pb.ListSessionsRequest(page_size=page_size, page_token=token))
            yield from page.sessions
            token = page.next_page_token
            if not token:
                return

    def delete_session(self, session_id: str) -> None:
        self._call(self._stub.DeleteSession, pb.DeleteSessionRequest(session_id=session_id), session_id)

    def fork_session(self, session_id: str, new_session_id: str = "", version: int = 0) -> pb.Session:
        req = pb.ForkSessionRequest(session_id=session_id, new_session_id=new_session_id, version=version)
        return self._call(self._stub.ForkSession, req, session_id)

    def reset_session(self, session_id: str) -> pb.Session:
        return self._call(self._stub.ResetSession, pb.ResetSessionRequest(session_id=session_id), session_id)

    def create_context(self, session_id: str, request_id: str = "") -> pb.Context:
        """A new conversation in the session (its memory kept, its window emptied), made current."""
        req = pb.CreateContextRequest(session_id=session_id, request_id=request_id)
        return self._call(self._stub.CreateContext, req, session_id)

    def list_contexts(self, session_id: str) -> list[pb.Context]:
        resp = self._call(self._stub.ListContexts, pb.ListContextsRequest(session_id=session_id), session_id)
        return list(resp.contexts)

    def switch_context(self, session_id: str, context_id: int) -> pb.Context:
        """Continues context `context_id`: its latest turns re-read into the window, not learned again."""
        req = pb.SwitchContextRequest(session_id=session_id, context_id=context_id)
        return self._call(self._stub.SwitchContext, req, session_id)

    def list_turns(self, session_id: str, context_id: Optional[int] = None, request_id: str = "") -> list[pb.Turn]:
        """The session's turns from its log (all pages): messages as sent and replies."""
        turns, token = [], ""
        while True:
            req = pb.ListTurnsRequest(session_id=session_id, request_id=request_id, page_size=1000, page_token=token)
            if context_id is not None:
                req.context_id = context_id
            resp = self._call(self._stub.ListTurns, req, session_id)
            turns.extend(resp.turns)
            token = resp.next_page_token
            if not token:
                return turns

    def rollback_session(self, session_id: str, version: int) -> pb.Session:
        req = pb.RollbackSessionRequest(session_id=session_id, version=version)
        return self._call(self._stub.RollbackSession, req, session_id)

    def migrate_session(self, session_id: str) -> pb.Session:
        return self._call(self._stub.MigrateSession, pb.MigrateSessionRequest(session_id=session_id), session_id)

    def export_session(self, session_id: str) -> bytes:
        chunks = self._stream(self._stub.ExportSession, pb.ExportSessionRequest(session_id=session_id), session_id)
        return b"".join(c.chunk for c in chunks)

    def import_session(self, blob: bytes, session_id: str = "") -> pb.Session:
        def requests():
            yield pb.ImportSessionRequest(session_id=session_id, chunk=blob[:_CHUNK])
            for at in range(_CHUNK, len(blob), _CHUNK):
                yield pb.ImportSessionRequest(chunk=blob[at:at + _CHUNK])
        return self._call(self._stub.ImportSession, requests(), session_id)

    # Turns.
    @staticmethod
    def _messages(messages: Messages):
        if isinstance(messages, str):
            messages = [("user", messages)]
        return [pb.ChatMessage(role=r, content=c.encode() if isinstance(c, str) else c) for r, c in messages]

    @staticmethod
    def _sampling(temperature=0.0, top_k=0, top_p=0.0, min_p=0.0, repetition_penalty=0.0, seed=0):
        return pb.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                 repetition_penalty=repetition_penalty, seed=seed)

    def chat_stream(self, session_id: str, messages: Messages, max_new_tokens: int = 0, stop: Iterable[str] = (),
                    learn: bool = True, request_id: str = "", **sampling) -> Iterator[pb.ChatResponse]:
        """The turn's stream of ChatResponse messages (the last one carries usage)."""
        req = pb.ChatRequest(session_id=session_id, messages=self._messages(messages), max_new_tokens=max_new_tokens,
                             stop=[s.encode() for s in stop], dry_run=not learn, request_id=request_id,
                             sampling=self._sampling(**sampling))
        return self._stream(self._stub.Chat, req, session_id, request_id)

    def chat(self, session_id: str, messages: Messages, **kwargs) -> Iterator[str]:
        """The reply's text as it streams."""
        for r in self.chat_stream(session_id, messages, **kwargs):
            if r.text:
                yield r.text

    def chat_turn(self, session_id: str, messages: Messages, **kwargs) -> Turn:
        """One whole turn."""
        return self._collect(self.chat_stream(session_id, messages, **kwargs))

    def generate(self, session_id: str, prompt: str, max_new_tokens: int = 0, stop: Iterable[str] = (),
                 learn: bool = True, request_id: str = "", **sampling) -> Turn:
        req = pb.GenerateRequest(session_id=session_id, prompt=prompt.encode(), max_new_tokens=max_new_tokens,
                                 stop=[s.encode() for s in stop], dry_run=not learn, request_id=request_id,
                                 sampling=self._sampling(**sampling))
        return self._collect(self._stream(self._stub.Generate, req, session_id, request_id))

    @staticmethod
    def _collect(stream) -> Turn:
        turn = Turn()
        for r in stream:
            turn.text += r.text
            turn.token_ids.extend(r.token_ids)
            if r.HasField("usage"):
                turn.usage = r.usage
                turn.finish_reason = r.finish_reason
        return turn

    def ingest(self, session_id: str, text: Union[str, bytes, None] = None, token_ids: Sequence[int] = (),
               keep_in_context: bool = False, request_id: str = "") -> pb.Usage:
        if isinstance(text, str):
            text = text.encode()
        req = pb.IngestRequest(session_id=session_id, text=text or b"", token_ids=list(token_ids),
                               keep_in_context=keep_in_context, request_id=request_id)
        return self._call(self._stub.Ingest, req, session_id).usage

    def score(self, session_id: str, text: str, adapt: bool = False, request_id: str = "") -> pb.ScoreResponse:
        """Per-token log-probabilities and NLL; a dry run unless `adapt` (then the text is learned)."""
        req = pb.ScoreRequest(session_id=session_id, text=text.encode(), adapt=adapt, request_id=request_id)
        return self._call(self._stub.Score, req, session_id)

    def server_info(self) -> pb.ServerInfo:
        return self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest())

    def backup_store(self) -> pb.BackupStoreResponse:
        """Operators only: a backup of the replica's whole store into its --backup_dir."""
        return self._call(self._stub.BackupStore, pb.BackupStoreRequest())
