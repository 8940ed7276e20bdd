"""An OpenAI-compatible upstream that sends each whole reply, headers and all, in one write (as a fast local model
can): the case where tokens come in with the response headers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

WORDS = [f"w{index} " for index in range(5)]


def _reply() -> bytes:
    chunks: list[dict[str, object]] = [{"choices": [{"index": 0, "delta": {"content": word}}]} for word in WORDS]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    payload = b"".join(b"data: %s\n\n" % json.dumps(chunk).encode() for chunk in chunks) + b"data: [DONE]\n\n"
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    )


def _answer(connection: socket.socket) -> None:
    with connection:
        received = b""
        while b"\r\n\r\n" not in received:
            received += connection.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += connection.recv(65536)
        connection.sendall(_reply())


@contextmanager
def one_write_upstream() -> Iterator[str]:
    """Serve until the block ends; yields the base URL for the SDK."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            _answer(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stopping.set()
        thread.join(5)
        listener.close()
