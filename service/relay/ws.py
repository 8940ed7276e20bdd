"""WebSocket transport: the SSE stream's events as WebSocket text frames, one JSON object a frame.

The library is simple-websocket (wsproto underneath): maintained, sans-I/O parsing by wsproto, and it takes the
connection straight from gunicorn's environ (``gunicorn.socket``), so it runs on the gevent worker with no server
of its own (its reader "thread" is a greenlet once gevent has patched ``threading``). It does the handshake, reads
and reassembles the client's frames, answers pings and close frames, and bounds a message's size.

The server's frames are framed here rather than by wsproto: a chat turn is a ``LiveStream`` whose owner yields SSE
bytes (one buffer per batch of events), and every other reader, a resume from SSE or WS alike, reads those bytes
too; ``sse_frames`` turns a buffer into WebSocket frames by slicing, so a frame's JSON is the SSE ``data`` line's
byte for byte, with the ``id:`` line's value as its first member (``{"id":"<streamId>:<n>",...}``). The frame
header is two to ten bytes; the cost per token stays that of SSE plus a slice and a join, with no message
object per event. ``: ping`` becomes a WebSocket ping, ``retry:`` has no counterpart and is dropped.
Compression (permessage-deflate) is not offered: a token's frame is some 40 bytes, and zlib per frame would cost
more CPU than it saves bytes.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import orjson
from gevent.lock import Semaphore
from simple_websocket import ConnectionClosed, Server

from service.chat.events import Error
from service.errors import Cancelled, ServiceError
from service.relay.live import CLIENT_GONE, LiveStream
from service.relay.send_guard import GuardedBody, send_guard
from service.relay.sse import PING

log = logging.getLogger(__name__)
PING_FRAME: Final = b"\x89\x00"  # a WebSocket ping with no payload: the heartbeat
GOING_AWAY: Final = 1001
POLICY_VIOLATION: Final = 1008
NORMAL: Final = 1000
_EXTENSIONS_HEADER = "HTTP_SEC_WEBSOCKET_EXTENSIONS"


class ChannelClosed(Exception):
    """The WebSocket is closed (by either side): nothing more can be sent."""


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (RFC 6455 5.2): what a server sends."""
    size = len(payload)
    if size < 126:
        return b"\x81%c%s" % (size, payload)
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def sse_frames(data: bytes) -> bytes:
    """An SSE buffer (``id:`` + ``data:`` events, unnumbered events, ``: ping``, ``retry:``) as WebSocket frames."""
    if data == PING:
        return PING_FRAME
    frames: list[bytes] = []
    for block in data.split(b"\n\n"):
        if block.startswith(b"id: "):
            split = block.index(b"\n")
            # "id: <id>\ndata: {...}" → {"id":"<id>",...}: the id is hex and digits, nothing to escape
            frames.append(text_frame(b'{"id":"%s",%s' % (block[4:split], block[split + 8 :])))
        elif block.startswith(b"data: "):
            frames.append(text_frame(block[6:]))
        elif block == b": ping":
            frames.append(PING_FRAME)
    return b"".join(frames)


def error_frame(error: ServiceError) -> bytes:
    """A refusal as an ``error`` event (no ``id``: it belongs to no stream), with the error's ``details``."""
    retryable = error.retryable or getattr(error, "status", 0) in (429, 503)
    payload = Error(error.code, error.message, retryable).payload()
    if error.details:
        payload["error"]["details"] = error.details
    return text_frame(orjson.dumps(payload))


def json_frame(payload: Mapping[str, Any]) -> bytes:
    return text_frame(orjson.dumps(payload))


class WsChannel:
    """One accepted WebSocket: frames in (simple-websocket's reader greenlet), frames out (here, one lock so that
    writes from a turn, a resume and the session never interleave). ``writing_since`` is for the send guard."""

    def __init__(self, environ: Mapping[str, Any], max_message_size: int) -> None:
        offered = {key: value for key, value in environ.items() if key != _EXTENSIONS_HEADER}  # no compression
        self.server = Server(offered, max_message_size=max_message_size)
        self.socket: socket.socket = environ["gunicorn.socket"]
        self.lock = Semaphore()
        self.writing_since: float | None = None
        self.closed = False

    def send(self, frames: bytes) -> None:
        if self.closed or not self.server.connected:
            self.closed = True
            raise ChannelClosed()
        with self.lock:
            self.writing_since = time.monotonic()
            try:
                self.socket.sendall(frames)
            except OSError:
                self.closed = True
                raise ChannelClosed() from None
            finally:
                self.writing_since = None

    def stalled(self, seconds: float) -> None:
        """The send guard's call (a session frame, not a stream, waited): the guard shuts the connection."""
        log.info("a WebSocket client read nothing for %.0f s: its connection is closed", seconds)

    def receive(self, timeout: float) -> str | bytes | None:
        """The client's next message, or None after ``timeout`` s; ``ChannelClosed`` once the socket is."""
        try:
            message: str | bytes | None = self.server.receive(timeout)
        except ConnectionClosed:
            self.closed = True
            raise ChannelClosed() from None
        if message is None and not self.server.connected:
            self.closed = True
            raise ChannelClosed()
        return message

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Send a close frame with ``code`` (once) and stop sending."""
        if self.closed:
            return
        self.closed = True
        with self.lock, contextlib.suppress(ConnectionClosed, OSError):  # the peer is already gone
            self.server.close(code, reason)
        self.server.event.set()  # a ``receive`` waiting in another greenlet returns now, not at its timeout


class OwnedTurn:
    """A chat turn run by this socket: the ``LiveStream``'s owner, in the greenlet that built it. Its batches go
    out as frames; when the socket closes mid-reply the stream ends (upstream closed, partial reply saved), or,
    within the resume grace, goes on for a reader to come back, exactly as an SSE owner does (``OwnerBody``)."""

    def __init__(self, live: LiveStream, channel: WsChannel, release_client: Callable[[], None]) -> None:
        self.live = live
        self.channel = channel
        self.release_client = release_client  # the watchdog's: stop watching the socket

    def run(self) -> None:
        live, send = self.live, self.channel.send
        items = live.run()
        try:
            for data in items:
                send(sse_frames(data))
        except ChannelClosed:
            self.release_client()
            if live.outlives_client():  # the client dropped mid-reply: keep generating for a resume
                live.detach()
                live.run_detached(items)
                return
        finally:
            self.release_client()
            items.close()  # a no-op after a normal end; otherwise upstream closed, partial reply saved
            live.end()

    def client_gone(self) -> None:
        """The socket closed while the turn runs (seen by the session before any write fails)."""
        self.release_client()
        live = self.live
        if live.outlives_client():
            live.detach()
        elif live.stop(Cancelled(CLIENT_GONE)):
            log.info("stream %s stopped: WebSocket client gone", live.stream_id)


def follow(items: Iterator[bytes], channel: WsChannel, send_timeout: float) -> None:
    """A resumed stream's events (from this worker's ``LiveStream`` or another host's replay) to the socket, its
    writes watched by the send guard like an SSE reader's."""
    body = GuardedBody(items, send_guard(send_timeout), channel.socket)
    try:
        for data in body:
            channel.send(sse_frames(data))
    except ChannelClosed:
        pass
    finally:
        body.close()
