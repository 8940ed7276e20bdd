"""Reads an upstream response body straight off its connection, keeping the connection's h11 state right.

Why: httpx2 and httpcore2 pass every HTTP chunk (one per token on an OpenAI stream) through six generator
layers, two context managers and a trace hook, and hand it over one chunk at a time. Here one ``recv`` becomes
one batch of every complete chunk it held. A chunked body (what OpenAI-style servers send) is decoded by
``ChunkedDecoder``, and h11 is then shown an empty last chunk so that it, too, sees the body end; any other body
goes through h11's own readers. Either way the connection ends in a clean state and goes back to the SDK's pool
for keep-alive as usual (the response is closed by its owner).

The readers are objects with a ``read`` method, not generators: a stream's greenlet keeps every generator it is
suspended in (its frame, and a slice of C stack per layer), for the whole life of the stream.

``body_reader`` falls back to httpx2's own ``iter_bytes()`` whenever the internals are not the plain HTTP/1.1 ones
this expects (HTTP/2, a proxy transport, a compressed body, another httpx2 version); it decodes what a compressing
proxy sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import h11

from service.interrupts import WakeUp
from service.llm.chunked import ChunkedDecoder

READ_BYTES = 65536
FIRST_READ_BYTES = 2048  # a stream's first batch: see ``ChunkedBodyReader``


class BodyReader(Protocol):
    def read(self, wait: bool = True) -> bytes | None:
        """The body bytes of the next network read; ``b""`` when woken (or, with ``wait=False``, when nothing is
        on hand without waiting); None once the body has ended."""

    def settimeout(self, seconds: float | None) -> None:
        """How long one wait for the upstream may last (None: no limit, and no timer armed per read)."""


def body_reader(http_response: Any, timeout: float | None) -> BodyReader:
    try:
        connection = http_response.stream._stream._httpcore_stream._stream._connection
        state = connection._h11_state
        sock = connection._network_stream.get_extra_info("socket")
    except AttributeError:
        return HttpxReader(http_response.iter_bytes())
    if not isinstance(state, h11.Connection) or sock is None:
        return HttpxReader(http_response.iter_bytes())
    if http_response.headers.get("content-encoding", "identity").lower() != "identity":
        return HttpxReader(http_response.iter_bytes())
    sock.settimeout(timeout)
    if http_response.headers.get("transfer-encoding", "").lower() == "chunked" and _fresh_chunked_reader(state):
        return ChunkedBodyReader(state, sock)
    return H11BodyReader(state, sock)


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


class ChunkedBodyReader:
    """A chunked body, one batch per read. The first batch comes from at most ``FIRST_READ_BYTES``: a fast
    upstream's first read can hold the whole reply, and parsing all of it before the first write would delay the
    first token by as much. Body bytes that came in with the headers are read first, without waiting."""

    __slots__ = ("_decoder", "_ended", "_size", "_sock", "_state")

    def __init__(self, state: h11.Connection, sock: Any) -> None:
        self._state = state
        self._sock = sock
        self._decoder = ChunkedDecoder()
        self._size = FIRST_READ_BYTES
        self._ended = False

    def read(self, wait: bool = True) -> bytes | None:
        decoder = self._decoder
        buffered = self._state._receive_buffer  # body bytes that came in with the headers: they are ours
        while not decoder.done:
            if buffered:
                data = decoder.feed(bytes(buffered.maybe_extract_at_most(self._size) or b""))
            elif not wait:
                return b""
            else:
                try:
                    received = self._sock.recv(self._size)
                except WakeUp:
                    return b""
                if not received:
                    raise h11.RemoteProtocolError("peer closed connection without sending complete message body")
                data = decoder.feed(received)
            if data:
                self._size = READ_BYTES
                return data
        if not self._ended:
            self._ended = True
            self._end(decoder.leftover + bytes(buffered.maybe_extract_at_most(len(buffered)) or b""))
        return None

    def _end(self, leftover: bytes) -> None:
        """Show h11 the body's end as it expects it, so the connection can be reused, then what followed it."""
        state = self._state
        state.receive_data(b"0\r\n\r\n")
        if not isinstance(state.next_event(), h11.EndOfMessage):
            raise h11.RemoteProtocolError("h11 did not see the end of the body")
        if leftover:
            state.receive_data(leftover)

    def settimeout(self, seconds: float | None) -> None:
        self._sock.settimeout(seconds)


class H11BodyReader:
    """Any other body, through h11's own readers: every ``Data`` event a read completes, joined."""

    __slots__ = ("_ended", "_sock", "_state")

    def __init__(self, state: h11.Connection, sock: Any) -> None:
        self._state = state
        self._sock = sock
        self._ended = False

    def read(self, wait: bool = True) -> bytes | None:
        next_event, data_type, need_data = self._state.next_event, h11.Data, h11.NEED_DATA
        parts: list[bytes] = []
        while not self._ended:
            event = next_event()
            if type(event) is data_type:
                parts.append(event.data)  # type: ignore[union-attr]
                continue
            if event is need_data:
                if parts:
                    break
                if not wait:
                    return b""
                try:
                    received = self._sock.recv(READ_BYTES)
                except WakeUp:
                    return b""
                self._state.receive_data(received)  # b"" at EOF: h11 then raises for a body cut short
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                self._ended = True
        if parts:
            return b"".join(parts)
        return None

    def settimeout(self, seconds: float | None) -> None:
        self._sock.settimeout(seconds)


class HttpxReader:
    """httpx2's own ``iter_bytes()``, for what the readers above do not handle: it decodes a compressed body and
    sets its own timeouts."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, wait: bool = True) -> bytes | None:
        if not wait:
            return b""
        return next(self._chunks, None)

    def settimeout(self, seconds: float | None) -> None:
        pass
