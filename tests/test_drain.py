"""A deploy loses no reply: on SIGTERM a host stops taking new streams and lets the running ones finish."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx

from service.store.conversations import ConversationStore
from service.store.database import Database
from tests.conftest import ServerFactory
from tests.fake_upstream import WORDS, FakeUpstream
from tests.sse import Received, read_events

STREAMS = 50
TOKENS = 30


def full_reply() -> str:
    words = (WORDS * 2)[:TOKENS]
    return "".join(word if index == 0 else " " + word for index, word in enumerate(words))


def refuses_new_connections(port: int, within: float) -> bool:
    """gunicorn's gevent worker closes its listener at its next check (once a second) after SIGTERM."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_lets_50_running_streams_finish_whole_and_saves_each_once(
    server_factory: ServerFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = server_factory(GUNICORN_GRACEFUL_TIMEOUT="30", MAX_STREAMS_PER_USER="100")
    results: dict[int, list[Received]] = {}
    first_tokens = threading.Barrier(STREAMS + 1, timeout=30)

    def run(index: int) -> None:
        body = {"message": f"drained {index} #tokens={TOKENS} #delay=0.1"}
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", f"{server.url}/api/v1/ai/chat/stream", json=body) as response,
        ):
            events: list[Received] = []
            for event in read_events(response):
                events.append(event)
                if event.type == "token" and sum(1 for item in events if item.type == "token") == 1:
                    first_tokens.wait()
            results[index] = events

    threads = [threading.Thread(target=run, args=(index,)) for index in range(STREAMS)]
    for thread in threads:
        thread.start()
    first_tokens.wait()  # all 50 are streaming
    assert server.process is not None
    server.process.send_signal(15)
    assert refuses_new_connections(server.port, within=3.0), "a draining host kept taking new streams"
    for thread in threads:
        thread.join(60)
    server.process.wait(30)

    assert sorted(results) == list(range(STREAMS))
    for events in results.values():
        assert events[-1].type == "done", events[-1].data
        assert "".join(str(event.data["content"]) for event in events if event.type == "token") == full_reply()
    store = ConversationStore(Database(f"sqlite:///{tmp_path / 'chat.sqlite3'}"))
    conversations = store.list_for("local", 200, 0)
    assert len(conversations) == STREAMS
    for row in conversations:
        read = store.read(row.id, "local")
        assert read is not None and read.messages is not None
        assert [(message.role, message.status) for message in read.messages] == [
            ("user", "complete"),
            ("assistant", "complete"),
        ]
        assert read.messages[1].content == full_reply()
