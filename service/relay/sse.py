"""Server-Sent Events framing: pure functions from events to bytes.

Deliberate choices (do not "fix" without reading why):
- LF line endings only: every SSE parser accepts them and they are one byte shorter than CRLF.
- ``data`` is always one line of compact JSON (orjson never emits a raw newline), so no multi-line splitting.
- Every event carries ``id: <streamId>:<n>`` so a reconnecting ``EventSource`` resumes with ``Last-Event-ID``.
- A batch of events becomes one ``bytes``: the caller writes it in one syscall.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from service.chat.events import Event

RETRY_MS = 3000
PING = b": ping\n\n"
STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


def retry_field(milliseconds: int = RETRY_MS) -> bytes:
    return b"retry: %d\n\n" % milliseconds


def event_prefix(stream_id: str) -> bytes:
    """``b"id: <streamId>:"``, computed once per stream rather than once per event."""
    return b"id: %s:" % stream_id.encode()


def encode_event(prefix: bytes, sequence: int, event: Event) -> bytes:
    """One event as ``id:`` and ``data:`` lines and the blank line that ends it."""
    return b"%s%d\ndata: %s\n\n" % (prefix, sequence, orjson.dumps(event.payload()))


def encode_batch(prefix: bytes, first_sequence: int, events: Sequence[Event]) -> bytes:
    """Events that are ready together, numbered from ``first_sequence``, in one buffer for one write."""
    if len(events) == 1:
        return encode_event(prefix, first_sequence, events[0])
    return b"".join(encode_event(prefix, first_sequence + offset, event) for offset, event in enumerate(events))


def encode_unnumbered(event: Event) -> bytes:
    """An event without ``id:``: a client's last event id stays where it was, so it can resume from there."""
    return b"data: %s\n\n" % orjson.dumps(event.payload())
