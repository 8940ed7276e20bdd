"""What a worker does with its running streams when gunicorn shuts it down gracefully (SIGTERM): it drains.

gunicorn's gevent worker stops accepting at once (a load balancer sends new streams to the other hosts) and lets
running requests finish within its graceful timeout, then kills what is left. So the streams simply go on to their
natural end; only those still running when the drain time is up (a little before gunicorn's kill) end with
``server_shutdown``, retryable, their partial replies saved.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

import gevent

from service.errors import ServerShutdown
from service.relay.registry import StreamRegistry

log = logging.getLogger(__name__)


class Draining:
    """Whether this worker is draining, and who wants to know when it starts: an open WebSocket with no stream
    running has nothing to finish, and would otherwise hold the worker for the whole graceful timeout."""

    def __init__(self) -> None:
        self.started = False
        self.listeners: set[Callable[[], None]] = set()

    def start(self) -> None:
        self.started = True
        for listener in list(self.listeners):
            listener()


draining = Draining()


def drain_on_sigterm(registry: StreamRegistry, drain_seconds: float) -> None:
    """Install the hook; gunicorn's own SIGTERM handler still runs after it."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        log.info("draining: %d streams may run %g s more", len(registry.running()), drain_seconds)
        gevent.spawn(draining.start)  # in a greenlet: listeners may write to sockets
        gevent.spawn_later(drain_seconds, _end_all, registry)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def _end_all(registry: StreamRegistry) -> None:
    running = registry.running()
    if running:
        log.warning("drain time is up: ending %d streams with server_shutdown", len(running))
    for live in running:
        live.stop(ServerShutdown())
