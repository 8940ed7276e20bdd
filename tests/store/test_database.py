"""The store against real SQLite and the real PostgreSQL of this machine, and the no-stall rule."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.store.conversations import ConversationStore, ExchangeRecord
from service.store.database import Database
from tests.conftest import ServerFactory
from tests.sse import stream

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConversationStore]:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}" if request.param == "sqlite" else POSTGRES_URL
    database = Database(url)
    database.create_tables()
    yield ConversationStore(database)
    database.dispose()


def record(conversation_id: str, user: str, text: str, status: str = "complete") -> ExchangeRecord:
    return ExchangeRecord(conversation_id, user, text, f"reply to {text}", str(uuid.uuid4()), status, "m", "stop", 3, 4)


def test_exchange_saved_in_order_and_owned(store: ConversationStore) -> None:
    user, other = f"u-{uuid.uuid4()}", f"o-{uuid.uuid4()}"
    conversation = str(uuid.uuid4())
    store.save_exchange(record(conversation, user, "one"))
    store.save_exchange(record(conversation, user, "two", status="incomplete"))
    read = store.read(conversation, user)
    assert read is not None and read.messages is not None
    assert [(m.role, m.content, m.status) for m in read.messages] == [
        ("user", "one", "complete"),
        ("assistant", "reply to one", "complete"),
        ("user", "two", "complete"),
        ("assistant", "reply to two", "incomplete"),
    ]
    assert store.history(conversation, user, 3) == [
        ("assistant", "reply to one"),
        ("user", "two"),
        ("assistant", "reply to two"),
    ]
    assert store.read(conversation, other) is None
    assert store.history(conversation, other, 5) is None
    assert store.delete(conversation, other) is False
    assert [item.id for item in store.list_for(user, 10, 0)] == [conversation]
    assert store.delete(conversation, user) is True
    assert store.read(conversation, user) is None


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'wal.sqlite3'}")
    database.create_tables()
    with sqlite3.connect(tmp_path / "wal.sqlite3") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_service_on_postgresql_saves_streams(server_factory: ServerFactory) -> None:
    server = server_factory(DATABASE_URL=POSTGRES_URL)
    events = stream(server.url, {"message": "postgres turn #tokens=3"})
    conversation = httpx.get(f"{server.url}/api/v1/ai/conversations/{events[0].data['conversationId']}").json()
    assert [m["content"] for m in conversation["messages"]] == ["postgres turn #tokens=3", "Baby sleep patterns"]
    assert httpx.get(f"{server.url}/readyz").json()["checks"]["database"] == "ok"


def test_a_database_wait_does_not_stall_other_streams(server_factory: ServerFactory, tmp_path: Path) -> None:
    """While one stream's save waits on a locked SQLite file, another stream's tokens keep their pace."""
    server = server_factory()
    locker = sqlite3.connect(tmp_path / "chat.sqlite3", isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(2.0, lambda: locker.execute("COMMIT"))
    release.start()
    results: dict[str, float] = {}

    def waiting_stream() -> None:
        started = time.monotonic()
        stream(server.url, {"message": "saver #tokens=1"})
        results["saver_seconds"] = time.monotonic() - started

    saver = threading.Thread(target=waiting_stream)
    threading.Timer(0.5, saver.start).start()
    flowing = stream(server.url, {"message": "flowing #tokens=25 #delay=0.1"})
    release.join()
    locker.close()
    saver.join(10)
    gaps = [after.at - before.at for before, after in itertools.pairwise(flowing[1:-1])]
    assert results["saver_seconds"] > 1.0  # its save really did wait for the lock
    assert max(gaps) < 0.35, gaps
    saved = httpx.get(f"{server.url}/api/v1/ai/conversations").json()["conversations"]
    assert {item["title"] for item in saved} == {"saver #tokens=1", "flowing #tokens=25 #delay=0.1"}


def test_several_workers_start_together_on_a_fresh_database(server_factory: ServerFactory) -> None:
    """Every worker creates the tables at start; the ones that lose the race must still boot."""
    server = server_factory(workers=4)
    deadline = time.monotonic() + 10
    while len(server.worker_pids()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a worker that lost the race would exit now and be replaced
    assert server.process is not None and server.process.poll() is None
    assert len(server.worker_pids()) == 4
    assert stream(server.url, {"message": "after a racy start #tokens=2"})[-1].type == "done"


def test_a_failed_write_does_not_carry_the_users_text(store: ConversationStore) -> None:
    """Errors are logged: they must not hold what the user wrote (the statement's parameters)."""
    private = f"my private words {uuid.uuid4()}"
    saved = record(str(uuid.uuid4()), f"u-{uuid.uuid4()}", private)
    store.save_exchanges([saved])
    with pytest.raises(Exception) as failed:  # the same reply id again: the database refuses it
        store.save_exchanges([saved])
    assert "private words" not in str(failed.value) and "private words" not in repr(failed.value)
