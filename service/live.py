"""Live streams: one producer greenlet per chat turn, any number of readers, replay by event id.

The producer ("pump") runs ``ChatStream.events()``, frames each batch once, appends it to the stream's
replay buffer and hands it to every reader's queue. The POST that started the stream is simply the first
reader; ``GET /stream/<id>`` with ``Last-Event-ID`` is another, from any point. Reading from a queue (not
from the upstream socket) is what lets a reader's connection send ``: ping`` while the model is silent.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import gevent
from gevent.queue import SimpleQueue

from service.api.sse import PING, encode_batch, event_prefix, retry_field
from service.chat.service import ChatStream
from service.errors import Cancelled, ServerShutdown, StreamError
from service.shared_streams import StreamMirror, split_after

log = logging.getLogger(__name__)
END: Final = b""


class LiveStream:
    """The shared state of one running (or recently finished) stream."""

    def __init__(self, chat: ChatStream, mirror: StreamMirror | None = None) -> None:
        self.chat = chat
        self.mirror = mirror  # set when streams are shared across hosts (Redis)
        self.stream_id = chat.metadata.stream_id
        self.user_id = chat.request.user_id
        self.batches: list[bytes] = []
        self.first_sequences: list[int] = []
        self.next_sequence = 0
        self.readers: list[SimpleQueue[bytes]] = []
        self.done = False
        self.finished_at = 0.0
        self.last_token_at = self.last_write_at = time.monotonic()
        self.pump: gevent.Greenlet[[], None] | None = None
        self.on_done: list[Callable[[], None]] = []

    def start(self) -> None:
        self.pump = gevent.spawn(self._run)
        self.pump.link_exception(_log_death)

    def _run(self) -> None:
        prefix = event_prefix(self.stream_id)
        try:
            for events in self.chat.events():
                self._publish(encode_batch(prefix, self.next_sequence, events), len(events))
        finally:
            self.done = True
            self.finished_at = time.monotonic()
            for callback in self.on_done:
                callback()
            if self.mirror is not None:
                self.mirror.close()
            for reader in self.readers:
                reader.put(END)

    def _publish(self, data: bytes, count: int) -> None:
        if self.mirror is not None:
            self.mirror.publish(self.next_sequence, data)
        self.batches.append(data)
        self.first_sequences.append(self.next_sequence)
        self.next_sequence += count
        self.last_token_at = self.last_write_at = time.monotonic()
        for reader in self.readers:
            reader.put(data)

    def ping(self) -> None:
        """Keep quiet connections open (heartbeat); costs nothing while tokens flow."""
        self.last_write_at = time.monotonic()
        for reader in self.readers:
            reader.put(PING)

    def stop(self, error: StreamError) -> bool:
        """End the stream with ``error`` unless it is already ending; True if this call stops it.

        Only a pump that is reading the upstream is interrupted (never one that is saving); one that has
        not begun reading is told to stop when it does.
        """
        if self.done or self.pump is None or self.chat.finished:
            return False
        self.chat.stop_requested = error
        if self.chat.interruptible:
            gevent.get_hub().loop.run_callback(self._interrupt, error)
        return True

    def _interrupt(self, error: StreamError) -> None:
        """Runs in the hub: throws into the pump only if it is still reading *now*. (``Greenlet.kill`` would
        throw whenever the pump next waits — possibly in the middle of saving the reply.)"""
        pump = self.pump
        if pump is not None and not pump.dead and self.chat.interruptible:
            pump.throw(error)

    def wait(self, timeout: float | None = None) -> None:
        if self.pump is not None:
            self.pump.join(timeout)

    def read(self, after: int = -1) -> Iterator[bytes]:
        """The ``retry`` field, every event after sequence ``after``, then live events until the end."""
        queue: SimpleQueue[bytes] = SimpleQueue()
        yield retry_field()
        backlog = self._backlog(after)
        if not self.done:
            self.readers.append(queue)
        try:
            if backlog:
                yield backlog
            if self.done:
                return
            get, ready = queue.get, queue.qsize
            while True:
                item = get()
                if item is END:
                    return
                if ready():  # this reader fell behind: what is queued goes out in one write
                    items = [item]
                    while ready():
                        item = get()
                        if item is END:
                            yield b"".join(items)
                            return
                        items.append(item)
                    item = b"".join(items)
                yield item
        finally:
            if queue in self.readers:
                self.readers.remove(queue)

    def _backlog(self, after: int) -> bytes:
        """Events after ``after``: whole batches, and the tail of the batch that ``after`` falls in."""
        return b"".join(
            split_after(first, data, after) for first, data in zip(self.first_sequences, self.batches, strict=True)
        )


def _log_death(greenlet: gevent.Greenlet[[], None]) -> None:
    log.error("stream pump died", exc_info=greenlet.exc_info)  # type: ignore[arg-type]


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


class CancelRelay:
    """Cancels published by any host stop the stream here if this worker runs it."""

    def __init__(self, registry: StreamRegistry) -> None:
        self.registry = registry

    def __call__(self, stream_id: str) -> None:
        live = self.registry.streams.get(stream_id)
        if live is not None:
            live.stop(Cancelled())
