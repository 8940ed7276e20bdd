"""One watchdog per stream: heartbeat, idle timeout, longest stream, the client's socket and its writes.

A WSGI generator learns of a gone client only when a write fails, and a silent model means no writes; so
the watchdog waits on the client socket itself and, the moment the peer hangs up, starts the resume grace (or,
with none, stops the stream and closes the upstream request). It also ends a stream nobody came back to read
within the grace. Nothing here runs per token: the stream only stamps ``last_token_at`` and, around each write,
``writing_since``. Stopping never blocks here: ``LiveStream.stop`` interrupts the stream's greenlet from the hub.
A stream blocked writing to a client that does not read cannot be interrupted there: the send guard cuts such a
write after ``send_timeout``, and the longest-stream limit shuts the connection itself, so it holds then too.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

import gevent

from service.errors import Cancelled, IdleTimeout
from service.relay.live import CLIENT_GONE, LiveStream
from service.relay.send_guard import Watched, hang_up, send_guard

log = logging.getLogger(__name__)
MIN_DELAY = 0.01
STOPPING_DELAY = 0.25


@dataclass(frozen=True)
class Timing:
    heartbeat: float
    idle_timeout: float
    max_seconds: float
    resume_grace: float = 0.0
    send_timeout: float = 30.0  # longest a write to a client may wait for it to read


def peer_closed(sock: socket.socket) -> bool | None:
    """True if the peer hung up, False if it sent data, None if nothing is readable."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return None
    except OSError:
        return True


class Watchdog:
    """A timer and, for the stream's owner, a read watcher on the client socket: libev watchers whose
    callbacks run in the hub, so a stream costs no extra greenlet (and no greenlet stack) for this."""

    def __init__(self, live: LiveStream, timing: Timing, client: socket.socket | None = None) -> None:
        self.live = live
        self.timing = timing
        self.started = time.monotonic()
        self.loop = gevent.get_hub().loop
        self.timer: Any = None
        self.reader: Any = None
        self.guarded: Watched | None = None
        self.client = client
        if client is not None:
            self.reader = self.loop.io(client.fileno(), 1)
            self.reader.start(self._on_readable)
            self.guarded = send_guard(timing.send_timeout).watch(live, client)
        live.on_done.append(self._stream_ended)
        live.rearm = self._arm
        # this timer ends a silent stream (idle timeout) before any read timeout would: the upstream's reads
        # need no timer of their own (gevent arms and cancels one per wait otherwise)
        live.chat.untimed_reads()
        self._arm()

    def _arm(self) -> None:
        live, timing = self.live, self.timing
        if live.done:
            return
        deadline = min(live.last_write_at + timing.heartbeat, self.started + timing.max_seconds)
        if live.writing_since is None:  # while a write waits the model is not read: no idle deadline
            deadline = min(deadline, live.last_token_at + timing.idle_timeout)
        if live.unread_since is not None:
            deadline = min(deadline, live.unread_since + timing.resume_grace)
        delay = max(MIN_DELAY, deadline - time.monotonic())
        if live.chat.stopping:
            delay = max(delay, STOPPING_DELAY)  # already ending: look again later rather than spin
        if self.timer is not None:
            self.timer.close()
        self.timer = self.loop.timer(delay)
        self.timer.start(self._on_timer)

    def _on_timer(self) -> None:
        live, timing = self.live, self.timing
        if live.done:
            self._stream_ended()
            return
        now = time.monotonic()
        if live.writing_since is None and now - live.last_token_at >= timing.idle_timeout:
            live.stop(IdleTimeout(f"The model sent nothing for {timing.idle_timeout:g} s."))
        elif now - self.started >= timing.max_seconds:
            live.stop(IdleTimeout(f"The reply took longer than the {timing.max_seconds:g} s limit."))
            if live.writing_since is not None and self.client is not None:
                hang_up(self.client)  # the owner waits on a client that does not read: end that wait too
        elif live.unread_since is not None and now - live.unread_since >= timing.resume_grace:
            if live.mirror is not None:  # a reader may have come back through another host: ask Redis first
                live.unread_since = None  # not asked again until the answer is in
                gevent.spawn(self._end_unless_read_elsewhere)
            else:
                self._end_unread()
        elif now - live.last_write_at >= timing.heartbeat:
            live.ping()
        self._arm()

    def _end_unread(self) -> None:
        grace = self.timing.resume_grace
        if self.live.stop(Cancelled(f"The client left and did not come back within {grace:g} s.")):
            log.info("stream %s stopped: no reader came back within %g s", self.live.stream_id, grace)

    def _end_unless_read_elsewhere(self) -> None:
        """In its own greenlet (the timer's callback runs in the hub, which must not wait on Redis)."""
        live = self.live
        if live.done or live.readers:  # ended, or a reader came back to this host meanwhile
            return
        if live.mirror is not None and live.mirror.read_elsewhere():
            live.unread_since = time.monotonic()  # look again after another grace
            self._arm()
        else:
            self._end_unread()

    def _on_readable(self) -> None:
        if self.client is None or self.reader is None:
            return
        gone = peer_closed(self.client)
        if gone is None:
            return
        self.reader.close()  # data or hang-up: either way, stop watching the socket for reads
        self.reader = None
        if not gone:
            return
        if self.live.outlives_client():
            self.live.detach()  # generation goes on; the grace deadline is armed
        elif self.live.stop(Cancelled(CLIENT_GONE)):
            log.info("stream %s stopped: client gone", self.live.stream_id)

    def release_client(self) -> None:
        """Stop watching the client socket: call before the server may close or reuse it."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.guarded is not None:
            send_guard(self.timing.send_timeout).forget(self.guarded)
            self.guarded = None
        self.client = None

    def _stream_ended(self) -> None:
        """The stream is over: its timer and the client's read watcher go. The send guard stays on the client until
        the server has written the response's end (``release_client``): that write, too, may meet a client that
        stopped reading, and without the guard it would wait for as long as the client stays connected."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.timer is not None:
            self.timer.close()
            self.timer = None
