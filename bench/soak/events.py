"""Reading a service stream as it arrives: its events one at a time, so a client can stop anywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass(frozen=True, slots=True)
class Event:
    stream_id: str
    sequence: int
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data.get("type"))

    @property
    def last_event_id(self) -> str:
        return f"{self.stream_id}:{self.sequence}"


def _parse(block: bytes) -> Event | None:
    """One SSE block: ``id`` and ``data`` lines; comments (``: ping``) and ``retry`` alone are no event."""
    event_id, data = b"", b""
    for line in block.split(b"\n"):
        if line.startswith(b"id:"):
            event_id = line[3:].strip()
        elif line.startswith(b"data:"):
            data = line[5:].strip()
    if not data:
        return None
    stream_id, _, sequence = event_id.decode().partition(":")
    return Event(stream_id, int(sequence) if sequence else -1, orjson.loads(data))


class EventReader:
    """Events of one response body, in order; ``next`` gives None once the body has ended."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks: AsyncIterator[bytes] = response.aiter_bytes()
        self._buffer = b""
        self._at = 0  # where the unread part of the buffer starts (a big read holds thousands of events)

    async def next(self) -> Event | None:
        while True:
            end = self._buffer.find(b"\n\n", self._at)
            if end >= 0:
                block, self._at = self._buffer[self._at : end], end + 2
                event = _parse(block)
                if event is not None:
                    return event
                continue
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                return None
            self._buffer, self._at = self._buffer[self._at :] + chunk, 0
