"""The send guard over a reader's body: every write the server makes for it is watched, the response's end too.

gunicorn writes the end of a chunked body (``0\\r\\n\\r\\n``) after the body's iterator is exhausted and before it
calls ``close``. A reader that stopped reading just as its last event went out (one let go with
``reader_behind``, say) blocks that write; unwatched, its greenlet and connection would wait for as long as the
client stays connected."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from service.relay.send_guard import GuardedBody, SendGuard


@pytest.fixture
def guard() -> SendGuard:
    watching = SendGuard(timeout=2.0)
    watching.timer = object()  # no hub timer in these tests: the sweep is called by hand
    return watching


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """The server's end of a connection and the client's."""
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_the_write_after_the_last_item_is_watched_until_close(
    guard: SendGuard, connection: tuple[socket.socket, socket.socket]
) -> None:
    ours, _ = connection
    body = GuardedBody(iter([b"event 1", b"event 2"]), guard, ours)
    items = iter(body)
    assert next(items) == b"event 1" and body.writing_since is not None  # the server writes it now
    assert next(items) == b"event 2"
    assert next(items, None) is None  # exhausted: the server goes on to write the body's end
    assert body.writing_since is not None
    assert {watched.writer for watched in guard.watched} == {body}
    body.close()  # the server is done with the response
    assert body.writing_since is None and not guard.watched


def test_a_stalled_last_write_is_cut(guard: SendGuard, connection: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = connection
    body = GuardedBody(iter([b"the last event"]), guard, ours)
    assert list(body) == [b"the last event"]
    assert body.writing_since is not None
    body.writing_since -= 3.0  # the body's end has waited past the timeout
    guard._sweep()
    assert not guard.watched
    assert theirs.recv(16) == b""  # shut down: the blocked write fails and the server closes the connection
