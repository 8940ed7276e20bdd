"""A WebSocket client for tests: simple-websocket's, with the raw text of each frame kept (for byte-exact checks)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from simple_websocket import Client, ConnectionClosed

WS = "/api/v1/ai/chat/ws"


@dataclass
class Frame:
    raw: str
    data: dict[str, Any]
    at: float

    @property
    def type(self) -> str:
        return str(self.data["type"])

    @property
    def id(self) -> str | None:
        value = self.data.get("id")
        return None if value is None else str(value)


def connect(base_url: str, headers: dict[str, str] | None = None, max_message_size: int | None = None) -> Client:
    url = base_url.replace("http://", "ws://") + WS
    return Client.connect(url, headers=headers or {}, max_message_size=max_message_size)


def send(client: Client, frame: dict[str, Any]) -> None:
    client.send(orjson.dumps(frame).decode())


def next_frame(client: Client, timeout: float = 10.0) -> Frame:
    raw = client.receive(timeout)
    assert raw is not None, "no frame in time"
    assert isinstance(raw, str), raw
    return Frame(raw, orjson.loads(raw), time.monotonic())


def until_end(client: Client, timeout: float = 10.0) -> list[Frame]:
    """The frames of one stream: through its ``done`` or stream ``error`` (one with an id, or after a metadata)."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while True:
        frame = next_frame(client, max(0.01, deadline - time.monotonic()))
        frames.append(frame)
        if frame.type == "done" or (frame.type == "error" and (frame.id or frames[0].type == "metadata")):
            return frames


def chat(client: Client, message: str, **body: Any) -> list[Frame]:
    send(client, {"type": "chat", "message": message, **body})
    return until_end(client)


def closed_with(client: Client, timeout: float = 5.0) -> int | None:
    """The close code once the server has closed the socket (None if it is still open after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.receive(0.05)
        except ConnectionClosed:
            return int(client.close_reason)
        if not client.connected:
            return int(client.close_reason)
    return None
