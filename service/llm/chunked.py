"""HTTP/1.1 chunked transfer decoding (RFC 9112 section 7.1), every complete chunk of a read at once.

Why not h11's own reader: it turns each chunk (one per token on an OpenAI stream) into an event, with a regex,
a validation and several calls each; profiled under load it was a quarter of the service's CPU. Here a read
becomes one ``bytes`` of body with a ``find`` and a slice per chunk. The framing rules are h11's: hex sizes only,
extensions ignored, CRLF after each chunk's data, trailers read and dropped, and anything else is an error.
"""

from __future__ import annotations

import re

import h11

MAX_LINE = 4096  # a chunk-size line or trailer line longer than this is not an HTTP server talking
_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class ChunkedDecoder:
    """Feed it the bytes that follow the response headers; it returns the body bytes they complete.

    ``done`` turns True once the last chunk and its trailers are read; ``leftover`` holds what came after them.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.in_chunk = 0  # bytes of the current chunk's data still to come
        self.need_crlf = False  # the CRLF that closes a chunk's data is next
        self.in_trailers = False
        self.done = False
        self.leftover = b""

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.leftover += data
            return b""
        buffer = self.buffer
        buffer += data
        size = len(buffer)
        parts: list[bytes | bytearray] = []
        position = 0
        in_chunk, need_crlf = self.in_chunk, self.need_crlf  # locals in the loop: it runs once per token
        find, is_size = buffer.find, _SIZE.fullmatch
        while True:
            if in_chunk:
                end = min(size, position + in_chunk)
                parts.append(buffer[position:end])
                in_chunk -= end - position
                position = end
                if in_chunk:
                    break
                need_crlf = True
            if need_crlf:
                if size - position < 2:
                    break
                if buffer[position] != 13 or buffer[position + 1] != 10:
                    raise h11.RemoteProtocolError("chunk data not followed by CRLF")
                position += 2
                need_crlf = False
            line_end = find(b"\r\n", position)
            if line_end < 0:
                if size - position > MAX_LINE:
                    raise h11.RemoteProtocolError("chunk header line too long")
                break
            line = buffer[position:line_end]
            position = line_end + 2
            if self.in_trailers:
                if not line:  # the blank line after the trailers: the body is complete
                    self.done = True
                    self.leftover = bytes(buffer[position:])
                    position = size
                    break
                continue
            if is_size(line) is None:  # the usual bare size failed: extensions, or whitespace, or garbage
                line = line.split(b";", 1)[0].rstrip(b" \t")
                if is_size(line) is None:
                    raise h11.RemoteProtocolError(f"bad chunk size line {bytes(line[:40])!r}")
            in_chunk = int(line, 16)
            if not in_chunk:
                self.in_trailers = True
        self.in_chunk, self.need_crlf = in_chunk, need_crlf
        del buffer[:position]
        return b"".join(parts)
