"""Server-Sent Events framing: pure functions from events to bytes.

Deliberate choices (do not "fix" without reading why):
- LF line endings only: every SSE parser accepts them and they are one byte shorter than CRLF.
- ``data`` is always one line of compact JSON (orjson never emits a raw newline), so no multi-line splitting.
- Every event carries ``id: <streamId>:<n>`` so a reconnecting ``EventSource`` resumes with ``Last-Event-ID``.
- A batch of events becomes one ``bytes``: the caller writes it in one syscall.
- Text that UTF-8 cannot carry (lone UTF-16 surrogates, which a ``str`` may hold) is sent as U+FFFD; a surrogate
  pair becomes the character it stands for. A bad character must not cost the client the whole event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from service.chat.events import Event
from service.well_formed import well_formed

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
    return b"%s%d\ndata: %s\n\n" % (prefix, sequence, _json(event.payload()))


def encode_batch(prefix: bytes, first_sequence: int, events: Sequence[Event]) -> bytes:
    """Events that are ready together, numbered from ``first_sequence``, in one buffer for one write."""
    if len(events) == 1:
        return encode_event(prefix, first_sequence, events[0])
    return b"".join(encode_event(prefix, first_sequence + offset, event) for offset, event in enumerate(events))


def encode_unnumbered(event: Event) -> bytes:
    """An event without ``id:``: a client's last event id stays where it was, so it can resume from there."""
    return b"data: %s\n\n" % _json(event.payload())


def _json(payload: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:  # a lone surrogate somewhere: the rare slow path
        return orjson.dumps(well_formed(payload))
