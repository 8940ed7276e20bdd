"""A client that drops without a cancel has RESUME_GRACE_SECONDS to come back: generation goes on meanwhile, a resume
gets the rest with nothing missing and nothing twice, and a stream nobody comes back to is closed and saved."""

from __future__ import annotations

import json
import socket
import time

import httpx

from tests.conftest import ServerFactory
from tests.fake_upstream import WORDS, FakeUpstream
from tests.servers import GunicornServer
from tests.sse import open_raw_stream, read_events
from tests.test_guards_live import wait_for

STREAM = "/api/v1/ai/chat/stream"


def reply(count: int) -> str:
    return "".join(word if index == 0 else " " + word for index, word in enumerate((WORDS * 10)[:count]))


def drop_after(base_url: str, message: str, tokens: int) -> tuple[str, int, str]:
    """Start a stream on a plain socket, read until ``tokens`` token events are in, then hang up (a real drop: the
    server sees the connection end); (stream id, last sequence seen, text seen)."""
    sock, buffer = open_raw_stream(base_url, {"message": message})
    try:
        return read_until_tokens(sock, buffer, tokens)
    finally:
        sock.close()


def read_until_tokens(sock: socket.socket, buffer: bytes, tokens: int) -> tuple[str, int, str]:
    """Read the raw stream until ``tokens`` token events are in; (stream id, last sequence, text so far)."""
    buffer = buffer.split(b"\r\n\r\n", 1)[1]
    while buffer.count(b'"type":"token"') < tokens:
        chunk = sock.recv(65536)
        assert chunk, buffer
        buffer += chunk
    events = [block for block in buffer.split(b"\n\n") if b"data: " in block]
    complete = [block for block in events if block.rstrip().endswith(b"}")]
    ids = [line.split(b" ", 1)[1].decode() for block in complete for line in block.split(b"\n") if line[:3] == b"id:"]
    stream_id, last = ids[-1].split(":")
    texts = [
        json.loads(line[6:]).get("content", "")
        for block in complete
        for line in block.split(b"\n")
        if line.startswith(b"data: ")
    ]
    return stream_id, int(last), "".join(texts)


def saved_reply(server: GunicornServer, title: str) -> dict[str, object] | None:
    listed = httpx.get(f"{server.url}/api/v1/ai/conversations").json()["conversations"]
    found = [item for item in listed if item["title"].startswith(title)]
    if not found:
        return None
    messages = httpx.get(f"{server.url}/api/v1/ai/conversations/{found[0]['id']}").json()["messages"]
    return messages[-1] if len(messages) == 2 else None  # type: ignore[no-any-return]


def test_a_dropped_client_resumes_the_rest_with_nothing_missing_or_twice(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    server = server_factory(RESUME_GRACE_SECONDS="5")
    stream_id, last, before = drop_after(server.url, "comes back #tokens=30 #delay=0.05", 5)
    time.sleep(0.5)  # generation goes on meanwhile
    connection = upstream.connection_for("comes back")
    assert connection.closed_at is None
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "GET", f"{server.url}{STREAM}/{stream_id}", headers={"Last-Event-ID": f"{stream_id}:{last}"}
        ) as resumed,
    ):
        events = list(read_events(resumed))
    sequences = [int(str(event.id).split(":")[1]) for event in events]
    assert sequences == list(range(last + 1, 32))
    after = "".join(str(event.data.get("content", "")) for event in events if event.type == "token")
    assert before + after == reply(30)
    assert events[-1].type == "done"
    assert wait_for(lambda: saved_reply(server, "comes back") is not None, 5)
    saved = saved_reply(server, "comes back")
    assert saved is not None and (saved["status"], saved["content"]) == ("complete", reply(30))


def test_nobody_comes_back_the_upstream_is_closed_after_the_grace_and_the_partial_saved(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    server = server_factory(RESUME_GRACE_SECONDS="1")
    drop_after(server.url, "never back #tokens=400 #delay=0.02", 3)
    dropped = time.monotonic()
    connection = upstream.connection_for("never back")
    assert wait_for(lambda: connection.closed_at is not None, 5), "the upstream request was never closed"
    assert connection.closed_at is not None
    assert 0.9 <= connection.closed_at - dropped <= 2.0
    assert wait_for(lambda: saved_reply(server, "never back") is not None, 5)
    saved = saved_reply(server, "never back")
    assert saved is not None and saved["status"] == "incomplete"
    assert str(saved["content"]) == reply(connection.tokens_sent)[: len(str(saved["content"]))]
    assert len(str(saved["content"]).split()) >= 20  # generated during the grace, not just what the client saw


def test_a_cancel_during_the_grace_closes_the_upstream_within_1s(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    server = server_factory(RESUME_GRACE_SECONDS="30")
    stream_id, _, _ = drop_after(server.url, "cancel detached #tokens=400 #delay=0.05", 2)
    time.sleep(0.3)
    connection = upstream.connection_for("cancel detached")
    assert connection.closed_at is None
    cancelled = time.monotonic()
    assert httpx.delete(f"{server.url}{STREAM}/{stream_id}").status_code == 204
    assert wait_for(lambda: connection.closed_at is not None, 2)
    assert connection.closed_at is not None and connection.closed_at - cancelled < 1.0


def test_a_silent_model_still_notices_the_drop_and_a_reader_holds_the_stream_open(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    """No write fails while the model is quiet: the watchdog sees the hang-up on the socket itself and starts the
    grace. A reader that comes back holds the stream open past the grace; once it leaves too, the grace starts
    again and the upstream is closed when it runs out."""
    server = server_factory(RESUME_GRACE_SECONDS="1.5", HEARTBEAT_SECONDS="0.5")
    stream_id, _, _ = drop_after(server.url, "quiet drop #tokens=4 #silence=30", 1)
    time.sleep(0.3)
    connection = upstream.connection_for("quiet drop")
    assert connection.closed_at is None
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", f"{server.url}{STREAM}/{stream_id}", headers={"Last-Event-ID": f"{stream_id}:0"}) as r,
    ):
        events = read_events(r)  # kept: a dropped iterator would close the connection
        first = next(events)
        assert (first.type, first.data["content"]) == ("token", "Baby")
        time.sleep(2.0)  # past the grace, but a reader is attached
        assert connection.closed_at is None
    left = time.monotonic()
    assert wait_for(lambda: connection.closed_at is not None, 5)
    assert connection.closed_at is not None and 1.0 <= connection.closed_at - left <= 3.5
