"""60 WebSockets abandoned in every way through real gunicorn; then descriptors, watchers, streams, slots, database
sessions and upstream connections are back where they started."""

from __future__ import annotations

import threading
import time

from tests.conftest import ServerFactory
from tests.fake_upstream import FakeUpstream
from tests.test_no_leaks import GAUGES, SECRET, gauges, headers
from tests.ws import chat, connect, next_frame, send, until_end

WAYS = ("before_first", "mid_stream", "after_done", "cancelled", "bad_frames", "idle_timeout")


def _abandon(url: str, index: int, way: str) -> None:
    client = connect(url, headers=headers(f"ws-leak-{way}-{index}"))
    try:
        if way == "before_first":
            send(client, {"type": "chat", "message": f"ws leak {way} {index} #first_delay=30"})
            time.sleep(0.3)
        elif way == "mid_stream":
            send(client, {"type": "chat", "message": f"ws leak {way} {index} #tokens=20 #silence=30"})
            next_frame(client), next_frame(client)  # the metadata and the first token
        elif way == "after_done":
            chat(client, f"ws leak {way} {index} #tokens=3")
        elif way == "cancelled":
            send(client, {"type": "chat", "message": f"ws leak {way} {index} #tokens=20 #silence=30"})
            next_frame(client)
            send(client, {"type": "cancel"})
            until_end(client)
        elif way == "bad_frames":
            client.send(b"\x00binary")
            client.send("not json")
            next_frame(client), next_frame(client)
        else:
            chat(client, f"ws leak {way} {index} #tokens=5 #silence=30")  # ends idle_timeout after 1 s
    finally:
        client.close()


def test_60_abandoned_websockets_leave_nothing_behind(server_factory: ServerFactory, upstream: FakeUpstream) -> None:
    server = server_factory(STREAM_IDLE_TIMEOUT="1", JWT_SECRET=SECRET, RATE_LIMIT="100/minute")
    for index in range(10):  # the database pool and the SDK's pools at their steady size: not leaks
        _abandon(server.url, 1000 + index, "after_done")

    def settled_gauges() -> dict[str, float]:
        _abandon(server.url, 2000 + int(time.monotonic() * 1000) % 100000, "after_done")
        time.sleep(0.2)
        return gauges(server)

    time.sleep(0.5)
    baseline = settled_gauges()
    errors: list[BaseException] = []

    def run(index: int, way: str) -> None:
        try:
            _abandon(server.url, index, way)
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index, WAYS[index % len(WAYS)])) for index in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors[:3]

    def settled() -> bool:
        return all(value <= baseline[name] for name, value in settled_gauges().items())

    deadline = time.monotonic() + 10
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.25)
    after = gauges(server)
    assert all(after[name] <= baseline[name] for name in GAUGES), (baseline, after)
    assert after["chat_streams_open"] == after["chat_stream_slots_held"] == after["chat_db_sessions_open"] == 0
    assert after["chat_upstream_connections_in_use"] == 0
    leaked = [c for c in upstream.recorder.connections if c.message.startswith("ws leak ") and c.closed_at is None]
    assert leaked == []
