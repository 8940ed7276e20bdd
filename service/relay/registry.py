"""The streams of this worker by id, and the cancels other hosts publish for them."""

from __future__ import annotations

import time

from service.errors import Cancelled
from service.relay.live import LiveStream


class StreamRegistry:
    """Streams of this worker by id: running ones, and finished ones kept ``retention`` s for replay."""

    def __init__(self, retention: float = 120.0) -> None:
        self.retention = retention
        self.streams: dict[str, LiveStream] = {}
        self._purged_at = 0.0

    def add(self, live: LiveStream) -> None:
        self._purge()
        self.streams[live.stream_id] = live

    def get(self, stream_id: str, user_id: str) -> LiveStream | None:
        """The stream if it exists and belongs to ``user_id``; None otherwise (never leak existence)."""
        live = self.streams.get(stream_id)
        return live if live is not None and live.user_id == user_id else None

    def running(self) -> list[LiveStream]:
        return [live for live in self.streams.values() if not live.done]

    def _purge(self) -> None:
        now = time.monotonic()
        if now - self._purged_at < 1.0:
            return
        self._purged_at = now
        expired = [key for key, live in self.streams.items() if live.done and now - live.finished_at > self.retention]
        for key in expired:
            del self.streams[key]


class CancelRelay:
    """Cancels published by any host stop the stream here if this worker runs it."""

    def __init__(self, registry: StreamRegistry) -> None:
        self.registry = registry

    def __call__(self, stream_id: str) -> None:
        live = self.registry.streams.get(stream_id)
        if live is not None:
            live.stop(Cancelled())
