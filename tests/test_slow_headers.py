"""Requests that never finish arriving: a head that stops half way is closed within REQUEST_READ_TIMEOUT_SECONDS
whatever GUNICORN_KEEPALIVE says (10,000 at once, while a normal stream on the same worker runs at full speed); a
body sent a byte at a time gets 408 (or is served, when it arrives in time); oversized heads are refused with 431,
never a hang or a 500."""

from __future__ import annotations

import contextlib
import itertools
import json
import resource
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.servers import GunicornServer
from tests.sse import read_events
from tests.test_guards_live import wait_for

STREAM = "/api/v1/ai/chat/stream"
FLOOD = 10_000
TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8  # linux/tcp_states.h


def address(server: GunicornServer) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def closed_by_server(sock: socket.socket) -> bool:
    """The server closed or reset the connection (the kernel's TCP state), whatever is still unread."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in (TCP_CLOSE, TCP_CLOSE_WAIT)


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE (the server started after this inherits it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def timed_stream(server: GunicornServer, message: str) -> tuple[float, float, list[str]]:
    """The whole stream's seconds, the longest gap between two token events, and the event types."""
    started = time.monotonic()
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", server.url + STREAM, json={"message": message}) as response,
    ):
        assert response.status_code == 200
        events = list(read_events(response))
    tokens = [event.at for event in events if event.type == "token"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(tokens)]
    return time.monotonic() - started, max(gaps, default=0.0), [event.type for event in events]


# Run in a process of its own, so that the test's process (and the scripted upstream in it) keeps few descriptors.
# It prints when all are open, then when the server closed the first and the last (CLOCK_MONOTONIC, system-wide).
HALF_OPEN = """
import socket, sys, time
host, port, count, within = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sockets = []
for index in range(count):
    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nX-Half: %d" % index)  # and never the rest
    sockets.append(sock)
opened = time.monotonic()
print("opened", flush=True)
def closed(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in (7, 8)  # TCP_CLOSE, TCP_CLOSE_WAIT
waiting, first = sockets, None
while waiting and time.monotonic() - opened < within:
    waiting = [sock for sock in waiting if not closed(sock)]
    if first is None and len(waiting) < count:
        first = time.monotonic()
    time.sleep(0.02)
print("closed", count - len(waiting), first, time.monotonic(), flush=True)
"""
READ_TIMEOUT = 15


def test_ten_thousand_unfinished_heads_are_closed_and_a_stream_runs_at_full_speed_meanwhile(
    server_factory: ServerFactory,
) -> None:
    limit = raise_open_files(FLOOD + 1_000)  # the server and the flooding process inherit it
    flood = min(FLOOD, limit - 1_000)
    assert flood >= 2_000, f"only {limit} open files allowed"
    server = server_factory(
        GUNICORN_KEEPALIVE="0",  # gunicorn alone would wait for these heads forever
        REQUEST_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT),
        GUNICORN_WORKER_CONNECTIONS=str(flood + 100),
        GUNICORN_BACKLOG=str(flood),
        TOKEN_BUDGET="1000000000/hour",
    )
    timed_stream(server, "warm up #tokens=50")
    baseline = [timed_stream(server, f"alone {index} #tokens=3000") for index in range(3)]
    host, port = address(server)
    with subprocess.Popen(
        [sys.executable, "-c", HALF_OPEN, host, str(port), str(flood), str(READ_TIMEOUT + 30)],
        stdout=subprocess.PIPE,
        text=True,
    ) as flooding:
        assert flooding.stdout is not None
        assert flooding.stdout.readline().strip() == "opened"
        # the worker accepts in order: once this is answered, every half-open connection is accepted and held
        assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200
        accepted = time.monotonic()
        during = [timed_stream(server, f"during {index} #tokens=3000") for index in range(3)]
        measured = time.monotonic()
        _, count, first_closed, last_closed = flooding.stdout.readline().split()
    assert int(count) == flood, f"the server closed {count} of the {flood} half-open connections"
    assert measured < float(first_closed), "the streams were not measured while the heads were held"
    # full speed: as fast as the same stream alone, and no token held up
    assert all(types[-1] == "done" for _, _, types in during)
    fastest_alone = min(seconds for seconds, _, _ in baseline)
    assert min(seconds for seconds, _, _ in during) < fastest_alone * 2 + 0.25, (baseline, during)
    assert min(gap for _, gap, _ in during) < 0.25, (baseline, during)
    # every half-open connection was closed by the server, the read timeout after it was accepted
    assert float(last_closed) - accepted < READ_TIMEOUT + 5, (accepted, first_closed, last_closed)
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    assert "Traceback" not in server.log_path.read_text()


def test_a_kept_alive_connection_waits_the_keepalive_time_but_a_started_head_only_the_read_timeout(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(GUNICORN_KEEPALIVE="3600", REQUEST_READ_TIMEOUT_SECONDS="1")
    with socket.create_connection(address(server), timeout=10) as sock:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request)
        assert response_of(sock, within=5).startswith(b"HTTP/1.1 200")
        time.sleep(2)  # idle longer than the read timeout: the keep-alive time holds
        assert not closed_by_server(sock)
        sock.sendall(request)
        assert response_of(sock, within=5).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a head that stops half way
        began = time.monotonic()
        assert wait_for(lambda: closed_by_server(sock), timeout=5)
        # the server's clock for the head starts at its first byte, a moment before ``began``
        assert 0.9 <= time.monotonic() - began < 3


def post_stream_head(length: int) -> bytes:
    return (
        f"POST {STREAM} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def response_of(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes the connection, ends a chunked body, or ``within`` passes."""
    sock.settimeout(within)
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        received += chunk
        if not chunk or received.endswith(b"\r\n0\r\n\r\n") or _complete_sized(received):
            break
    return received


def _complete_sized(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def test_a_body_sent_a_byte_at_a_time_gets_408_after_the_read_timeout(server_factory: ServerFactory) -> None:
    server = server_factory(REQUEST_READ_TIMEOUT_SECONDS="2")
    body = json.dumps({"message": "slowly #tokens=3"}).encode()
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(post_stream_head(len(body)))
        began = time.monotonic()
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.5)
            if time.monotonic() - began > 2.5:
                break
        answer = response_of(sock, within=5)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert 2 <= time.monotonic() - began < 6


def test_a_body_sent_a_byte_at_a_time_within_the_read_timeout_is_served(server_factory: ServerFactory) -> None:
    server = server_factory(REQUEST_READ_TIMEOUT_SECONDS="5")
    body = json.dumps({"message": "trickled #tokens=3"}).encode()
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(post_stream_head(len(body)))
        for byte in body:
            sock.sendall(bytes([byte]))
            time.sleep(0.02)
        answer = response_of(sock, within=10)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"type":"done"' in answer


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Big", "a" * 65_536)],
        [(f"X-Many-{index}", "b" * 500) for index in range(131)],
        [("Last-Event-ID", "0" * 1_048_576)],
    ],
    ids=["one-64KB-header", "64KB-of-headers", "1MB-Last-Event-ID"],
)
def test_oversized_heads_are_refused_at_once(server: GunicornServer, headers: list[tuple[str, str]]) -> None:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    with socket.create_connection(address(server), timeout=10) as sock:
        began = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before it was all sent
            sock.sendall(f"GET {STREAM}/{'a' * 32} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
        answer = response_of(sock, within=5)
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 431), answer[:200]
    assert time.monotonic() - began < 3
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200


def test_a_long_last_event_id_within_the_header_limit_gets_a_json_400(server: GunicornServer) -> None:
    response = httpx.get(f"{server.url}{STREAM}/{'a' * 32}", headers={"Last-Event-ID": "a" * 8_000}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
