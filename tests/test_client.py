"""service.client against the real service under gunicorn: events, errors, resume, fallback and the CLI.

No mocks: drops and broken proxies are provoked by a real TCP proxy running in a thread.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import jwt
import pytest

from service.client import (
    ChatClient,
    ConnectionFailed,
    ContextTooLong,
    Done,
    Metadata,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Reasoning,
    StreamError,
    Token,
    Unauthorized,
    UnsafeInput,
    UpstreamRejected,
    UpstreamUnavailable,
    ValidationFailed,
    parse_event,
)
from tests.conftest import ServerFactory
from tests.fake_upstream import WORDS
from tests.servers import ROOT, GunicornServer, free_port

SECRET = "test-secret-that-is-long-enough-for-hs256"
STREAM_POST = b"POST /api/v1/ai/chat/stream "


def words(count: int) -> list[str]:
    return [word if index == 0 else " " + word for index, word in enumerate(WORDS[:count])]


class Proxy:
    """TCP proxy to ``port``. ``cut_in_token`` cuts the first stream's client side once, inside that token
    event, and keeps reading from the server (a drop the server cannot see), or with ``cut_both`` closes the
    server side too (a real drop: the server sees its client go). ``refuse_stream`` answers the stream POST with a
    502 HTML page, as a broken proxy would, and forwards everything else."""

    def __init__(
        self, port: int, cut_in_token: int | None = None, refuse_stream: bool = False, cut_both: bool = False
    ) -> None:
        self.port, self.cut_in_token, self.refuse_stream = port, cut_in_token, refuse_stream
        self.cut_both = cut_both
        self.heads: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        self.heads.append(head.partition(b"\r\n\r\n")[0].decode())
        if self.refuse_stream and head.startswith(STREAM_POST):
            page = b"<h1>502 Bad Gateway</h1>"
            client.sendall(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(page), page)
            )
            client.close()
            return
        cut = self.cut_in_token if head.startswith(STREAM_POST) else None
        self.cut_in_token = None if cut else self.cut_in_token
        server = socket.create_connection(("127.0.0.1", self.port))
        server.sendall(head)
        threading.Thread(target=self._upload, args=(client, server, cut is None), daemon=True).start()
        received = b""
        while data := server.recv(65536):
            received += data
            at = _nth(received, b'"type":"token"', cut) if cut else -1
            if at < 0:
                client.sendall(data)
                continue
            client.sendall(data[: at + 5 - (len(received) - len(data))])
            client.shutdown(socket.SHUT_RDWR)
            client.close()
            while not self.cut_both and server.recv(
                65536
            ):  # keep the server side open and drained until the stream ends
                pass
            break
        server.close()
        client.close()

    @staticmethod
    def _upload(client: socket.socket, server: socket.socket, pass_close: bool) -> None:
        try:
            while data := client.recv(65536):
                server.sendall(data)
            if pass_close:
                server.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _nth(data: bytes, marker: bytes, n: int) -> int:
    at = -1
    for _ in range(n):
        at = data.find(marker, at + 1)
        if at < 0:
            return -1
    return at


@pytest.fixture
def chat(server: GunicornServer) -> Iterator[ChatClient]:
    with ChatClient(server.url, backoff=0.05) as client:
        yield client


def test_stream_yields_metadata_tokens_in_order_and_done_with_usage(chat: ChatClient) -> None:
    events = list(chat.stream("sleep please #tokens=5"))
    assert isinstance(events[0], Metadata)
    assert events[0].model == "test-model"
    assert len(events[0].stream_id) == 32 and events[0].conversation_id and events[0].message_id
    assert [event.content for event in events[1:-1] if isinstance(event, Token)] == words(5)
    done = events[-1]
    assert isinstance(done, Done) and len(events) == 7
    assert (done.finish_reason, done.usage.prompt_tokens, done.usage.completion_tokens) == ("stop", 12, 5)
    assert done.usage.total_tokens == 17 and done.tokens_per_second is not None
    assert chat.last_event_id == f"{events[0].stream_id}:6"
    assert events[1].raw == {"type": "token", "content": "Baby"}


def test_chat_returns_the_whole_reply(chat: ChatClient) -> None:
    result = chat.chat("all at once #tokens=4")
    assert result.content == "Baby sleep patterns change"
    assert (result.finish_reason, result.model, result.usage.completion_tokens) == ("stop", "test-model", 4)
    assert uuid.UUID(result.conversation_id) and result.message_id


def test_reasoning_comes_as_its_own_events_and_in_the_whole_reply(chat: ChatClient) -> None:
    events = list(chat.stream("think aloud #reasoning=2 #tokens=2"))
    assert [type(event) for event in events] == [Metadata, Reasoning, Reasoning, Token, Token, Done]
    assert [event.content for event in events if isinstance(event, Reasoning)] == ["Let", " me"]
    done = events[-1]
    assert isinstance(done, Done) and (done.usage.completion_tokens, done.usage.reasoning_tokens) == (4, 2)
    result = chat.chat("think aloud at once #reasoning=3 #tokens=2")
    assert (result.content, result.reasoning, result.usage.reasoning_tokens) == ("Baby sleep", "Let me think", 3)
    assert chat.chat("no thoughts #tokens=1").reasoning is None


def test_continuing_a_conversation_and_the_conversation_helpers(chat: ChatClient) -> None:
    first, *_ = list(chat.stream("first turn #tokens=2"))  # read to its end: the turn is saved before ``done``
    assert isinstance(first, Metadata)
    events = list(chat.stream("second turn #tokens=3", conversation_id=first.conversation_id))
    assert isinstance(events[0], Metadata) and events[0].conversation_id == first.conversation_id
    assert chat.chat("third turn #tokens=1", conversation_id=first.conversation_id).conversation_id == (
        first.conversation_id
    )
    messages = chat.conversation(first.conversation_id)["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant"] * 3
    assert messages[3]["content"] == "Baby sleep patterns"
    assert first.conversation_id in [item["id"] for item in chat.conversations()]
    chat.delete_conversation(first.conversation_id)
    with pytest.raises(NotFound):
        chat.conversation(first.conversation_id)


def test_request_errors_map_to_their_exceptions(chat: ChatClient) -> None:
    with pytest.raises(ValidationFailed) as invalid:
        list(chat.stream("hi", model="no-such-model"))
    assert (invalid.value.status, invalid.value.code) == (400, "validation_error") and "model" in invalid.value.details
    with pytest.raises(NotFound) as missing:
        list(chat.stream("hi", conversation_id=str(uuid.uuid4())))
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(NotFound):
        chat.chat("hi", conversation_id=str(uuid.uuid4()))
    with pytest.raises(PayloadTooLarge) as too_large:
        list(chat.stream("x" * 70_000))
    assert too_large.value.status == 413
    with pytest.raises(NotFound):
        chat.cancel("0" * 32)


def test_unauthorized_and_unsafe_input(server_factory: ServerFactory) -> None:
    server = server_factory(JWT_SECRET=SECRET, BLOCKED_TERMS="forbidden")
    with ChatClient(server.url) as anonymous, pytest.raises(Unauthorized) as refused:
        list(anonymous.stream("hi #tokens=1"))
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with ChatClient(server.url, token) as alice:
        assert alice.chat("hi #tokens=1").content == "Baby"
        with pytest.raises(UnsafeInput) as unsafe:
            list(alice.stream("something forbidden"))
    assert (unsafe.value.status, unsafe.value.code) == (400, "unsafe_input")


def test_rate_limited_carries_retry_after(server_factory: ServerFactory) -> None:
    server = server_factory(RATE_LIMIT="1/minute")
    with ChatClient(server.url) as client:
        assert isinstance(list(client.stream("one #tokens=1"))[-1], Done)
        with pytest.raises(RateLimited) as limited:
            list(client.stream("two #tokens=1"))
    assert limited.value.status == 429 and limited.value.retry_after is not None and limited.value.retry_after > 0


def test_upstream_down_is_upstream_unavailable(chat: ChatClient) -> None:
    with pytest.raises(UpstreamUnavailable) as down:
        list(chat.stream("down #status=503"))
    assert (down.value.status, down.value.code) == (503, "upstream_unavailable")


def test_context_too_long_is_its_own_error_not_an_outage(chat: ChatClient) -> None:
    with pytest.raises(ContextTooLong) as refused:
        list(chat.stream("too long #context=llamacpp #window=10"))
    assert (refused.value.status, refused.value.code) == (400, "context_too_long")
    assert "new conversation" in refused.value.message
    assert not isinstance(refused.value, UpstreamUnavailable)


def test_a_provider_refusal_is_upstream_rejected(chat: ChatClient) -> None:
    with pytest.raises(UpstreamRejected) as refused:
        list(chat.stream("bad key #status=401"))
    assert (refused.value.status, refused.value.code) == (502, "upstream_rejected")


def test_metadata_says_how_many_turns_were_left_out(server_factory: ServerFactory) -> None:
    server = server_factory(MODEL_CONTEXT_WINDOW="400", MAX_COMPLETION_TOKENS="100")
    with ChatClient(server.url) as client:
        first, *_ = list(client.stream("left out 1 #tokens=60"))
        assert isinstance(first, Metadata) and first.omitted_turns == 0
        conversation = first.conversation_id
        list(client.stream("left out 2 #tokens=60", conversation))
        third, *_ = list(client.stream("left out 3 #tokens=60", conversation))
    assert isinstance(third, Metadata) and third.omitted_turns == 2
    assert first.request_id is not None and len(first.request_id) == 32  # the service's id, to quote in a report


def test_error_event_is_yielded_and_ends_the_stream(chat: ChatClient) -> None:
    events = list(chat.stream("breaks #tokens=5 #fail_after=2"))
    assert [type(event) for event in events] == [Metadata, Token, Token, StreamError]
    error = events[-1]
    assert isinstance(error, StreamError) and (error.code, error.retryable) == ("upstream_error", True)


def test_unknown_event_types_are_ignored() -> None:
    assert parse_event({"type": "a_future_kind", "content": "hm"}) is None
    assert parse_event({"type": "token", "content": "a", "extra": 1}) == Token("a")


def test_dropped_connection_resumes_with_last_event_id_without_duplicates(server: GunicornServer) -> None:
    proxy = Proxy(server.port, cut_in_token=4)
    try:
        with ChatClient(proxy.url, backoff=0.05) as client:
            events = list(client.stream("dropped #tokens=10 #delay=0.1"))
    finally:
        proxy.close()
    metadata, done = events[0], events[-1]
    assert isinstance(metadata, Metadata) and isinstance(done, Done)
    assert [event.content for event in events if isinstance(event, Token)] == words(10)
    assert len(events) == 12 and done.usage.completion_tokens == 10
    resumes = [head for head in proxy.heads if head.startswith(f"GET /api/v1/ai/chat/stream/{metadata.stream_id} ")]
    assert len(resumes) == 1
    assert f"last-event-id: {metadata.stream_id}:3" in resumes[0].lower()


def test_a_real_drop_resumes_the_rest_of_the_reply_within_the_grace(server_factory: ServerFactory) -> None:
    """The server sees its client go; generation goes on for RESUME_GRACE_SECONDS, and the client's resume gets the
    rest: the whole reply, each token once."""
    server = server_factory(RESUME_GRACE_SECONDS="10")
    proxy = Proxy(server.port, cut_in_token=4, cut_both=True)
    try:
        with ChatClient(proxy.url, backoff=0.3) as client:
            events = list(client.stream("really dropped #tokens=20 #delay=0.05"))
    finally:
        proxy.close()
    metadata, done = events[0], events[-1]
    assert isinstance(metadata, Metadata) and isinstance(done, Done)
    assert "".join(event.content for event in events if isinstance(event, Token)) == "".join(
        (WORDS * 2)[index] if index == 0 else " " + (WORDS * 2)[index] for index in range(20)
    )
    assert len(events) == 22 and done.usage.completion_tokens == 20
    resumes = [head for head in proxy.heads if head.startswith(f"GET /api/v1/ai/chat/stream/{metadata.stream_id} ")]
    assert len(resumes) == 1


def test_falls_back_to_chat_when_the_stream_cannot_start(server: GunicornServer) -> None:
    proxy = Proxy(server.port, refuse_stream=True)
    try:
        with ChatClient(proxy.url, backoff=0.05) as client:
            events = list(client.stream("fallback #tokens=4"))
    finally:
        proxy.close()
    assert [head.split(" HTTP")[0] for head in proxy.heads] == ["POST /api/v1/ai/chat/stream", "POST /api/v1/ai/chat"]
    assert [type(event) for event in events] == [Metadata, Token, Done]
    metadata, token, done = events
    assert isinstance(metadata, Metadata) and metadata.stream_id == "" and uuid.UUID(metadata.conversation_id)
    assert token == Token("Baby sleep patterns change")
    assert isinstance(done, Done) and (done.finish_reason, done.usage.completion_tokens) == ("stop", 4)


def test_the_fallback_passes_reasoning_on(server: GunicornServer) -> None:
    proxy = Proxy(server.port, refuse_stream=True)
    try:
        with ChatClient(proxy.url, backoff=0.05) as client:
            events = list(client.stream("fallback thinking #reasoning=2 #tokens=2"))
    finally:
        proxy.close()
    assert [type(event) for event in events] == [Metadata, Reasoning, Token, Done]
    assert events[1] == Reasoning("Let me") and events[2] == Token("Baby sleep")


def test_unreachable_service_raises_connection_failed() -> None:
    with (
        ChatClient(f"http://127.0.0.1:{free_port()}", max_retries=1, backoff=0.01) as client,
        pytest.raises(ConnectionFailed) as failed,
    ):
        list(client.stream("anyone there?"))
    assert failed.value.code == "connection_failed" and failed.value.status is None


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service.client", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_cli_prints_the_reply_and_exits_0(server: GunicornServer) -> None:
    done = run_cli("--url", server.url, "hi #tokens=3")
    assert (done.returncode, done.stdout, done.stderr) == (0, "Baby sleep patterns\n", "")


def test_cli_json_prints_one_event_per_line(server: GunicornServer) -> None:
    done = run_cli("--url", server.url, "--json", "hi #tokens=2")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0
    assert [line["type"] for line in lines] == ["metadata", "token", "token", "done"]


def test_cli_into_a_closed_pipe_exits_quietly(server: GunicornServer) -> None:
    """``python -m service.client --json ... | head -1``: the reader leaves after one line."""
    command = [sys.executable, "-m", "service.client", "--url", server.url, "--json", "piped #tokens=40 #delay=0.01"]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()
        stderr = process.stderr.read().decode()
        code = process.wait(30)
    assert json.loads(first)["type"] == "metadata"
    assert (code, stderr) == (0, "")


def test_cli_context_too_long_says_what_to_do(server: GunicornServer) -> None:
    failed = run_cli("--url", server.url, "huge #context=openai #window=10")
    assert failed.returncode == 1
    assert "Start a new conversation" in failed.stderr and "try again shortly" not in failed.stderr


def test_cli_error_event_exits_1_with_a_sentence(server: GunicornServer) -> None:
    failed = run_cli("--url", server.url, "hi #tokens=5 #fail_after=1")
    assert failed.returncode == 1 and failed.stdout == "Baby\n"
    assert failed.stderr.strip().endswith(".") and "\n" not in failed.stderr.strip()
