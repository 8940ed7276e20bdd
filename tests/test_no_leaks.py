"""300 streams abandoned in every way through real gunicorn; then everything is back where it started."""

from __future__ import annotations

import re
import socket
import threading
import time

import httpx
import jwt

from tests.conftest import ServerFactory
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer
from tests.sse import raw_stream

SECRET = "leak-test-secret-that-is-long-enough"
GAUGES = (
    "chat_process_open_fds",  # less the idle keep-alive connections the SDK's pools hold (see gauges)
    "chat_process_event_loop_watchers",
    "chat_streams_open",
    "chat_stream_slots_held",
    "chat_db_sessions_open",
    "chat_upstream_connections_in_use",
)


def gauges(server: GunicornServer) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = {name: float(value) for name, value in re.findall(r"^(chat_\w+) ([0-9.e+-]+)$", text, re.MULTILINE)}
    # a pooled keep-alive connection to the upstream is an fd held on purpose (bounded by the pool, reused by the
    # next request); one that is lost would not be in the pool, so it still shows
    found["chat_process_open_fds"] -= found["chat_upstream_connections_pooled"]
    return {name: found[name] for name in GAUGES}


def headers(user: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, "HS256")}


def read_until(sock: socket.socket, marker: bytes, timeout: float = 20) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _abandon(server: GunicornServer, index: int, way: str) -> None:
    user = headers(f"leak-{way}-{index}")
    scripts = {
        "before_first": "#first_delay=30",
        "mid_stream": "#tokens=20 #silence=30",
        "after_done": "#tokens=3",
        "idle_timeout": "#tokens=5 #silence=30",
        "budget": "#tokens=300 #delay=0.005",
    }
    sock = raw_stream(server.url, {"message": f"leak {way} {index} {scripts[way]}"}, user)
    try:
        if way == "before_first":
            time.sleep(0.3)
        elif way == "mid_stream":
            read_until(sock, b'"type":"token"')
        else:
            read_until(sock, b'"type":"done"' if way == "after_done" else b'"type":"error"')
    finally:
        sock.close()


def test_300_abandoned_streams_leave_nothing_behind(server_factory: ServerFactory, upstream: FakeUpstream) -> None:
    server = server_factory(STREAM_IDLE_TIMEOUT="1", TOKEN_BUDGET="30/hour", JWT_SECRET=SECRET, RATE_LIMIT="100/minute")
    warm_up = [
        threading.Thread(target=_abandon, args=(server, index, "after_done")) for index in range(1000, 1030)
    ]  # fills the database pool to its steady size first: pooled connections are not leaks
    for thread in warm_up:
        thread.start()
    for thread in warm_up:
        thread.join(30)
    probes: list[int] = []

    def settled_gauges() -> dict[str, float]:
        """Gauges after one short stream: the SDK's pool drops keep-alive connections that the upstream has
        closed when it next hands one out, as it would in service, so each reading holds exactly one."""
        _abandon(server, 2000 + len(probes), "after_done")
        probes.append(1)
        time.sleep(0.2)
        return gauges(server)

    time.sleep(0.5)
    baseline = settled_gauges()
    ways = ["before_first", "mid_stream", "after_done", "idle_timeout", "budget"]
    errors: list[BaseException] = []

    def run(index: int, way: str) -> None:
        try:
            _abandon(server, index, way)
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index, ways[index % 5])) for index in range(300)]
    for thread in threads:
        thread.start()
    peak_open = 0.0
    deadline = time.monotonic() + 5
    while peak_open <= 50 and time.monotonic() < deadline:
        peak_open = max(peak_open, gauges(server)["chat_streams_open"])
        time.sleep(0.05)
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert peak_open > 50  # they really were open at the same time

    def settled() -> bool:
        return all(value <= baseline[name] for name, value in settled_gauges().items())

    deadline = time.monotonic() + 10
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.25)
    after = gauges(server)
    assert all(after[name] <= baseline[name] for name in GAUGES), (baseline, after)
    assert after["chat_streams_open"] == after["chat_stream_slots_held"] == after["chat_db_sessions_open"] == 0
    assert after["chat_upstream_connections_in_use"] == 0
    leaked = [c for c in upstream.recorder.connections if c.message.startswith("leak ") and c.closed_at is None]
    assert leaked == []
