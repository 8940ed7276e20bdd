"""A small byte-level decoder for the upstream's SSE: bytes in, ``data`` payloads out.

Why not httpx-sse: it decodes to ``str`` and builds an object per event; the relay needs only the raw
``data`` bytes to hand to orjson. Supports LF and CRLF line endings, comments, multi-line ``data`` (joined
with LF, as the SSE spec says), lines split across reads, and the WHATWG rules' corners: a leading byte-order
mark, and a bare ``data`` line (an empty value). Other fields (``event``, ``id``,
``retry``) are ignored: OpenAI-compatible servers signal everything inside the JSON.
"""

from __future__ import annotations

BOM = b"\xef\xbb\xbf"


class SSEDataDecoder:
    __slots__ = ("_data", "_pending", "_started")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._started = False  # a first line has been read (only it may start with a byte-order mark)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the ``data`` of every event completed by ``chunk``, in order."""
        if self._pending:
            chunk = self._pending + chunk
        lines = chunk.split(b"\n")
        self._pending = lines.pop()
        if not self._started and lines:
            self._started = True
            lines[0] = lines[0].removeprefix(BOM)
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line == b"data":
                data.append(b"")
        return events

    def flush(self) -> list[bytes]:
        """End of input: an event missing its final blank line still counts."""
        tail = self.feed(b"\n\n") if self._pending or self._data else []
        return tail
