"""What a worker does with its running streams when gunicorn shuts it down (SIGTERM)."""

from __future__ import annotations

import signal
from typing import Any

import gevent

from service.errors import ServerShutdown
from service.relay.registry import StreamRegistry


def end_streams_on_sigterm(registry: StreamRegistry) -> None:
    """On SIGTERM (gunicorn's graceful shutdown), end every running stream at once with ``server_shutdown``
    and its partial reply saved, so clients resume elsewhere instead of waiting out the graceful timeout.
    gunicorn's own handler still runs afterwards."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        gevent.spawn(_end_all, registry)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def _end_all(registry: StreamRegistry) -> None:
    for live in registry.running():
        live.stop(ServerShutdown())
