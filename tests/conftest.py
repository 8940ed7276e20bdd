"""Shared fixtures: a real scripted OpenAI-compatible upstream, and the service under real gunicorn."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.config import Settings
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer

ServerFactory = Callable[..., GunicornServer]

# Test files that time things to tens of milliseconds, count a process's resources, or load both cores: scripts/test
# runs them on their own after the others, which run on several workers at once. The schemathesis file is here too:
# under pytest-xdist only 5 of its 22 tests ran, and the rest vanished from the count without a word.
SERIAL_FILES = frozenset(
    {
        "api/test_chat_stream.py",
        "api/test_openapi_fuzz.py",
        "llm/test_local_server.py",
        "store/test_database.py",
        "test_browser.py",
        "test_browser_markdown.py",
        "test_drain.py",
        "test_hostile_clients.py",
        "test_local_model.py",
        "test_metrics_host.py",
        "test_nginx.py",
        "test_no_cycles.py",
        "test_no_leaks.py",
        "test_resume_grace.py",
        "test_slow_headers.py",
        "test_soak.py",
        "test_ws_no_leaks.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        if item.path.relative_to(tests).as_posix() in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def upstream_settings(upstream: FakeUpstream, database_url: str, **overrides: Any) -> Settings:
    base = Settings.from_env({"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "test-key"})
    return base.with_overrides({"database_url": database_url, **overrides})


@pytest.fixture
def make_app(upstream: FakeUpstream, tmp_path: Path) -> Callable[..., Flask]:
    """A Flask app against the fake upstream and a fresh SQLite file (for tests that do not stream)."""

    def build(**overrides: Any) -> Flask:
        settings = upstream_settings(upstream, f"sqlite:///{tmp_path / 'app.sqlite3'}", **overrides)
        app = create_app(settings=settings)
        app.testing = True
        return app

    return build


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app().test_client()


def _server_env(upstream: FakeUpstream, database_url: str) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "test-key",
        "DATABASE_URL": database_url,
        "CHAT_MODEL": "test-model",
        "LOG_LEVEL": "warning",
        "RATE_LIMIT": "100000/minute",  # many test files share one server; tests of the limit set their own
        "RESUME_GRACE_SECONDS": "0",  # a disconnect ends the stream at once; the grace's own tests set theirs
    }


@pytest.fixture(scope="session")
def server(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """The service under gunicorn with default settings, shared by the tests that only read."""
    folder = tmp_path_factory.mktemp("server")
    running = GunicornServer(_server_env(upstream, f"sqlite:///{folder / 'chat.sqlite3'}"), folder / "gunicorn.log")
    running.start()
    yield running
    running.stop()


@pytest.fixture
def server_factory(upstream: FakeUpstream, tmp_path: Path) -> Iterator[ServerFactory]:
    """Start a service with extra environment; each is stopped at the end of the test."""
    started: list[GunicornServer] = []

    def start(workers: int = 1, **env: str) -> GunicornServer:
        base = _server_env(upstream, f"sqlite:///{tmp_path / 'chat.sqlite3'}")
        running = GunicornServer({**base, **env}, tmp_path / f"gunicorn-{len(started)}.log", workers=workers)
        started.append(running.start())
        return running

    yield start
    for running in started:
        running.stop()
