"""gunicorn.conf.py: everything from the environment, the gevent worker, and GUNICORN_CMD_ARGS still wins."""

from __future__ import annotations

import gc
import os
import re
import runpy
import time
from collections.abc import Iterator

import httpx
import pytest

from service.heap import YOUNG_THRESHOLD
from tests.conftest import ServerFactory
from tests.servers import ROOT


@pytest.fixture(autouse=True)
def environment_taken_back() -> Iterator[None]:
    """The file sets variables in os.environ for the workers it starts (the metrics folder, the local model's
    address); monkeypatch only restores what it changed itself, so the whole environment is put back after each
    test, or a later test in this process would find multiprocess metrics on."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


def settings_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, object]:
    names = ("GUNICORN_BIND", "WEB_CONCURRENCY", "GUNICORN_WORKER_CONNECTIONS", "GUNICORN_TIMEOUT", "LOG_LEVEL")
    for name in ("GUNICORN_ACCESS_LOG", "GUNICORN_GRACEFUL_TIMEOUT", "STREAM_MAX_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    for name in (*names, "GEVENT_RESOLVER", "GEVENT_TRACK_GREENLET_TREE", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = settings_for(monkeypatch, PORT="8123")
    assert conf["worker_class"] == "service.worker.GatewayWorker"  # gunicorn's gevent worker with a head deadline
    assert conf["bind"] == "127.0.0.1:8123"
    assert int(conf["worker_connections"]) >= 2000  # type: ignore[call-overload]
    assert conf["preload_app"] is False


def test_the_request_read_timeout_reaches_the_worker_and_a_bad_one_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.worker import GatewayWorker

    default = GatewayWorker.head_timeout
    try:
        settings_for(monkeypatch, REQUEST_READ_TIMEOUT_SECONDS="7.5")
        assert GatewayWorker.head_timeout == 7.5
        with pytest.raises(SystemExit, match="REQUEST_READ_TIMEOUT_SECONDS"):
            settings_for(monkeypatch, REQUEST_READ_TIMEOUT_SECONDS="soon")
    finally:
        GatewayWorker.head_timeout = default


def test_everything_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = settings_for(
        monkeypatch,
        GUNICORN_BIND="0.0.0.0:9000",
        WEB_CONCURRENCY="4",
        GUNICORN_WORKER_CONNECTIONS="5000",
        GUNICORN_TIMEOUT="45",
        LOG_LEVEL="DEBUG",
    )
    assert (conf["bind"], conf["workers"], conf["worker_connections"], conf["timeout"], conf["loglevel"]) == (
        "0.0.0.0:9000",
        4,
        5000,
        45,
        "debug",
    )


def test_the_access_log_is_on_by_default_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_for(monkeypatch)["accesslog"] == "-"
    assert settings_for(monkeypatch, GUNICORN_ACCESS_LOG="off")["accesslog"] is None
    assert settings_for(monkeypatch, GUNICORN_ACCESS_LOG="/var/log/chat.log")["accesslog"] == "/var/log/chat.log"


def test_the_access_log_has_a_line_per_request_with_its_status(server_factory: ServerFactory) -> None:
    server = server_factory(LOG_FORMAT="text")  # the JSON access line: tests/test_request_ids.py
    streamed = httpx.post(f"{server.url}/api/v1/ai/chat/stream", json={"message": "logged #tokens=3"}, timeout=10)
    refused = httpx.post(f"{server.url}/api/v1/ai/chat/stream", json={"message": ""}, timeout=10)
    assert (streamed.status_code, refused.status_code) == (200, 400)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in server.log().splitlines() if "/api/v1/ai/chat/stream HTTP/1.1" in line]
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    assert len(lines) == 2, server.log()
    assert '"POST /api/v1/ai/chat/stream HTTP/1.1" 200 ' in lines[0]
    assert '"POST /api/v1/ai/chat/stream HTTP/1.1" 400 ' in lines[1]
    assert re.search(r'" 200 \d+ \d+ms "', lines[0]), lines[0]  # the bytes sent and the stream's duration
    assert lines[0].endswith(streamed.headers["X-Request-ID"])


def test_the_graceful_timeout_covers_the_longest_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deploy drains: running streams may finish, so gunicorn waits as long as the longest may run."""
    assert settings_for(monkeypatch)["graceful_timeout"] == 300 + 15
    assert settings_for(monkeypatch, STREAM_MAX_SECONDS="60")["graceful_timeout"] == 75
    assert settings_for(monkeypatch, GUNICORN_GRACEFUL_TIMEOUT="40")["graceful_timeout"] == 40


def test_a_bad_number_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="WEB_CONCURRENCY"):
        settings_for(monkeypatch, WEB_CONCURRENCY="many")


def test_gunicorn_cmd_args_override_the_file(server_factory: ServerFactory) -> None:
    server = server_factory(workers=1, GUNICORN_CMD_ARGS="--workers 3")
    deadline = time.monotonic() + 10
    while len(server.worker_pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # and no more than three come
    assert len(server.worker_pids()) == 3


def test_a_worker_freezes_what_the_app_left_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = settings_for(monkeypatch)
    threshold = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    try:
        conf["post_worker_init"](object())  # type: ignore[operator]
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_a_real_worker_runs_with_the_heap_settled(server_factory: ServerFactory) -> None:
    server = server_factory(workers=1)
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    frozen = [line for line in metrics.splitlines() if line.startswith("chat_process_gc_frozen_objects ")]
    assert frozen and float(frozen[0].split()[1]) > 1000, frozen


def test_workers_resolve_names_in_the_event_loop_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_for(monkeypatch)
    assert os.environ["GEVENT_RESOLVER"] == "ares"
    settings_for(monkeypatch, GEVENT_RESOLVER="thread")
    assert os.environ["GEVENT_RESOLVER"] == "thread"


def test_a_real_worker_uses_the_c_ares_resolver(server_factory: ServerFactory) -> None:
    server = server_factory(workers=1)
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert 'chat_process_resolver_info{resolver="ares"} 1.0' in metrics


def test_workers_do_not_record_greenlet_spawn_trees_unless_told_to(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_for(monkeypatch)
    assert os.environ["GEVENT_TRACK_GREENLET_TREE"] == "false"
    settings_for(monkeypatch, GEVENT_TRACK_GREENLET_TREE="true")
    assert os.environ["GEVENT_TRACK_GREENLET_TREE"] == "true"
