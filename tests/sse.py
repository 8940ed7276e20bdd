"""A tiny SSE reader for tests: events with the time each arrived."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Received:
    id: str | None
    data: dict[str, Any]
    at: float

    @property
    def type(self) -> str:
        return str(self.data["type"])


def read_events(response: httpx.Response) -> Iterator[Received]:
    event_id: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith("id:"):
            event_id = _value(line[3:])
        elif line.startswith("data:"):
            data.append(_value(line[5:]))
        elif line == "" and data:
            yield Received(event_id, json.loads("\n".join(data)), time.monotonic())
            event_id, data = None, []


def _value(field: str) -> str:
    """A field's value: the SSE rules drop one leading space and keep everything else, spaces included."""
    return field[1:] if field.startswith(" ") else field


def stream(base_url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[Received]:
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{base_url}/api/v1/ai/chat/stream", json=body, headers=headers or {}) as response,
    ):
        assert response.status_code == 200, response.read()
        return list(read_events(response))


def raw_stream(base_url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """Start a stream on a plain socket and return it after the first bytes (to hang up at will)."""
    return open_raw_stream(base_url, body, headers)[0]


def open_raw_stream(base_url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
    """Start a stream on a plain socket: the socket, and the first bytes it received (headers, maybe events)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    payload = json.dumps(body).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(
        f"POST /api/v1/ai/chat/stream HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\n{extra}Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200"), first[:200]
    return sock, first
