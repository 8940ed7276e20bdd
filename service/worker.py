"""gunicorn's gevent worker, with a deadline on every request head.

On its own the worker bounds the wait for a request's head only by the keep-alive time, and with
``GUNICORN_KEEPALIVE=0`` not at all: a client that opens connections and sends part of a head holds each one (a
greenlet, a descriptor, a place among ``worker_connections``) for as long as it likes. Here a head must be complete
within ``head_timeout`` seconds of the connection opening, or, on a kept-alive connection, of the next head's
first byte (the wait for that byte stays the keep-alive time's). Past that the connection is shut down: the parser
sees the end of its input and gunicorn closes it as a client that went away. The body is the app's to bound
(``REQUEST_READ_TIMEOUT_SECONDS`` again, as ``408 request_timeout``). The deadline is a libev timer per connection,
and between kept-alive requests a read watcher: no greenlet, nothing per byte.
"""

from __future__ import annotations

import _socket
import socket
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker

from service.relay.send_guard import hang_up


def bytes_waiting(fileno: int) -> bool:
    """Whether the connection has bytes (or its end) to read now; asked of the descriptor itself, without waiting
    (a gevent socket would wait for them)."""
    raw = _socket.socket(fileno=fileno)
    try:
        raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset: the read that follows ends the connection at once
    finally:
        raw.detach()


class HeadDeadline:
    """Shuts ``connection`` down unless cancelled within the time it is armed for."""

    __slots__ = ("connection", "head_timeout", "timer", "watcher")

    def __init__(self, connection: socket.socket, head_timeout: float) -> None:
        self.connection = connection
        self.head_timeout = head_timeout
        self.timer: Any = None
        self.watcher: Any = None

    def arm(self, seconds: float) -> None:
        self._stop_timer()
        self.timer = gevent.get_hub().loop.timer(seconds)
        self.timer.start(self._expired)

    def arm_after_idle(self, idle: float) -> None:
        """Between kept-alive requests: ``idle`` seconds for the next head to begin (the keep-alive time, which
        gunicorn also enforces), then ``head_timeout`` from its first byte."""
        fileno = self.connection.fileno()
        if fileno < 0:  # closed while the request was served: nothing comes next
            return
        if bytes_waiting(fileno):  # already here: gunicorn reads them before any watcher could see them
            self.arm(self.head_timeout)
            return
        self.arm(idle + self.head_timeout)
        self.watcher = gevent.get_hub().loop.io(fileno, 1)
        self.watcher.start(self._head_began)

    def _head_began(self) -> None:
        self._stop_watcher()
        self.arm(self.head_timeout)

    def cancel(self) -> None:
        self._stop_timer()
        self._stop_watcher()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None

    def _stop_watcher(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def _expired(self) -> None:
        self.cancel()
        hang_up(self.connection)


class GatewayWorker(GeventWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    """The gevent worker (``-k gevent``) with a deadline on request heads; set ``head_timeout`` before it forks."""

    head_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_deadlines: dict[socket.socket, HeadDeadline] = {}

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        deadline = self.head_deadlines[client] = HeadDeadline(client, self.head_timeout)
        deadline.arm(self.head_timeout)
        try:
            super().handle(listener, client, addr)
        finally:
            deadline.cancel()
            del self.head_deadlines[client]

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket, addr: Any) -> None:
        """The head is in: no deadline while the request is served; then the next head's."""
        deadline = self.head_deadlines.get(sock)
        if deadline is not None:
            deadline.cancel()
        try:
            super().handle_request(listener_name, req, sock, addr)
        finally:
            if deadline is not None:
                deadline.arm_after_idle(self.cfg.keepalive)
