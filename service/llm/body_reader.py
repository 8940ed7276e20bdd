"""Reads an upstream response body straight off its connection, keeping the connection's h11 state right.

Why: httpx2 and httpcore2 pass every HTTP chunk (one per token on an OpenAI stream) through six generator
layers, two context managers and a trace hook, and hand it over one chunk at a time. Here one ``recv`` becomes
one batch of every complete chunk it held. A chunked body (what OpenAI-style servers send) is decoded by
``ChunkedDecoder``, and h11 is then shown an empty last chunk so that it, too, sees the body end; any other body
goes through h11's own readers. Either way the connection ends in a clean state and goes back to the SDK's pool
for keep-alive as usual (the response is closed by its owner).

``body_chunks`` returns None, and the caller falls back to ``iter_raw()``, whenever the internals are not the
plain HTTP/1.1 ones this expects (HTTP/2, a proxy transport, a compressed body, another httpx2 version).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import h11

from service.llm.chunked import ChunkedDecoder

READ_BYTES = 65536
FIRST_READ_BYTES = 2048  # a stream's first batch: see ``_dechunked``


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
    if http_response.headers.get("transfer-encoding", "").lower() == "chunked" and _fresh_chunked_reader(state):
        return _dechunked(state, sock)
    return _chunks(state, sock)


def _fresh_chunked_reader(state: h11.Connection) -> bool:
    """h11 is about to read a chunked body and has read none of it (its reader's counters are at zero)."""
    reader = getattr(state, "_reader", None)
    return (
        type(reader).__name__ == "ChunkedReader"
        and getattr(reader, "_bytes_in_chunk", None) == 0
        and getattr(reader, "_bytes_to_discard", None) == b""
        and getattr(reader, "_reading_trailer", None) is False
        and hasattr(state, "_receive_buffer")
    )


def _dechunked(state: h11.Connection, sock: Any) -> Iterator[bytes]:
    """The body, one batch per read. The first batch comes from at most ``FIRST_READ_BYTES``: a fast upstream's
    first read can hold the whole reply, and parsing all of it before the first write would delay the first token
    by as much. Locals are emptied before each wait, so a stream that idles keeps no read alive."""
    decoder = ChunkedDecoder()
    buffered = state._receive_buffer  # body bytes that came in with the headers: they are ours now
    recv, feed = sock.recv, decoder.feed
    size = FIRST_READ_BYTES
    data = feed(bytes(buffered.maybe_extract_at_most(size) or b""))
    while not decoder.done:
        if data:
            yield data
            data = b""
            size = READ_BYTES
        if buffered:  # the rest of what came with the headers
            data = feed(bytes(buffered.maybe_extract_at_most(len(buffered)) or b""))
            continue
        try:
            received = recv(size)
        except WakeUp:
            yield b""
            continue
        if not received:
            raise h11.RemoteProtocolError("peer closed connection without sending complete message body")
        data = feed(received)
        received = b""
    leftover = decoder.leftover + bytes(buffered.maybe_extract_at_most(len(buffered)) or b"")
    state.receive_data(b"0\r\n\r\n")  # the body's end as h11 expects it, so the connection can be reused
    if not isinstance(state.next_event(), h11.EndOfMessage):
        raise h11.RemoteProtocolError("h11 did not see the end of the body")
    if leftover:
        state.receive_data(leftover)
    if data:
        yield data


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
