"""nginx (Debian's, with the shipped ``deploy/nginx.conf``) in front of two gunicorn hosts on PostgreSQL and Redis:
tokens are not held back, and a rolling restart of both hosts during 50 streams loses no token and no reply."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import ServerFactory
from tests.fake_upstream import WORDS, FakeUpstream
from tests.servers import ROOT, GunicornServer, free_port
from tests.sse import Received, read_events

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # scripts/test installs Debian's nginx
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class Nginx:
    """The shipped config, pointed at the given hosts, on a free port, with its own pid, logs and temp folders."""

    def __init__(self, folder: Path, hosts: list[GunicornServer]) -> None:
        self.port = free_port()
        self.folder = folder
        config = (ROOT / "deploy" / "nginx.conf").read_text()
        servers = "".join(f"        server 127.0.0.1:{host.port};\n" for host in hosts)
        config = re.sub(r"(        server 127\.0\.0\.1:\d+;\n)+", servers, config)
        config = config.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        config = config.replace("/run/nginx-chat-gateway.pid", str(folder / "nginx.pid"))
        config = config.replace("/var/log/nginx/chat-gateway-error.log", str(folder / "error.log"))
        config = config.replace("/var/lib/nginx/", str(folder) + "/")
        config = config.replace("worker_processes auto;", "worker_processes 1;")
        self.config = folder / "nginx.conf"
        self.config.write_text(config)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        command = [NGINX, "-e", str(self.folder / "error.log"), "-c", str(self.config), "-g", "daemon off;"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError((self.folder / "error.log").read_text())

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGQUIT)
            self.process.wait(10)


@pytest.fixture
def hosts_behind_nginx(server_factory: ServerFactory, tmp_path: Path) -> Iterator[tuple[Nginx, list[GunicornServer]]]:
    env = {
        "DATABASE_URL": POSTGRES,
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "GUNICORN_GRACEFUL_TIMEOUT": "30",
        "MAX_STREAMS_PER_USER": "200",
    }
    hosts = [server_factory(**env), server_factory(**env)]
    proxy = Nginx(tmp_path, hosts).start()
    yield proxy, hosts
    proxy.stop()


def reply(tokens: int) -> str:
    words = (WORDS * 10)[:tokens]
    return "".join(word if index == 0 else " " + word for index, word in enumerate(words))


def test_tokens_arrive_within_50ms_of_leaving_the_upstream(
    hosts_behind_nginx: tuple[Nginx, list[GunicornServer]], upstream: FakeUpstream
) -> None:
    proxy, _ = hosts_behind_nginx
    marker = f"through nginx {uuid.uuid4()}"
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{proxy.url}/api/v1/ai/chat/stream", json={"message": f"{marker} #tokens=8 #delay=0.3"}
        ) as r,
    ):
        events = list(read_events(r))
    tokens = [event for event in events if event.type == "token"]
    sent = upstream.connection_for(marker).sent_at
    assert len(tokens) == len(sent) == 8
    lags = [received.at - left for received, left in zip(tokens, sent, strict=True)]
    assert max(lags) < 0.05, lags


def test_a_rolling_restart_of_both_hosts_during_50_streams_loses_nothing(
    hosts_behind_nginx: tuple[Nginx, list[GunicornServer]],
) -> None:
    proxy, hosts = hosts_behind_nginx
    run = uuid.uuid4().hex[:8]
    results: dict[str, list[Received]] = {}

    def stream(name: str, tokens: int) -> None:
        body = {"message": f"rolling {run} {name} #tokens={tokens} #delay=0.1"}
        with (
            httpx.Client(timeout=90) as client,
            client.stream("POST", f"{proxy.url}/api/v1/ai/chat/stream", json=body) as response,
        ):
            assert response.status_code == 200, response.read()
            results[name] = list(read_events(response))

    threads = [threading.Thread(target=stream, args=(f"s{index}", 40)) for index in range(50)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # all 50 running, spread over both hosts
    for host in hosts:  # one host at a time: drain it, start it again on its port, then the next
        assert host.process is not None
        host.process.send_signal(signal.SIGTERM)
        late = threading.Thread(target=stream, args=(f"late-{host.port}", 5))  # arrives while it drains
        late.start()
        threads.append(late)
        host.process.wait(40)
        host.start()
    for thread in threads:
        thread.join(90)

    assert len(results) == 52
    for name, events in results.items():
        tokens = 5 if name.startswith("late") else 40
        assert events[-1].type == "done", (name, events[-1].data)
        assert "".join(str(event.data["content"]) for event in events if event.type == "token") == reply(tokens)
    engine = create_engine(POSTGRES)
    with engine.connect() as connection:
        saved = connection.execute(
            text(
                # max(): "incomplete" sorts after "complete", so one cut message shows
                "SELECT c.title, count(m.id), max(m.status) FROM conversations c JOIN messages m "
                "ON m.conversation_id = c.id WHERE c.title LIKE :pattern GROUP BY c.id, c.title"
            ),
            {"pattern": f"rolling {run} %"},
        ).all()
    engine.dispose()
    assert len(saved) == 52  # each conversation once
    assert all(count == 2 and status == "complete" for _, count, status in saved)


def test_a_host_killed_behind_nginx_loses_nothing_generated(
    hosts_behind_nginx: tuple[Nginx, list[GunicornServer]],
) -> None:
    """Four streams spread over both hosts; one host is killed outright (no drain). Its streams are saved from the
    mirror by the other host, the survivor's finish, and new streams through nginx go on working."""
    proxy, hosts = hosts_behind_nginx
    run = uuid.uuid4().hex[:8]
    ends: dict[str, str] = {}
    started = threading.Barrier(5, timeout=30)

    def stream(name: str) -> None:
        body = {"message": f"killed {run} {name} #tokens=60 #delay=0.1"}
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", f"{proxy.url}/api/v1/ai/chat/stream", json=body) as response,
        ):
            kind = "cut"
            try:
                for event in read_events(response):
                    if event.type == "metadata":
                        started.wait()
                    kind = event.type
            except httpx.HTTPError:
                kind = "cut"
            ends[name] = kind

    threads = [threading.Thread(target=stream, args=(f"s{index}",)) for index in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(1.0)
    doomed = hosts[0]
    assert doomed.process is not None
    for pid in doomed.worker_pids():
        os.kill(pid, signal.SIGKILL)
    doomed.process.kill()
    doomed.process.wait(10)
    for thread in threads:
        thread.join(60)
    after = httpx.post(f"{proxy.url}/api/v1/ai/chat/stream", json={"message": f"killed {run} after #tokens=3"})
    assert after.status_code == 200 and '"type":"done"' in after.text

    assert sorted(ends.values()) == ["cut", "cut", "done", "done"], ends  # two on each host
    engine = create_engine(POSTGRES)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            saved = connection.execute(
                text(
                    # max(): "incomplete" sorts after "complete", so one cut message shows
                    "SELECT c.title, count(m.id), max(m.status) FROM conversations c JOIN messages m "
                    "ON m.conversation_id = c.id WHERE c.title LIKE :pattern AND c.title NOT LIKE '%after%' "
                    "GROUP BY c.id, c.title"
                ),
                {"pattern": f"killed {run} %"},
            ).all()
        if len(saved) == 4:
            break
        time.sleep(0.2)
    engine.dispose()
    assert len(saved) == 4, saved  # each once, the killed host's two saved by the survivor
    assert sorted(status for _, _, status in saved) == ["complete", "complete", "incomplete", "incomplete"]
    assert all(count == 2 for _, count, _ in saved)


def test_a_websocket_turn_through_nginx(hosts_behind_nginx: tuple[Nginx, list[GunicornServer]]) -> None:
    from tests.ws import chat, connect

    proxy, _ = hosts_behind_nginx
    client = connect(proxy.url, headers={"Origin": proxy.url})
    frames = chat(client, "through nginx over ws #tokens=5 #delay=0.02")
    client.close()
    assert [frame.type for frame in frames] == ["metadata"] + ["token"] * 5 + ["done"]
