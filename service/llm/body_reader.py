"""Reads an upstream response body straight off its connection, driving the connection's own h11 state.

Why: httpx2 and httpcore2 pass every HTTP chunk (one per token on an OpenAI stream) through six generator
layers, two context managers and a trace hook, and hand it over one chunk at a time. Here one ``recv`` becomes
one batch of every complete chunk it held. h11 still parses the framing, so when the body ends the connection is
in a clean state and goes back to the SDK's pool for keep-alive as usual (the response is closed by its owner).

``body_chunks`` returns None, and the caller falls back to ``iter_raw()``, whenever the internals are not the
plain HTTP/1.1 ones this expects (HTTP/2, a proxy transport, a compressed body, another httpx2 version).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import h11

READ_BYTES = 65536


class WakeUp(Exception):
    """Thrown into a greenlet blocked in this reader's ``recv``: the reader yields ``b""`` at once and goes on
    reading. This is how a stream's heartbeat reaches the greenlet that waits on a silent model."""


def body_chunks(http_response: Any, timeout: float | None) -> Iterator[bytes] | None:
    try:
        connection = http_response.stream._stream._httpcore_stream._stream._connection
        state = connection._h11_state
        sock = connection._network_stream.get_extra_info("socket")
    except AttributeError:
        return None
    if not isinstance(state, h11.Connection) or sock is None:
        return None
    if http_response.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    sock.settimeout(timeout)
    return _chunks(state, sock)


def _chunks(state: h11.Connection, sock: Any) -> Iterator[bytes]:
    next_event, receive, recv = state.next_event, state.receive_data, sock.recv
    data_type, need_data = h11.Data, h11.NEED_DATA
    while True:
        parts: list[bytes] = []
        while True:
            event = next_event()
            if event is need_data:
                break
            if type(event) is data_type:
                parts.append(event.data)  # type: ignore[union-attr]
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                if parts:
                    yield b"".join(parts)
                return
        if parts:
            yield b"".join(parts)
        try:
            data = recv(READ_BYTES)
        except WakeUp:
            yield b""
            continue
        receive(data)  # b"" at EOF: h11 then raises for a body cut short
