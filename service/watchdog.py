"""One timer greenlet per stream: heartbeat, idle timeout, longest stream, and the client's socket.

A WSGI generator learns of a gone client only when a write fails, and a silent model means no writes; so
the watchdog waits on the client socket itself and stops the stream (closing the upstream request) the
moment the peer hangs up. Nothing here runs per token: the pump only stamps ``last_token_at``.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

import gevent
from gevent.socket import wait_read

from service.errors import Cancelled, IdleTimeout, StreamError
from service.live import LiveStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    heartbeat: float
    idle_timeout: float
    max_seconds: float


class _Tick(Exception):
    """The wait for the client socket ended by timer, not by the socket."""


def peer_closed(sock: socket.socket) -> bool | None:
    """True if the peer hung up, False if it sent data, None if nothing is readable."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return None
    except OSError:
        return True


def watch(live: LiveStream, timing: Timing, client: socket.socket | None = None) -> None:
    """Run until the stream is done; stop it on idle, on the time cap, or when ``client`` hangs up."""
    started = time.monotonic()
    while not live.done:
        now = time.monotonic()
        deadline = min(
            live.last_write_at + timing.heartbeat,
            live.last_token_at + timing.idle_timeout,
            started + timing.max_seconds,
        )
        if client is not None:
            try:
                wait_read(client.fileno(), timeout=max(0.0, deadline - now), timeout_exc=_Tick)
            except _Tick:
                pass
            except OSError:
                client = None
            else:
                gone = peer_closed(client)
                if gone is None:
                    continue
                client = None  # data or hang-up: either way, stop watching the socket
                if gone:
                    _stop(live, Cancelled("The client disconnected before the reply finished."))
                    continue
        else:
            gevent.sleep(max(0.0, deadline - now))
        if live.done:
            return
        now = time.monotonic()
        if now - live.last_token_at >= timing.idle_timeout:
            _stop(live, IdleTimeout(f"The model sent nothing for {timing.idle_timeout:g} s."))
        elif now - started >= timing.max_seconds:
            _stop(live, IdleTimeout(f"The reply took longer than the {timing.max_seconds:g} s limit."))
        elif now - live.last_write_at >= timing.heartbeat:
            live.ping()


def _stop(live: LiveStream, error: StreamError) -> bool:
    """Stop and wait for the pump to save; if it is between reads (saving), look again shortly."""
    if live.stop(error):
        log.info("stream %s stopped: %s", live.stream_id, error.code)
        live.wait()
        return True
    if not live.done:
        gevent.sleep(0.05)
    return live.done
