"""Two hosts (two gunicorn servers) sharing Redis and the database: a stream started on one is resumed and
cancelled through the other, as a load balancer would route a reconnecting client."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import jwt
import pytest
import redis

from service.relay.mirror import PREFIX
from tests.conftest import ServerFactory
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer

STREAM = "/api/v1/ai/chat/stream"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET = "multi-host-secret-that-is-long-enough"


@pytest.fixture
def hosts(server_factory: ServerFactory, tmp_path: Path) -> tuple[GunicornServer, GunicornServer]:
    env = {"REDIS_URL": REDIS_URL, "DATABASE_URL": POSTGRES_URL, "HEARTBEAT_SECONDS": "1", "JWT_SECRET": SECRET}
    return server_factory(**env), server_factory(**env)


def bearer(user: str) -> dict[str, str]:
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 86400}, SECRET, "HS256")  # made at import
    return {"Authorization": f"Bearer {token}"}


ALICE, BOB = bearer("alice"), bearer("bob")


def wait_mirrored(stream_id: str, sequence: int, timeout: float = 5.0) -> None:
    """Until the running host has mirrored the event numbered ``sequence`` into Redis (it flushes every 100 ms)."""
    client = redis.Redis.from_url(REDIS_URL)
    wanted = f"id: {stream_id}:{sequence}\n".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(wanted in fields.get(b"data", b"") for _, fields in client.xrange(PREFIX + stream_id)):
            return
        time.sleep(0.02)
    raise AssertionError(f"event {sequence} of {stream_id} was never mirrored")


@contextmanager
def started(client: httpx.Client, host: GunicornServer, message: str) -> Iterator[tuple[Iterator[str], str]]:
    """A stream of 100 ms tokens started on ``host``, once its metadata is mirrored: its lines and its id."""
    with client.stream("POST", host.url + STREAM, json={"message": f"{message} #delay=0.1"}) as response:
        lines = response.iter_lines()
        stream_id = next(line for line in lines if line.startswith("id:")).split()[1].split(":")[0]
        wait_mirrored(stream_id, 0)
        yield lines, stream_id


def ids_and_types(lines: list[str]) -> list[tuple[str, str]]:
    found, event_id = [], ""
    for line in lines:
        if line.startswith("id:"):
            event_id = line.split()[1]
        elif line.startswith("data:"):
            found.append((event_id, line.split('"type":"')[1].split('"')[0]))
    return found


def test_resume_on_another_host_replays_then_follows(hosts: tuple[GunicornServer, GunicornServer]) -> None:
    first, second = hosts
    message = f"cross host {uuid.uuid4()} #tokens=12 #delay=0.15"
    with (
        httpx.Client(timeout=30, headers=ALICE) as client,
        client.stream("POST", first.url + STREAM, json={"message": message}) as r,
    ):
        lines = r.iter_lines()
        seen = []
        for line in lines:
            if line.startswith("id:"):
                seen.append(line.split()[1])
            if len(seen) == 4:
                break
        stream_id = seen[0].split(":")[0]
        wait_mirrored(stream_id, 3)
        headers = {"Last-Event-ID": seen[2]}
        with client.stream("GET", f"{second.url}{STREAM}/{stream_id}", headers=headers) as resumed:
            assert resumed.status_code == 200
            assert resumed.headers["content-type"] == "text/event-stream; charset=utf-8"
            events = ids_and_types(list(resumed.iter_lines()))
    assert [event_id for event_id, _ in events] == [f"{stream_id}:{n}" for n in range(3, 14)]
    assert [kind for _, kind in events][-1] == "done"
    assert [kind for _, kind in events].count("token") == 10


def test_cancel_through_another_host_stops_the_stream(
    hosts: tuple[GunicornServer, GunicornServer], upstream: FakeUpstream
) -> None:
    first, second = hosts
    marker = f"cancel across {uuid.uuid4()}"
    with httpx.Client(timeout=30, headers=ALICE) as client, started(client, first, f"{marker} #tokens=100") as opened:
        lines, stream_id = opened
        assert httpx.delete(f"{second.url}{STREAM}/{stream_id}", headers=ALICE).status_code == 204
        rest = list(lines)
    assert any('"code":"cancelled"' in line for line in rest)
    assert upstream.connection_for(marker).closed_at is not None


def test_another_users_stream_is_not_found_on_any_host(
    hosts: tuple[GunicornServer, GunicornServer], upstream: FakeUpstream
) -> None:
    """Bob cannot read, resume or cancel Alice's running stream, on her host or another; Alice can."""
    first, second = hosts
    marker = f"alice only {uuid.uuid4()}"
    with httpx.Client(timeout=30, headers=ALICE) as client, started(client, first, f"{marker} #tokens=40") as opened:
        _, stream_id = opened
        for host in (first, second):
            resume = {"Last-Event-ID": f"{stream_id}:0", **BOB}
            assert httpx.get(f"{host.url}{STREAM}/{stream_id}", headers=resume, timeout=5).status_code == 404
            assert httpx.delete(f"{host.url}{STREAM}/{stream_id}", headers=BOB).status_code == 404
        assert upstream.connection_for(marker).closed_at is None  # Bob's cancels touched nothing
        with client.stream(
            "GET", f"{second.url}{STREAM}/{stream_id}", headers={"Last-Event-ID": f"{stream_id}:0"}
        ) as own:
            assert own.status_code == 200
        assert httpx.get(f"{second.url}{STREAM}/{uuid.uuid4().hex}", headers=ALICE).status_code == 404


def test_another_host_serves_a_resume_while_the_owner_drains(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    """The owner is told to stop mid-stream: it drains (the stream goes on to its end) and a reader on another
    host gets the replay and then the live tail from the mirror, each batch within ~100 ms of the upstream."""
    env = {
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": POSTGRES_URL,
        "JWT_SECRET": SECRET,
        "GUNICORN_GRACEFUL_TIMEOUT": "30",
    }
    owner, other = server_factory(**env), server_factory(**env)
    marker = f"drain resume {uuid.uuid4()}"
    with httpx.Client(timeout=30, headers=ALICE) as client, started(client, owner, f"{marker} #tokens=30") as opened:
        _, stream_id = opened
        assert owner.process is not None
        owner.process.send_signal(15)
        with client.stream(
            "GET", f"{other.url}{STREAM}/{stream_id}", headers={"Last-Event-ID": f"{stream_id}:0"}
        ) as resumed:
            received = []
            for line in resumed.iter_lines():
                if line.startswith("data:") and '"type":"token"' in line:
                    received.append(time.monotonic())
                if '"type":"done"' in line:
                    break
            else:
                raise AssertionError("the resume on the other host never got the done event")
    sent = upstream.connection_for(marker).sent_at
    assert len(sent) == 30 and len(received) == 30
    live = [(got - left) for got, left in zip(received, sent, strict=True)][5:]  # past the replayed head
    assert max(live) < 0.2, live
    assert sorted(live)[len(live) // 2] < 0.12, live
    owner.process.wait(30)


def test_a_reader_on_another_host_holds_a_dropped_streams_grace_open(
    server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    """The client drops from the owner and comes back through another host: that reader keeps the stream going
    past the owner's resume grace, to its end."""
    env = {"REDIS_URL": REDIS_URL, "DATABASE_URL": POSTGRES_URL, "JWT_SECRET": SECRET}
    env.update({"RESUME_GRACE_SECONDS": "1.5", "HEARTBEAT_SECONDS": "1"})
    owner, other = server_factory(**env), server_factory(**env)
    marker = f"elsewhere {uuid.uuid4()}"
    with httpx.Client(timeout=30, headers=ALICE) as client:
        with started(client, owner, f"{marker} #tokens=50") as opened:
            _, stream_id = opened
        # the owner's connection is closed: the client dropped; it comes back through the other host
        with client.stream(
            "GET", f"{other.url}{STREAM}/{stream_id}", headers={"Last-Event-ID": f"{stream_id}:0"}
        ) as resumed:
            kinds = [kind for _, kind in ids_and_types(list(resumed.iter_lines()))]
    assert kinds[-1] == "done", kinds[-3:]
    assert kinds.count("token") == 50
    assert upstream.connection_for(marker).completed


def test_a_websocket_turn_is_resumed_and_cancelled_through_another_host(
    hosts: tuple[GunicornServer, GunicornServer], upstream: FakeUpstream
) -> None:
    from tests.ws import connect, next_frame, send, until_end

    first, second = hosts
    tag = f"ws cross host {uuid.uuid4()}"
    owner = connect(first.url, headers=ALICE)
    send(owner, {"type": "chat", "message": f"{tag} #tokens=60 #delay=0.1"})
    seen = [next_frame(owner) for _ in range(3)]
    stream_id = str(seen[0].id).split(":")[0]
    wait_mirrored(stream_id, 2)
    reader = connect(second.url, headers=ALICE)
    send(reader, {"type": "resume", "streamId": stream_id, "lastEventId": str(seen[1].id)})
    assert next_frame(reader).id == f"{stream_id}:2"
    canceller = connect(second.url, headers=ALICE)
    send(canceller, {"type": "cancel", "streamId": stream_id})
    assert until_end(owner)[-1].data["error"]["code"] == "cancelled"
    assert until_end(reader)[-1].data["error"]["code"] == "cancelled"
    for client in (owner, reader, canceller):
        client.close()
    connection = upstream.connection_for(tag)
    deadline = time.monotonic() + 3
    while connection.closed_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert connection.closed_at is not None and connection.completed is False
