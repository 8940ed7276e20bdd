"""Every way the model provider can fail, through real gunicorn (gevent worker) against the scripted upstream.

Each fault ends in the protocol's event or status, the reply so far is saved, and everything the stream held is
let go: the upstream sees its connection closed and the worker's stream, slot, database and upstream gauges (the
ones ``tests/test_no_leaks.py`` reads) are back at zero.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, _server_env
from tests.fake_upstream import ODD_CHUNKS, Connection, FakeUpstream
from tests.servers import GunicornServer, free_port
from tests.sse import Received, stream
from tests.test_no_leaks import gauges

STREAM = "/api/v1/ai/chat/stream"
IDLE_TIMEOUT = 2.0  # STREAM_IDLE_TIMEOUT of the service under test: the longest the model may stay silent


@pytest.fixture(scope="module")
def faulty(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One service for the faults, with a short idle timeout and a token budget no reply here can spend."""
    folder = tmp_path_factory.mktemp("faults")
    env = {
        **_server_env(upstream, f"sqlite:///{folder / 'chat.sqlite3'}"),
        "STREAM_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "TOKEN_BUDGET": "100000000/hour",
    }
    running = GunicornServer(env, folder / "gunicorn.log").start()
    yield running
    running.stop()


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def assert_released(server: GunicornServer, *connections: Connection) -> None:
    """The upstream saw each connection closed, and the worker holds no stream, slot, session or upstream
    connection any more."""

    def still_open() -> list[str]:
        return [item.message for item in connections if item.closed_at is None]

    assert eventually(lambda: not still_open()), still_open()

    def idle() -> bool:
        found = gauges(server)
        return (
            found["chat_streams_open"]
            == found["chat_stream_slots_held"]
            == found["chat_db_sessions_open"]
            == found["chat_upstream_connections_in_use"]
            == 0
        )

    assert eventually(idle), gauges(server)


def saved_reply(server: GunicornServer, events: list[Received]) -> dict[str, Any]:
    conversation_id = events[0].data["conversationId"]
    response = httpx.get(f"{server.url}/api/v1/ai/conversations/{conversation_id}", timeout=10)
    assert response.status_code == 200, response.text
    message: dict[str, Any] = response.json()["messages"][-1]
    assert message["role"] == "assistant"
    return message


def tokens(events: list[Received]) -> str:
    return "".join(event.data["content"] for event in events if event.type == "token")


def test_a_refused_connection_is_503_upstream_unavailable_after_the_retries(server_factory: ServerFactory) -> None:
    server = server_factory(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    started = time.monotonic()
    response = httpx.post(server.url + STREAM, json={"message": "nobody home"}, timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert 0.5 < elapsed < 5, "three attempts with the SDK's short backoff between them"
    assert_released(server)


def test_headers_later_than_the_idle_timeout_are_given_up_on_with_one_attempt(
    faulty: GunicornServer, upstream: FakeUpstream
) -> None:
    """A provider that accepts the request and sits on it is not asked again: the client has waited the whole
    idle timeout already, and gets ``503 upstream_unavailable`` then, not after three such waits."""
    message = "headers late #header_delay=30 #tokens=3"
    started = time.monotonic()
    response = httpx.post(faulty.url + STREAM, json={"message": message}, timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable"
    assert "did not answer" in error["message"]
    assert IDLE_TIMEOUT <= elapsed < IDLE_TIMEOUT + 1.5
    assert upstream.recorder.attempts[message] == 1
    assert_released(faulty, upstream.connection_for("headers late"))


def test_a_connection_dropped_mid_reply_ends_with_upstream_error_and_saves_the_partial_reply(
    faulty: GunicornServer, upstream: FakeUpstream
) -> None:
    events = stream(faulty.url, {"message": "break midway #tokens=8 #fail_after=3"})
    assert [event.type for event in events] == ["metadata", "token", "token", "token", "error"]
    assert events[-1].data["error"]["code"] == "upstream_error"
    assert events[-1].data["error"]["retryable"] is True
    reply = saved_reply(faulty, events)
    assert (reply["status"], reply["content"]) == ("incomplete", "Baby sleep patterns")
    assert_released(faulty, upstream.connection_for("break midway"))


def test_a_malformed_json_chunk_ends_with_upstream_error_after_the_tokens_before_it(
    faulty: GunicornServer, upstream: FakeUpstream
) -> None:
    """``#one_write``: the tokens and the bad chunk come in one network read; the tokens still go out, and are
    saved, before the error."""
    events = stream(faulty.url, {"message": "garbled #tokens=6 #malformed_after=3 #one_write"})
    assert [event.type for event in events] == ["metadata", "token", "token", "token", "error"]
    assert events[-1].data["error"]["code"] == "upstream_error"
    reply = saved_reply(faulty, events)
    assert (reply["status"], reply["content"]) == ("incomplete", "Baby sleep patterns")
    assert_released(faulty, upstream.connection_for("garbled"))


@pytest.mark.parametrize("shape", range(len(ODD_CHUNKS)))
def test_a_chunk_of_an_unknown_shape_ends_with_upstream_error_and_saves_the_partial_reply(
    faulty: GunicornServer, upstream: FakeUpstream, shape: int
) -> None:
    marker = f"odd shape {shape} {uuid.uuid4().hex[:8]}"
    events = stream(faulty.url, {"message": f"{marker} #tokens=5 #odd_after=2 #odd={shape}"})
    assert [event.type for event in events] == ["metadata", "token", "token", "error"]
    assert events[-1].data["error"]["code"] == "upstream_error"
    reply = saved_reply(faulty, events)
    assert (reply["status"], reply["content"]) == ("incomplete", "Baby sleep")
    assert_released(faulty, upstream.connection_for(marker))


def test_an_error_object_mid_stream_ends_with_upstream_error_and_saves_the_partial_reply(
    faulty: GunicornServer, upstream: FakeUpstream
) -> None:
    events = stream(faulty.url, {"message": "error object #tokens=5 #error_after=2"})
    assert [event.type for event in events] == ["metadata", "token", "token", "error"]
    assert events[-1].data["error"]["code"] == "upstream_error"
    reply = saved_reply(faulty, events)
    assert (reply["status"], reply["content"]) == ("incomplete", "Baby sleep")
    assert_released(faulty, upstream.connection_for("error object"))


def test_401_is_a_configuration_error_asked_once(faulty: GunicornServer, upstream: FakeUpstream) -> None:
    message = f"bad key {uuid.uuid4().hex[:8]} #status=401"  # the upstream counts attempts by message
    response = httpx.post(faulty.url + STREAM, json={"message": message}, timeout=30)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_rejected"
    assert "credentials" in error["message"] and "configuration" in error["message"]
    assert upstream.recorder.attempts[message] == 1
    assert_released(faulty)


def test_429_with_retry_after_is_retried_no_sooner_than_it_says(faulty: GunicornServer, upstream: FakeUpstream) -> None:
    message = "slow down #status=429x1 #retry_after=1 #tokens=3"
    events = stream(faulty.url, {"message": message})
    assert [event.type for event in events] == ["metadata", "token", "token", "token", "done"]
    assert upstream.recorder.attempts[message] == 2
    first, second = [
        item["at"]
        for item in upstream.recorder.requests
        if item["body"].get("messages", [{}])[-1].get("content") == message
    ]
    assert 1.0 <= second - first < 2.0
    assert saved_reply(faulty, events)["status"] == "complete"
    assert_released(faulty, upstream.connection_for("slow down"))


def test_429_asking_for_a_longer_wait_than_the_idle_timeout_is_passed_on_at_once(
    faulty: GunicornServer, upstream: FakeUpstream
) -> None:
    """Waiting 30 s for the provider would leave the client with nothing for 30 s: it gets the 503 at once, with
    the provider's wait to honour itself."""
    message = "come back later #status=429 #retry_after=30"
    started = time.monotonic()
    response = httpx.post(faulty.url + STREAM, json={"message": message}, timeout=60)
    assert time.monotonic() - started < 1
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    error = response.json()["error"]
    assert (error["code"], error["details"]["retryAfter"]) == ("upstream_unavailable", 30)
    assert upstream.recorder.attempts[message] == 1
    assert_released(faulty)


def test_a_1_mb_chunk_is_relayed_whole(faulty: GunicornServer, upstream: FakeUpstream) -> None:
    events = stream(faulty.url, {"message": "one huge token #big=1000000 #tokens=3"})
    assert [event.type for event in events] == ["metadata", "token", "token", "token", "done"]
    assert events[1].data["content"] == "x" * 1_000_000
    assert tokens(events) == "x" * 1_000_000 + " sleep patterns"
    reply = saved_reply(faulty, events)
    assert (reply["status"], reply["content"]) == ("complete", tokens(events))
    assert_released(faulty, upstream.connection_for("one huge token"))


def test_100_000_one_byte_chunks_are_all_relayed_in_reasonable_time(
    faulty: GunicornServer, upstream: FakeUpstream
) -> None:
    started = time.monotonic()
    events = stream(faulty.url, {"message": "many tiny #tokens=100000 #one_byte"})
    elapsed = time.monotonic() - started
    assert events[-1].type == "done"
    assert sum(1 for event in events if event.type == "token") == 100_000
    assert tokens(events) == "ab" * 50_000
    assert events[-1].data["usage"]["completionTokens"] == 100_000
    assert elapsed < 30
    reply = saved_reply(faulty, events)
    assert (reply["status"], reply["content"]) == ("complete", "ab" * 50_000)
    assert_released(faulty, upstream.connection_for("many tiny"))


def test_a_body_left_open_after_done_still_ends_the_stream_and_the_connection_promptly(
    faulty: GunicornServer, upstream: FakeUpstream
) -> None:
    started = time.monotonic()
    events = stream(faulty.url, {"message": "never ends #tokens=3 #linger=30"})
    assert [event.type for event in events] == ["metadata", "token", "token", "token", "done"]
    assert time.monotonic() - started < 1
    connection = upstream.connection_for("never ends")
    assert eventually(lambda: connection.closed_at is not None, 3)
    assert connection.closed_at is not None and connection.closed_at - started < 3
    assert saved_reply(faulty, events)["status"] == "complete"
    assert_released(faulty, connection)


def test_a_compressed_stream_is_relayed_as_it_comes(faulty: GunicornServer, upstream: FakeUpstream) -> None:
    """A compressing proxy in front of the provider (``Content-Encoding: gzip``, flushed event by event)."""
    events = stream(faulty.url, {"message": "squeezed #tokens=5 #gzip #delay=0.05"})
    assert [event.type for event in events] == ["metadata", "token", "token", "token", "token", "token", "done"]
    assert tokens(events) == "Baby sleep patterns change a"
    sent = upstream.connection_for("squeezed").sent_at
    assert all(event.at - at < 0.05 for event, at in zip(events[1:6], sent, strict=True))
    assert saved_reply(faulty, events)["content"] == "Baby sleep patterns change a"
    assert_released(faulty, upstream.connection_for("squeezed"))
