"""Live streams: run in the connection that asked for them, followed by any number of other readers.

The POST that starts a stream runs it in its own greenlet (gunicorn's connection greenlet): ``run()`` pulls
``ChatStream.events()``, frames each batch once and writes it, and hands it to every other reader's queue.
No second greenlet (and no greenlet stack) per stream. ``GET /stream/<id>`` with ``Last-Event-ID`` is another
reader, from any point: its backlog is re-framed from the reply's parts, so a stream keeps no copy of its bytes.

While the model is silent the owner is blocked on the upstream socket; a heartbeat throws ``WakeUp`` into that
read (the only place it is thrown), which returns an empty batch that goes out as ``: ping``.

A client whose connection drops without a cancel has ``resume_grace`` seconds to come back with ``Last-Event-ID``:
the stream goes on meanwhile in a greenlet of its own (only then does it need one), and ends ``cancelled``, its
partial reply saved, if no reader is attached when the grace runs out. With a grace of 0 a drop ends it at once.

A client that stays connected but stops reading is another matter: the owner's write blocks. ``writing_since``
says since when; the send guard (``service.relay.send_guard``) ends the stream ``client_stalled`` when that
passes ``SEND_TIMEOUT_SECONDS``, and while a write blocks the model is not read, so the idle clock stands still.
Other readers each have a bounded queue: one that falls ``FOLLOWER_QUEUE_LIMIT`` batches behind gets a
``reader_behind`` error (without an id, so it resumes from its last event) and is let go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from typing import Final

import gevent
from gevent.event import Event as Signal
from gevent.queue import Full, SimpleQueue

from service.chat.events import Error
from service.chat.stream import ChatStream
from service.errors import Cancelled, ClientStalled, StreamError
from service.interrupts import WakeUp
from service.relay.mirror import StreamMirror
from service.relay.sse import PING, encode_batch, encode_event, encode_unnumbered, event_prefix, retry_field

log = logging.getLogger(__name__)
END: Final = b""
CLIENT_GONE = "The client disconnected before the reply finished."
FOLLOWER_QUEUE_LIMIT: Final = 256  # batches (and pings) a reader may have waiting before it is let go
READER_BEHIND: Final = encode_unnumbered(
    Error("reader_behind", "This reader fell behind the stream; resume from the last event id you have.", True)
)


class LiveStream:
    """The shared state of one running (or recently finished) stream.

    Sequence numbers: 0 is the metadata, 1..n the reply's n tokens and reasoning pieces (``chat.parts``), n + 1 the
    last event.
    Build it in the greenlet that will iterate ``owner_body()``: that greenlet runs the stream.
    """

    def __init__(
        self,
        chat: ChatStream,
        mirror: StreamMirror | None = None,
        resume_grace: float = 0.0,
        on_first_token: Callable[[ChatStream], None] | None = None,
    ) -> None:
        self.chat = chat
        self.on_first_token = on_first_token  # told once, when the first token has been written to the client
        self.resume_grace = resume_grace
        self.owner_gone = False  # the POST's client left without a cancel; generation goes on for a resume
        self.unread_since: float | None = None  # since when nobody reads a stream whose owner is gone
        self.rearm: Callable[[], None] | None = None  # the watchdog's: look at the deadlines again
        self.mirror = mirror  # set when streams are shared across hosts (Redis)
        self.stream_id = chat.metadata.stream_id
        self.user_id = chat.request.user_id
        self.prefix = event_prefix(self.stream_id)
        self.next_sequence = 0
        self.readers: list[SimpleQueue[bytes]] = []
        self.writing_since: float | None = None  # while the owner's client is being written to
        self.done = False
        self.finished_at = 0.0
        self.last_token_at = self.last_write_at = time.monotonic()
        self.owner = gevent.getcurrent()
        self.on_done: list[Callable[[], None]] = []

    def owner_body(self, on_close: Callable[[], None]) -> OwnerBody:
        return OwnerBody(self, on_close)

    def run(self) -> Generator[bytes, None, None]:
        """The owner's body: the ``retry`` field, each batch as it is ready, ``: ping`` while the model is silent."""
        events = self.chat.events()
        head = retry_field()  # goes out with the first batch (the metadata): one write, not two
        first_unwritten = True
        try:
            for batch in events:
                if batch:
                    data = encode_batch(self.prefix, self.next_sequence, batch)
                    self._publish(data, len(batch))
                else:  # woken by the heartbeat, which has already pinged the other readers
                    data = PING
                if head:
                    data, head = head + data, b""
                self.writing_since = time.monotonic()
                yield data
                # the model was not read while the write waited: that wait is not the model's silence
                self.last_token_at += time.monotonic() - self.writing_since
                self.writing_since = None
                del batch, data  # not kept alive while the stream waits for its next read
                if first_unwritten and self.chat.first_token_at:  # gunicorn has written it: it asked for more
                    first_unwritten = False
                    if self.on_first_token is not None:
                        self.on_first_token(self.chat)
            self.writing_since = time.monotonic()  # what gunicorn writes next, the body's end, is guarded too
        finally:
            events.close()  # a stream cut short is finished here: upstream closed, partial reply saved
            self.end()

    def _publish(self, data: bytes, count: int) -> None:
        self._deliver(data)  # before anything that could yield to another greenlet
        if self.mirror is not None:
            self.mirror.publish(self.next_sequence, data)
        self.next_sequence += count
        self.last_token_at = self.last_write_at = time.monotonic()

    def end(self) -> None:
        """Finish the turn if it never ran, send its last event to the other readers if it was cut short, and
        let go of everything (idempotent: the body's ``close`` calls it whether or not it was iterated)."""
        if self.done:
            return
        chat = self.chat
        if not chat.finished:  # never iterated: the client left before the first write
            chat.finish(Cancelled(CLIENT_GONE))
        final = chat.final_event
        if final is not None and 0 < self.next_sequence <= len(chat.parts) + 1:
            self._publish(encode_event(self.prefix, len(chat.parts) + 1, final), 1)
        self.done = True
        self.finished_at = time.monotonic()
        self.rearm = None  # the watchdog's method: holding it past the end is a cycle (watchdog.live is this)
        callbacks, self.on_done = self.on_done, []
        for callback in callbacks:
            callback()
        if self.mirror is not None:
            self.mirror.close()
        self._deliver(END)

    def _deliver(self, data: bytes) -> None:
        """Queue ``data`` for every other reader; one whose queue is full is let go, never waited for."""
        behind: list[SimpleQueue[bytes]] = []
        for reader in self.readers:
            try:
                reader.put_nowait(data)
            except Full:
                behind.append(reader)
        for reader in behind:
            self._let_go(reader)

    def _let_go(self, reader: SimpleQueue[bytes]) -> None:
        """A reader that fell behind: what it has waiting is dropped (a resume replays it), it gets
        ``reader_behind`` and its end, and the stream goes on without it."""
        while not reader.empty():
            reader.get_nowait()
        reader.put_nowait(READER_BEHIND)
        reader.put_nowait(END)
        self._remove_reader(reader)
        log.info("stream %s: a reader fell %d batches behind and was let go", self.stream_id, FOLLOWER_QUEUE_LIMIT)

    def _remove_reader(self, reader: SimpleQueue[bytes]) -> None:
        if reader in self.readers:
            self.readers.remove(reader)
            if self.owner_gone and not self.readers and not self.done:
                self._unread()

    def stalled(self, seconds: float) -> None:
        """The send guard's call, in the hub: the owner's client has not taken a write for ``seconds``. The
        stream ends ``client_stalled`` once the guard has shut the connection and the write fails."""
        stalled = ClientStalled(f"The client stopped reading: a write waited {seconds:.0f} s.")
        if not self.chat.stopping and self.chat.interrupt(stalled):
            log.warning("stream %s stopped: its client read nothing for %.0f s", self.stream_id, seconds)

    def ping(self) -> None:
        """Keep quiet connections open (heartbeat); costs nothing while tokens flow."""
        self.last_write_at = time.monotonic()
        self._deliver(PING)
        if self.chat.wakeable:
            gevent.get_hub().loop.run_callback(self._wake)

    def _wake(self) -> None:
        """Runs in the hub: wakes the owner only if it is still blocked on the upstream *now*."""
        if not self.done and self.chat.wakeable:
            self.owner.throw(WakeUp())

    def stop(self, error: StreamError) -> bool:
        """End the stream with ``error`` unless it is already ending; True if this call stops it.

        Only an owner that is reading the upstream is interrupted (never one that is saving or writing); one that
        has not begun reading is told to stop when it does. The first reason stands: the hang-up that follows a
        stalled client's cut does not turn ``client_stalled`` into ``cancelled``.
        """
        if self.done or self.chat.stopping or not self.chat.interrupt(error):
            return False
        if self.chat.interruptible:
            gevent.get_hub().loop.run_callback(self._interrupt, error)
        return True

    def _interrupt(self, error: StreamError) -> None:
        """Runs in the hub: throws into the owner only if it is still reading *now*. (``Greenlet.kill`` would
        throw whenever it next waits — possibly in the middle of saving the reply.)"""
        if not self.done and self.chat.interruptible:
            self.owner.throw(error)

    def outlives_client(self) -> bool:
        """True when a dropped client leaves this stream running for a resume (not cancelled, not ending)."""
        return self.resume_grace > 0 and not self.done and not self.chat.finished and not self.chat.stopping

    def detach(self) -> None:
        """The owner's client is gone: the grace for a reader to come back starts now (if none is reading)."""
        if self.owner_gone:
            return
        self.owner_gone = True
        if not self.readers:
            self._unread()

    def _unread(self) -> None:
        self.unread_since = time.monotonic()
        if self.rearm is not None:
            self.rearm()

    def run_detached(self, items: Generator[bytes, None, None]) -> None:
        """Drive the stream on to its end after its connection closed, in this (new) greenlet: what it produces
        reaches the readers through ``_publish``; the owner's own writes have nowhere to go."""
        self.owner = gevent.getcurrent()
        try:
            for _ in items:
                pass
        finally:
            items.close()
            self.end()

    def wait(self, timeout: float | None = None) -> None:
        if self.done:
            return
        ended = Signal()
        self.on_done.append(ended.set)
        ended.wait(timeout)

    def read(self, after: int = -1) -> Iterator[bytes]:
        """The ``retry`` field, every event after sequence ``after``, then live events until the end."""
        queue: SimpleQueue[bytes] = SimpleQueue(FOLLOWER_QUEUE_LIMIT)
        yield retry_field()
        backlog = self._backlog(after)
        following = not self.done
        if following:
            self.readers.append(queue)
            self.unread_since = None
        try:
            if backlog:
                yield backlog
            # A reader taken on follows its queue to END even if the stream ended while the backlog was written:
            # what was published meanwhile (the last events, or ``reader_behind``) is in the queue, not the backlog.
            if not following:
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
            self._remove_reader(queue)

    def _backlog(self, after: int) -> bytes:
        """The published events after ``after``, framed again from the metadata, the parts and the last event."""
        chat, prefix = self.chat, self.prefix
        published = self.next_sequence
        frames: list[bytes] = []
        if after < 0 < published:
            frames.append(encode_event(prefix, 0, chat.metadata))
        tokens = min(len(chat.parts), max(published - 1, 0))
        frames.extend(
            encode_event(prefix, sequence, chat.parts.event(sequence - 1))
            for sequence in range(max(after + 1, 1), tokens + 1)
        )
        final = chat.final_event
        if final is not None and published > tokens + 1 > after:
            frames.append(encode_event(prefix, tokens + 1, final))
        return b"".join(frames)


class OwnerBody:
    """The POST's response body. gunicorn iterates ``run()`` directly and calls ``close`` however the response
    ends, even before its first write: the stream then ends too, unless it may outlive its client (resume grace)."""

    def __init__(self, live: LiveStream, on_close: Callable[[], None]) -> None:
        self.live = live
        self.items = live.run()
        self.on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return self.items

    def close(self) -> None:
        self.on_close()  # before gunicorn closes or reuses the socket
        live = self.live
        if live.outlives_client():  # the client dropped mid-reply: keep generating for a resume
            live.detach()
            gevent.spawn(live.run_detached, self.items)
            return
        self.items.close()
        live.end()
