"""Writes a client does not take: a response whose client stops reading is cut after ``SEND_TIMEOUT_SECONDS``.

gunicorn writes each buffer a response body yields with a blocking ``sendall``. A client that stops reading but
keeps its connection open (its receive window shut) leaves that write, its greenlet, its stream and the stream's
upstream request waiting for as long as it likes. So each streaming body marks when its current write began
(``writing_since``), and one timer per worker looks at them all: a write that has waited ``timeout`` seconds gets
its connection shut down. The blocked ``sendall`` then fails with EPIPE at once, which gunicorn takes quietly as
a client that went away, and the body is closed as after any drop.
"""

from __future__ import annotations

import _socket
import logging
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any, Protocol

import gevent

log = logging.getLogger(__name__)
LINGER_RESET = struct.pack("ii", 1, 0)


class Writer(Protocol):
    """A response body the guard watches: when its current write began (None between writes), and what to do
    when that write has waited too long (called in the hub: it must not block)."""

    writing_since: float | None

    def stalled(self, seconds: float) -> None: ...


def hang_up(connection: socket.socket) -> None:
    """Shut ``connection`` down under the greenlet that waits on it: its blocked read or write returns at once
    (EOF, EPIPE). Done on the descriptor itself, because gevent's ``shutdown`` wakes the waiter with a "closed in
    another greenlet" error that gunicorn logs as a failure. SO_LINGER 0: closing it then resets the connection
    and drops the unsent bytes instead of retrying them to a client that does not read."""
    try:
        fileno = connection.fileno()
    except OSError:
        return
    if fileno < 0:
        return
    raw = _socket.socket(fileno=fileno)
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut or reset by the peer: nothing waits on it for long
    finally:
        raw.detach()  # the descriptor stays gunicorn's, which closes it


class Watched:
    __slots__ = ("connection", "writer")

    def __init__(self, writer: Writer, connection: socket.socket) -> None:
        self.writer = writer
        self.connection = connection


class SendGuard:
    """The writes of one worker's streaming responses, and the one timer that cuts those waiting too long."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = min(1.0, max(0.05, timeout / 10))  # how late past ``timeout`` a cut may come
        self.watched: set[Watched] = set()
        self.timer: Any = None

    def watch(self, writer: Writer, connection: socket.socket) -> Watched:
        watched = Watched(writer, connection)
        self.watched.add(watched)
        if self.timer is None:  # in the worker (not the master): the hub is this process's own
            self.timer = gevent.get_hub().loop.timer(self.interval, self.interval)
            self.timer.start(self._sweep)
        return watched

    def forget(self, watched: Watched) -> None:
        """Call before the server may close or reuse the connection."""
        self.watched.discard(watched)

    def _sweep(self) -> None:
        """Runs in the hub every ``interval`` seconds: a few attribute reads per open stream."""
        now = time.monotonic()
        oldest = now - self.timeout
        stalled = [
            watched
            for watched in self.watched
            if watched.writer.writing_since is not None and watched.writer.writing_since <= oldest
        ]
        for watched in stalled:
            self.watched.discard(watched)
            since = watched.writer.writing_since
            watched.writer.stalled(now - since if since is not None else self.timeout)
            hang_up(watched.connection)


_guards: dict[float, SendGuard] = {}


def send_guard(timeout: float) -> SendGuard:
    """This process's guard for ``timeout`` (one per worker: the settings give every stream the same)."""
    guard = _guards.get(timeout)
    if guard is None:
        guard = _guards[timeout] = SendGuard(timeout)
    return guard


class GuardedBody:
    """A reader's response body (a resumed stream) whose writes the guard watches: a reader that stops reading is
    disconnected; the stream itself goes on for its other readers."""

    def __init__(self, items: Iterator[bytes], guard: SendGuard, connection: socket.socket | None) -> None:
        self.items = items
        self.guard = guard
        self.writing_since: float | None = None
        self.watched = guard.watch(self, connection) if connection is not None else None

    def __iter__(self) -> Iterator[bytes]:
        for item in self.items:
            self.writing_since = time.monotonic()
            yield item
            self.writing_since = None
        # what the server writes next, the response's end, is guarded too (until ``close``): a reader let go for
        # falling behind may have stopped reading just as its last event went out
        self.writing_since = time.monotonic()

    def stalled(self, seconds: float) -> None:
        log.info("a stream's reader read nothing for %.0f s: its connection is closed", seconds)

    def close(self) -> None:
        self.writing_since = None
        if self.watched is not None:
            self.guard.forget(self.watched)
            self.watched = None
        close = getattr(self.items, "close", None)
        if close is not None:
            close()
