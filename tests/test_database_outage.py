"""The database going away loses no reply: saves go to the local journal, on disk before ``done``, and are written
once the database is back; what needs the database meanwhile gets a retryable 503. Against a PostgreSQL of the
test's own, stopped and started while the service (real gunicorn) streams."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import ServerFactory
from tests.servers import ROOT, GunicornServer, PostgresServer
from tests.sse import Received, stream

CONVERSATIONS = "/api/v1/ai/conversations"
SAVE_TIMEOUT = 2.0


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().create()
    yield server
    server.remove()


def reply_text(events: list[Received]) -> str:
    return "".join(event.data["content"] for event in events if event.type == "token")


def save_wait(events: list[Received]) -> float:
    """How long the last event came after the last token: the save's share of the stream's end."""
    tokens = [event for event in events if event.type == "token"]
    return events[-1].at - tokens[-1].at


def wait_for(check: Callable[[], Any], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def stored_whole(server: GunicornServer, message: str, events: list[Received]) -> bool:
    """The conversation holds this exchange exactly once, whole: the message, and every token the client saw."""
    found = httpx.get(f"{server.url}{CONVERSATIONS}/{events[0].data['conversationId']}")
    if found.status_code != 200:
        return False
    messages = [(item["role"], item["content"], item["status"]) for item in found.json()["messages"]]
    return messages == [("user", message, "complete"), ("assistant", reply_text(events), "complete")]


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert int(response.headers["Retry-After"]) >= 1


def journal_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("saves-*.jsonl")) if folder.is_dir() else []


def test_replies_finish_and_are_stored_once_when_the_database_goes_away_mid_stream(
    server_factory: ServerFactory, postgres: PostgresServer, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    server = server_factory(
        workers=2,
        DATABASE_URL=postgres.url,
        SAVE_JOURNAL_DIR=str(journal),
        SAVE_TIMEOUT_SECONDS=str(SAVE_TIMEOUT),
        MAX_STREAMS_PER_USER="1000",
    )
    earlier = stream(server.url, {"message": "before the outage #tokens=3"})
    assert earlier[-1].type == "done"
    earlier_id = earlier[0].data["conversationId"]
    messages = [f"outage {n} #tokens=60 #delay=0.05" for n in range(20)]
    with ThreadPoolExecutor(len(messages)) as pool:
        running = [pool.submit(stream, server.url, {"message": message}) for message in messages]
        time.sleep(1.0)
        postgres.stop("fast")  # while every one of them streams

        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
        started = time.monotonic()
        continued = httpx.post(
            f"{server.url}/api/v1/ai/chat/stream",
            json={"message": "go on #tokens=3", "conversationId": earlier_id},
            timeout=10,
        )
        assert_unavailable(continued)
        assert time.monotonic() - started < 4  # the connect attempt is bounded
        assert_unavailable(httpx.get(f"{server.url}{CONVERSATIONS}", timeout=10))
        assert_unavailable(httpx.get(f"{server.url}{CONVERSATIONS}/{earlier_id}", timeout=10))
        assert_unavailable(httpx.delete(f"{server.url}{CONVERSATIONS}/{earlier_id}", timeout=10))
        newcomer_message = "new during the outage #tokens=5"
        newcomer = stream(server.url, {"message": newcomer_message})
        assert newcomer[-1].type == "done" and len(reply_text(newcomer).split()) == 5
        results = [future.result(timeout=30) for future in running]

    for events in results:
        assert events[-1].type == "done", events[-1].data
        assert len(reply_text(events).split()) == 60
        assert save_wait(events) < SAVE_TIMEOUT + 1
    assert len(journal_files(journal)) in (1, 2)  # one per worker that journaled

    postgres.start()
    exchanges = [*zip(messages, results, strict=True), (newcomer_message, newcomer)]
    assert wait_for(lambda: all(stored_whole(server, *exchange) for exchange in exchanges), 10), server.log()
    listed = httpx.get(f"{server.url}{CONVERSATIONS}", params={"limit": 100}).json()["conversations"]
    ids = [item["id"] for item in listed]
    expected = {events[0].data["conversationId"] for _, events in exchanges} | {earlier_id}
    assert sorted(ids) == sorted(expected)  # each once, and the earlier one survived its refused delete
    assert wait_for(lambda: journal_files(journal) == [], 5)
    assert stream(server.url, {"message": "go on #tokens=3", "conversationId": earlier_id})[-1].type == "done"
    log = server.log_path.read_text()
    assert 1 <= log.count("journaling saves") <= 2  # once per worker, not a traceback per save
    assert "could not save conversation" not in log


def run_command(database_url: str, journal: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.store.journal", "--dir", str(journal)],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_command_writes_what_a_killed_service_journaled(
    server_factory: ServerFactory, postgres: PostgresServer, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    server = server_factory(DATABASE_URL=postgres.url, SAVE_JOURNAL_DIR=str(journal))
    postgres.stop("immediate")
    messages = [f"journaled {n} #tokens=8" for n in range(3)]
    results = [stream(server.url, {"message": message}) for message in messages]
    assert all(events[-1].type == "done" for events in results)
    assert sum(len(path.read_bytes().splitlines()) for path in journal_files(journal)) == 3
    assert server.process is not None
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)  # gone without replaying
    server.process.kill()
    server.process.wait(10)

    away = run_command(postgres.url, journal)
    assert away.returncode == 1, away.stdout + away.stderr
    assert "database unavailable" in away.stdout and "3 saves stay journaled" in away.stdout
    postgres.start()
    back = run_command(postgres.url, journal)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "3 written, 0 already stored" in back.stdout
    assert journal_files(journal) == []

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{postgres.port}/{postgres.database}") as connection:
        for message, events in zip(messages, results, strict=True):
            rows = connection.execute(
                "SELECT role, content, status FROM messages WHERE conversation_id = %s ORDER BY position",
                (events[0].data["conversationId"],),
            ).fetchall()
            assert rows == [("user", message, "complete"), ("assistant", reply_text(events), "complete")]
    again = run_command(postgres.url, journal)
    assert again.returncode == 0 and "nothing to write" in again.stdout


def test_a_slow_database_holds_done_back_no_longer_than_the_save_timeout(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """SQLite locked by another process: the save times out, is journaled, and its write lands later; the reply
    is stored once, whichever of the two got there first."""
    journal = tmp_path / "journal"
    server = server_factory(SAVE_TIMEOUT_SECONDS="0.5", SAVE_JOURNAL_DIR=str(journal))
    locker = sqlite3.connect(tmp_path / "chat.sqlite3", isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(2.5, lambda: locker.execute("COMMIT"))
    release.start()
    try:
        message = "while the database is slow #tokens=4"
        events = stream(server.url, {"message": message})
        assert events[-1].type == "done"
        assert save_wait(events) < 0.5 + 1
        assert len(journal_files(journal)) == 1
    finally:
        release.join()
        locker.close()
    assert wait_for(lambda: stored_whole(server, message, events), 10), server.log()
    assert wait_for(lambda: journal_files(journal) == [], 5)
    assert stored_whole(server, message, events)


def test_a_host_started_while_the_database_is_away_serves_and_catches_up(
    server_factory: ServerFactory, postgres: PostgresServer, tmp_path: Path
) -> None:
    """A deploy during an outage: the worker starts (its schema upgrade waits for the database), streams new
    conversations, and once the database is back upgrades it and writes what it journaled."""
    postgres.stop("fast")
    journal = tmp_path / "journal"
    server = server_factory(DATABASE_URL=postgres.url, SAVE_JOURNAL_DIR=str(journal))
    assert httpx.get(f"{server.url}/readyz", timeout=10).json()["checks"]["database"] == "unavailable"
    message = "started during the outage #tokens=6"
    events = stream(server.url, {"message": message})
    assert events[-1].type == "done" and len(reply_text(events).split()) == 6
    postgres.start()
    assert wait_for(lambda: stored_whole(server, message, events), 15), server.log()
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    assert "schema upgraded" in server.log_path.read_text()
