"""The gateway mounted in another Flask app (``ChatGateway.init_app``) under gunicorn's gevent worker: its own
prefix, its own users, its own routes and errors untouched; and a loud warning under a worker that cannot hold
streams at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer
from tests.sse import stream

API = "/assistant/api/v1/ai"
ONE_AT_A_TIME = "ONE AT A TIME"


def host_server(upstream: FakeUpstream, folder: Path, worker: str) -> GunicornServer:
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "test-key",
        "DATABASE_URL": f"sqlite:///{folder / 'host.sqlite3'}",
        "CHAT_MODEL": "test-model",
        "LOG_LEVEL": "warning",
        "GUNICORN_CMD_ARGS": f"--worker-class {worker}",
    }
    return GunicornServer(env, folder / f"host-{worker}.log", app="tests.host_app:app", health="/assistant/healthz")


@pytest.fixture
def host(upstream: FakeUpstream, tmp_path: Path) -> Iterator[GunicornServer]:
    server = host_server(upstream, tmp_path, "gevent").start()
    yield server
    server.stop()


def test_a_host_app_streams_through_the_mounted_gateway(host: GunicornServer) -> None:
    alice, bob = {"X-Host-User": "alice"}, {"X-Host-User": "bob"}
    events = stream(host.url.rstrip("/") + "/assistant", {"message": "mounted #tokens=4 #delay=0.02"}, alice)
    assert [event.type for event in events] == ["metadata", "token", "token", "token", "token", "done"]
    conversation = events[0].data["conversationId"]
    mine = httpx.get(f"{host.url}{API}/conversations/{conversation}", headers=alice)
    assert [item["content"] for item in mine.json()["messages"]] == [
        "mounted #tokens=4 #delay=0.02",
        "Baby sleep patterns change",
    ]
    assert httpx.get(f"{host.url}{API}/conversations/{conversation}", headers=bob).status_code == 404


def test_the_host_names_the_user_and_keeps_its_own_routes_and_errors(host: GunicornServer) -> None:
    anonymous = httpx.post(f"{host.url}{API}/chat/stream", json={"message": "who am I"})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    invalid = httpx.post(f"{host.url}{API}/chat/stream", json={"message": ""}, headers={"X-Host-User": "alice"})
    assert (invalid.status_code, invalid.json()["error"]["code"]) == (400, "validation_error")
    assert httpx.get(f"{host.url}/").text == "the host's own home page"
    assert httpx.get(f"{host.url}/nowhere").text == "the host's own 404"
    assert httpx.get(f"{host.url}/assistant/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{host.url}/api/v1/ai/conversations").status_code == 404  # only under its prefix


def test_it_says_so_loudly_under_a_worker_that_serves_one_stream_at_a_time(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = host_server(upstream, tmp_path, "sync").start()
    try:
        assert ONE_AT_A_TIME in server.log()
    finally:
        server.stop()
    gevent_log = tmp_path / "gevent"
    gevent_log.mkdir()
    served = host_server(upstream, gevent_log, "gevent").start()
    try:
        assert ONE_AT_A_TIME not in served.log()
    finally:
        served.stop()
