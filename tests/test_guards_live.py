"""Guards that only a real server can show: idle timeout, heartbeats, disconnects, open-stream caps,
budget spent mid-stream, cancel and resume. Each runs through gunicorn with the gevent worker."""

from __future__ import annotations

import time

import httpx

from tests.conftest import ServerFactory
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer
from tests.sse import raw_stream, stream

STREAM = "/api/v1/ai/chat/stream"


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_idle_timeout_ends_with_event_and_closes_upstream(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    server = server_factory(STREAM_IDLE_TIMEOUT="1")
    started = time.monotonic()
    events = stream(server.url, {"message": "goes quiet #tokens=5 #silence=30"})
    assert [event.type for event in events] == ["metadata", "token", "error"]
    assert events[-1].data["error"]["code"] == "idle_timeout"
    assert 0.9 < time.monotonic() - started < 3
    connection = upstream.connection_for("goes quiet")
    assert wait_for(lambda: connection.closed_at is not None, 2)
    saved = httpx.get(f"{server.url}/api/v1/ai/conversations/{events[0].data['conversationId']}").json()
    assert saved["messages"][-1]["status"] == "incomplete"
    assert saved["messages"][-1]["content"] == "Baby"


def test_stream_max_seconds_caps_a_stream(server_factory: ServerFactory) -> None:
    server = server_factory(STREAM_MAX_SECONDS="1")
    started = time.monotonic()
    events = stream(server.url, {"message": "long one #tokens=50 #delay=0.1"})
    assert events[-1].type == "error"
    error = events[-1].data["error"]
    assert (error["code"], error["retryable"]) == ("idle_timeout", True)
    assert "1 s limit" in error["message"]
    assert 5 <= sum(1 for event in events if event.type == "token") < 50
    assert time.monotonic() - started < 2.5


def test_heartbeats_before_the_first_token(server_factory: ServerFactory) -> None:
    server = server_factory(HEARTBEAT_SECONDS="0.3")
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", server.url + STREAM, json={"message": "slow start #tokens=2 #first_delay=1.2"}) as r,
    ):
        body = r.read().decode()
    before_first_token = body.split('"type":"token"')[0]
    assert before_first_token.count(": ping\n\n") >= 2
    assert body.rstrip().endswith("}")


def test_heartbeats_while_the_model_pauses_mid_reply(server_factory: ServerFactory) -> None:
    """The stream's own greenlet is blocked on the upstream read here; the heartbeat wakes it, and the reply
    goes on whole after the pause (no byte of the upstream lost to the wake-up)."""
    server = server_factory(HEARTBEAT_SECONDS="0.3")
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", server.url + STREAM, json={"message": "pauses #tokens=4 #silence=1.2"}) as r,
    ):
        body = r.read().decode()
    tokens = body.split('"type":"token"')
    assert len(tokens) == 5
    assert tokens[1].count(": ping\n\n") >= 2  # between the first token and the second
    assert body.count(": ping\n\n") == tokens[1].count(": ping\n\n")
    assert '"type":"done"' in tokens[-1]
    contents = [part.split('"content":"')[1].split('"')[0] for part in tokens[1:]]
    assert "".join(contents) == "Baby sleep patterns change"


def _hang_up_and_measure(server: GunicornServer, upstream: FakeUpstream, message: str) -> float:
    sock = raw_stream(server.url, {"message": message})
    marker = message.split("#")[0].strip()
    assert wait_for(lambda: any(marker in item.message for item in upstream.recorder.connections))
    connection = upstream.connection_for(marker)
    assert connection.closed_at is None
    hung_up = time.monotonic()
    sock.close()
    assert wait_for(lambda: connection.closed_at is not None, 3), "upstream connection still open"
    assert connection.closed_at is not None
    return connection.closed_at - hung_up


def test_disconnect_while_waiting_for_first_token_closes_upstream_within_1s(
    server: GunicornServer, upstream: FakeUpstream
) -> None:
    assert _hang_up_and_measure(server, upstream, "never first #first_delay=30") < 1.0


def test_disconnect_between_tokens_closes_upstream_within_1s(server: GunicornServer, upstream: FakeUpstream) -> None:
    assert _hang_up_and_measure(server, upstream, "silent middle #tokens=5 #silence=30") < 1.0


def test_disconnect_saves_partial_reply(server: GunicornServer, upstream: FakeUpstream) -> None:
    sock = raw_stream(server.url, {"message": "partial save #tokens=9 #silence=30"})
    assert wait_for(lambda: any("partial save" in item.message for item in upstream.recorder.connections))
    connection = upstream.connection_for("partial save")
    assert wait_for(lambda: connection.tokens_sent == 1)
    time.sleep(0.2)  # the silence: the first token is relayed, nothing more comes
    sock.close()
    assert wait_for(lambda: connection.closed_at is not None, 3)

    def saved() -> bool:
        listed = httpx.get(f"{server.url}/api/v1/ai/conversations").json()["conversations"]
        return any(item["title"].startswith("partial save") for item in listed)

    assert wait_for(saved, 3)
    listed = httpx.get(f"{server.url}/api/v1/ai/conversations").json()["conversations"]
    found = next(item for item in listed if item["title"].startswith("partial save"))
    reply = httpx.get(f"{server.url}/api/v1/ai/conversations/{found['id']}").json()["messages"][-1]
    assert (reply["status"], reply["content"]) == ("incomplete", "Baby")


def test_open_stream_cap_refuses_before_upstream_and_recovers_when_clients_die(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    server = server_factory(MAX_STREAMS_PER_USER="2")
    sockets = [raw_stream(server.url, {"message": f"holder {index} #first_delay=30"}) for index in range(2)]
    before = len(upstream.recorder.requests)
    refused = httpx.post(server.url + STREAM, json={"message": "third"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["Retry-After"]
    assert len(upstream.recorder.requests) == before
    for sock in sockets:
        sock.close()

    def accepted() -> bool:
        return httpx.post(server.url + STREAM, json={"message": "after #tokens=1"}).status_code == 200

    assert wait_for(accepted, 3)


def test_budget_spent_mid_stream_ends_with_rate_limited_and_saves(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    server = server_factory(TOKEN_BUDGET="40/hour")
    events = stream(server.url, {"message": "big spender #tokens=200 #delay=0.01"})
    tokens = [event for event in events if event.type == "token"]
    assert events[-1].type == "error"
    assert events[-1].data["error"]["code"] == "rate_limited"
    assert 40 <= len(tokens) <= 56
    connection = upstream.connection_for("big spender")
    assert wait_for(lambda: connection.closed_at is not None, 2)
    assert not connection.completed
    reply = httpx.get(f"{server.url}/api/v1/ai/conversations/{events[0].data['conversationId']}").json()["messages"][-1]
    assert reply["status"] == "incomplete"
    assert reply["content"] == "".join(event.data["content"] for event in tokens)
    assert httpx.post(server.url + STREAM, json={"message": "again"}).status_code == 429


def test_cancel_stops_generation_and_readers_get_cancelled(server: GunicornServer, upstream: FakeUpstream) -> None:
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", server.url + STREAM, json={"message": "to cancel #tokens=100 #delay=0.1"}) as r,
    ):
        lines = r.iter_lines()
        stream_id = next(line for line in lines if line.startswith("id:")).split()[1].split(":")[0]
        assert httpx.delete(f"{server.url}{STREAM}/{stream_id}").status_code == 204
        rest = list(lines)
    assert any('"code":"cancelled"' in line for line in rest)
    assert upstream.connection_for("to cancel").closed_at is not None
    assert httpx.delete(f"{server.url}{STREAM}/{'0' * 32}").status_code == 404


def test_resume_replays_after_last_event_id_then_follows_live(server: GunicornServer) -> None:
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", server.url + STREAM, json={"message": "resumable #tokens=6 #delay=0.2"}) as r,
    ):
        ids = [line.split()[1] for line in r.iter_lines() if line.startswith("id:")][:3]
        stream_id = ids[0].split(":")[0]
        with client.stream("GET", f"{server.url}{STREAM}/{stream_id}", headers={"Last-Event-ID": ids[1]}) as resumed:
            assert resumed.headers["content-type"] == "text/event-stream; charset=utf-8"
            replayed = [line.split()[1] for line in resumed.iter_lines() if line.startswith("id:")]
    assert replayed == [f"{stream_id}:{n}" for n in range(2, 8)]
    bad = httpx.get(f"{server.url}{STREAM}/{stream_id}", headers={"Last-Event-ID": "nonsense"})
    assert bad.status_code == 400


def test_a_stream_longer_than_the_drain_ends_with_server_shutdown_and_saves_partial(
    server_factory: ServerFactory, tmp_path: object
) -> None:
    """A 20 s stream on a host told to stop with a 5 s graceful timeout: it runs on for the drain time (3 s, the
    timeout less the margin gunicorn's own kill needs), then ends with a retryable ``server_shutdown``."""
    from pathlib import Path

    from service.store.conversations import ConversationStore
    from service.store.database import Database

    server = server_factory()
    sock = raw_stream(server.url, {"message": "shutting down #tokens=100 #delay=0.2"})
    received = b""
    while b'"type":"token"' not in received:
        received += sock.recv(65536)
    assert server.process is not None
    asked = time.monotonic()
    server.process.send_signal(15)
    sock.settimeout(5)
    while b'"type":"error"' not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    assert b'"code":"server_shutdown"' in received
    assert b'"retryable":true' in received
    assert 2.5 < time.monotonic() - asked < 4.5  # at the end of the drain time, not at once
    sock.close()
    server.process.wait(15)
    store = ConversationStore(Database(f"sqlite:///{Path(str(tmp_path)) / 'chat.sqlite3'}"))
    (conversation,) = store.list_for("local", 10, 0)
    read = store.read(conversation.id, "local")
    assert read is not None and read.messages is not None
    reply = read.messages[-1]
    assert reply.status == "incomplete"
    assert reply.content.startswith("Baby")
