"""Clients that stop reading: a stream's own client is cut after SEND_TIMEOUT_SECONDS and the stream ends
``client_stalled`` (upstream closed, slot released, partial reply saved); the longest-stream limit holds while a
write waits; a resumed reader that falls behind is let go with ``reader_behind``. Meanwhile the worker serves
other streams at full speed (measured against a baseline)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx

from tests.conftest import ServerFactory
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer
from tests.sse import read_events, stream
from tests.test_guards_live import wait_for

STREAM = "/api/v1/ai/chat/stream"
SMALL_BUFFER = 4096
STALLED = 5
TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8  # linux/tcp_states.h


def start(server_factory: ServerFactory, **env: str) -> GunicornServer:
    """A service whose token budget is no limit here: these streams are long on purpose."""
    return server_factory(TOKEN_BUDGET="1000000000/hour", **env)


def stalled_client(server: GunicornServer, message: str, path: str = STREAM, last_event_id: str = "") -> socket.socket:
    """A connection with a 4 KB receive buffer that sends a request; the caller then reads as little as it likes."""
    parts = urlsplit(server.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.settimeout(30)
    sock.connect((parts.hostname, parts.port))
    if path == STREAM:
        payload = json.dumps({"message": message}).encode()
        head = f"POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    else:
        payload = b""
        head = f"GET {path} HTTP/1.1\r\n" + (f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else "")
    sock.sendall(f"{head}Host: {parts.netloc}\r\n\r\n".encode() + payload)
    return sock


def read_metadata(sock: socket.socket) -> dict[str, str]:
    """Read just up to the metadata event (the first one) and return it."""
    buffer = b""
    while b'"type":"metadata"' not in buffer or not re.search(rb'"type":"metadata"[^\n]*\n', buffer):
        chunk = sock.recv(1024)
        assert chunk, buffer
        buffer += chunk
    line = re.search(rb'data: (\{"type":"metadata"[^\n]*)\n', buffer)
    assert line is not None, buffer
    return json.loads(line.group(1))  # type: ignore[no-any-return]


def read_to_end(sock: socket.socket, within: float, received: bytes = b"") -> bytes:
    """Everything until the response's last chunk or until the server closes or resets the connection; fails if
    neither came within ``within`` seconds."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            received += chunk
            if not chunk or received.endswith(b"\r\n0\r\n\r\n"):
                return received
    except ConnectionResetError:
        return received
    raise AssertionError(f"the connection was still open after {within} s")


def dechunked(response: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 response."""
    body, rest = b"", response.split(b"\r\n\r\n", 1)[1]
    while rest:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2 :]
    return body


def closed_by_server(sock: socket.socket) -> bool:
    """The server reset or closed the connection (the kernel's TCP state), whatever is still unread."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state in (TCP_CLOSE, TCP_CLOSE_WAIT)


def ended(server: GunicornServer, outcome: str) -> float:
    """``chat_streams_ended_total`` for ``outcome`` (0 when none yet)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    pattern = rf'^chat_streams_ended_total\{{[^}}]*outcome="{outcome}"[^}}]*\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


def saved_assistant_message(server: GunicornServer, conversation_id: str) -> dict[str, object]:
    messages = httpx.get(f"{server.url}/api/v1/ai/conversations/{conversation_id}", timeout=10).json()["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant"]
    return messages[1]  # type: ignore[no-any-return]


def timed_stream(server: GunicornServer, message: str) -> tuple[float, list[str]]:
    """Seconds a whole stream took, and its event types."""
    started = time.monotonic()
    events = stream(server.url, {"message": message})
    return time.monotonic() - started, [event.type for event in events]


def test_a_client_that_stops_reading_is_cut_and_its_stream_ends_client_stalled(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    # an idle timeout shorter than the send timeout: a write that waits must not be blamed on the model
    server = start(
        server_factory, SEND_TIMEOUT_SECONDS="2", STREAM_IDLE_TIMEOUT="1", MAX_STREAMS_PER_USER="1", LOG_LEVEL="info"
    )
    sock = stalled_client(server, "stops reading #tokens=100000")
    try:
        metadata = read_metadata(sock)
        stopped_reading = time.monotonic()
        assert wait_for(lambda: upstream.connection_for("stops reading").closed_at is not None, timeout=10)
        upstream_closed = upstream.connection_for("stops reading").closed_at
        assert upstream_closed is not None
        assert 2 <= upstream_closed - stopped_reading < 6, upstream_closed - stopped_reading
        assert not upstream.connection_for("stops reading").completed
        read_to_end(sock, within=10)  # the server closed (reset) the connection: nothing holds it open
    finally:
        sock.close()
    # the slot is free again (one stream per user here), the reply so far is saved, the outcome names the client
    assert wait_for(lambda: ended(server, "client_stalled") == 1, timeout=5)
    assert ended(server, "idle_timeout") == 0
    _, types = timed_stream(server, "after the stall #tokens=5")
    assert types[-1] == "done"
    message = saved_assistant_message(server, metadata["conversationId"])
    assert message["status"] == "incomplete"
    assert str(message["content"]).startswith("Baby sleep patterns")
    log = server.log_path.read_text()
    assert f"stream {metadata['streamId']} stopped: its client read nothing for" in log
    assert "outcome=client_stalled" in log
    assert "Traceback" not in log


def test_the_longest_stream_limit_holds_while_a_write_waits(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    server = start(server_factory, SEND_TIMEOUT_SECONDS="60", STREAM_MAX_SECONDS="2")
    sock = stalled_client(server, "capped while stuck #tokens=100000")
    try:
        read_metadata(sock)
        started = time.monotonic()
        assert wait_for(lambda: upstream.connection_for("capped while stuck").closed_at is not None, timeout=10)
        closed_at = upstream.connection_for("capped while stuck").closed_at
        assert closed_at is not None and closed_at - started < 4
        read_to_end(sock, within=10)
    finally:
        sock.close()
    assert wait_for(lambda: ended(server, "idle_timeout") == 1, timeout=5)
    assert ended(server, "client_stalled") == 0


def all_still(upstream: FakeUpstream, markers: list[str]) -> bool:
    """No upstream connection of ``markers`` sends anything for half a second: their streams all wait."""
    before = [upstream.connection_for(marker).tokens_sent for marker in markers]
    time.sleep(0.5)
    return before == [upstream.connection_for(marker).tokens_sent for marker in markers]


def test_stalled_clients_do_not_slow_the_other_streams(server_factory: ServerFactory, upstream: FakeUpstream) -> None:
    server = start(server_factory, SEND_TIMEOUT_SECONDS="30", MAX_STREAMS_PER_USER="100")
    timed_stream(server, "warm up #tokens=50")
    baseline = min(timed_stream(server, f"baseline {index} #tokens=2000")[0] for index in range(3))
    stalled = [stalled_client(server, f"stalls {index} #tokens=100000") for index in range(STALLED)]
    try:
        for sock in stalled:
            read_metadata(sock)
        # each stalled stream fills its connection's buffers (megabytes) and then waits on its write
        assert wait_for(lambda: all_still(upstream, [f"stalls {index}" for index in range(STALLED)]), timeout=60)
        during = [timed_stream(server, f"during {index} #tokens=2000") for index in range(3)]
        assert all(types[-1] == "done" for _, types in during)
        assert min(seconds for seconds, _ in during) < baseline * 1.5 + 0.2, (baseline, during)
        assert all(upstream.connection_for(f"stalls {index}").closed_at is None for index in range(STALLED))
    finally:
        for sock in stalled:
            sock.close()


def test_a_reader_whose_backlog_write_outlasts_the_stream_still_gets_its_end(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    """A follower joins while the model is silent, with a 6 MB backlog (more than the socket buffers hold), and
    reads nothing until the stream has ended: once it reads, it gets the backlog, the tokens that came meanwhile and
    ``done``, not a body that stops after the backlog."""
    server = start(server_factory, SEND_TIMEOUT_SECONDS="60")
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", server.url + STREAM, json={"message": "long first #big=6000000 #tokens=3 #silence=2"}
        ) as owner,
    ):
        events = read_events(owner)
        stream_id = next(events).data["streamId"]
        assert next(events).type == "token"  # the 6 MB token is out; the model is silent for 2 s
        follower = stalled_client(server, "", f"{STREAM}/{stream_id}", f"{stream_id}:0")
        try:
            assert [event.type for event in events] == ["token", "token", "done"]
            received = read_to_end(follower, within=20)
        finally:
            follower.close()
    blocks = [block for block in dechunked(received).split(b"\n\n") if block]
    assert [re.search(rb'"type":"(\w+)"', block)[1] for block in blocks[1:]] == [  # type: ignore[index]
        b"token",
        b"token",
        b"token",
        b"done",
    ]
    assert blocks[-1].startswith(f"id: {stream_id}:4\n".encode())


def test_a_reader_that_falls_behind_is_let_go_and_the_stream_goes_on(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    server = start(server_factory, SEND_TIMEOUT_SECONDS="60", RESUME_GRACE_SECONDS="5")
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", server.url + STREAM, json={"message": "followed #tokens=100000"}) as owner,
    ):
        events = read_events(owner)
        stream_id = next(events).data["streamId"]
        follower = stalled_client(server, "", f"{STREAM}/{stream_id}", f"{stream_id}:0")
        try:
            head = follower.recv(256)  # then it stops reading while the owner takes everything
            owner_types = [event.type for event in events]
            assert owner_types[-1] == "done"
            received = read_to_end(follower, within=10, received=head)  # reads again: what was in flight, the cut
        finally:
            follower.close()
    blocks = [block for block in dechunked(received).split(b"\n\n") if block]
    assert b'"type":"token"' in blocks[-2] and b'"type":"done"' not in received
    last = blocks[-1]
    assert not last.startswith(b"id:")  # its last event id stays the last token it got: it resumes from there
    error = json.loads(last.removeprefix(b"data: "))
    assert error["type"] == "error" and error["error"]["code"] == "reader_behind" and error["error"]["retryable"]
    # resuming from the last event it got replays the rest, to the end
    last_id = blocks[-2].split(b"\n")[0].removeprefix(b"id: ").decode()
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", f"{server.url}{STREAM}/{stream_id}", headers={"Last-Event-ID": last_id}) as resumed,
    ):
        rest = list(read_events(resumed))
    assert rest[0].id == f"{stream_id}:{int(last_id.split(':')[1]) + 1}" and rest[-1].type == "done"


def test_a_resumed_reader_that_stops_reading_is_cut_after_the_send_timeout(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    server = start(server_factory, SEND_TIMEOUT_SECONDS="2", RESUME_GRACE_SECONDS="5", LOG_LEVEL="info")
    owner_types: list[str] = []
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", server.url + STREAM, json={"message": "read by two #tokens=100000"}) as owner,
    ):
        events = read_events(owner)
        stream_id = next(events).data["streamId"]
        reading = threading.Thread(target=lambda: owner_types.extend(event.type for event in events))
        reading.start()  # the owner reads everything, at full speed
        follower = stalled_client(server, "", f"{STREAM}/{stream_id}", f"{stream_id}:0")
        try:
            follower.recv(256)
            stopped_reading = time.monotonic()
            # the follower never reads again: the server resets it while the owner goes on
            assert wait_for(lambda: closed_by_server(follower), timeout=20)
            assert time.monotonic() - stopped_reading >= 2
        finally:
            follower.close()
            reading.join(60)
    assert owner_types[-1] == "done"
    assert upstream.connection_for("read by two").completed
    assert "a stream's reader read nothing for 2 s: its connection is closed" in server.log_path.read_text()
