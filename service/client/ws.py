"""The WebSocket transport of ``ChatClient`` (``transport="ws"``): one socket for every turn of the client, the same
events as over SSE, and a dropped socket resumed on a new one with ``lastEventId``.

It needs simple-websocket (``pip install simple-websocket``, or the checkout's ``ws`` extra), imported only when
this transport is chosen: the SSE client keeps needing httpx and httpx-sse alone.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from service.client.errors import ERRORS, ChatClientError, ConnectionFailed, UnexpectedError
from service.client.events import Done, Event, Metadata, StreamError, parse_event

PATH = "/api/v1/ai/chat/ws"


def refusal(error: dict[str, Any]) -> ChatClientError:
    """A frame's refusal (an ``error`` event without ``id``) as the exception an HTTP answer would have raised."""
    code, message, details = str(error.get("code")), str(error.get("message")), error.get("details")
    retry_after = details.get("retryAfter") if isinstance(details, dict) else None
    return ERRORS.get(code, UnexpectedError)(code, message, None, retry_after, details)


class Unreachable(ConnectionFailed):
    """The WebSocket could not be opened: no turn was sent, so falling back to ``POST /chat`` cannot run one twice."""


class WsTransport:
    """Holds the socket (opened at the first turn, opened again after a drop) and runs turns on it."""

    def __init__(self, base_url: str, token: str | None, timeout: float, max_retries: int, backoff: float) -> None:
        from simple_websocket import Client  # only for this transport

        self.client_class = Client
        self.url = base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + PATH
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.socket: Any = None
        self.last_event_id: str | None = None

    def close(self) -> None:
        socket, self.socket = self.socket, None
        if socket is not None and socket.connected:
            with contextlib.suppress(Exception):  # already closing: nothing to tell the server
                socket.close()

    def _open(self) -> Any:
        if self.socket is None or not self.socket.connected:
            try:
                # pings every ``timeout`` s: a peer that stops answering them closes the socket (the server's own
                # heartbeats are pings too, which never reach ``receive``, so it waits without a deadline)
                self.socket = self.client_class.connect(
                    self.url, headers=self.headers, ping_interval=self.timeout, thread_class=_DaemonThread
                )
            except Exception as exc:  # refused, or the upgrade answered with an HTTP error
                raise Unreachable("connection_failed", f"Could not open the WebSocket ({exc})") from exc
        return self.socket

    def _send(self, frame: dict[str, Any]) -> None:
        self._open().send(json.dumps(frame))

    def stream(self, body: dict[str, Any]) -> Iterator[Event]:
        """One turn's events, each once; a drop after the stream began is resumed on a new socket."""
        self.last_event_id = None
        frame: dict[str, Any] = {"type": "chat", **body}
        try:
            yield from self._turn(frame)
        except ChatClientError as error:
            if isinstance(error, ConnectionFailed):
                self.close()
            raise  # a refusal ends the turn, not the socket
        except BaseException:  # the caller stopped reading: the socket may still carry the rest, so drop it
            self.close()
            raise

    def _turn(self, frame: dict[str, Any]) -> Iterator[Event]:
        from simple_websocket import ConnectionClosed

        stream_id, seen, attempt = None, -1, 0
        while True:
            try:
                self._send(frame)
                for data in self._frames():
                    if "id" not in data and data.get("type") == "error":
                        raise refusal(data.get("error") or {})
                    sequence = _sequence(str(data.get("id", "")))
                    if sequence is not None and sequence <= seen:
                        continue  # replayed after a resume: the caller has it
                    if sequence is not None:
                        seen, self.last_event_id, attempt = sequence, str(data["id"]), 0
                    event = parse_event(data)
                    if isinstance(event, Metadata):
                        stream_id = event.stream_id
                    if event is not None:
                        yield event
                    if isinstance(event, Done | StreamError):
                        return
            except (ConnectionClosed, ConnectionFailed, OSError) as exc:
                self.close()
                attempt += 1
                if isinstance(exc, Unreachable) and (stream_id is None or attempt > self.max_retries):
                    raise
                if stream_id is None or attempt > self.max_retries:
                    raise ConnectionFailed("connection_failed", f"The WebSocket stream was lost ({exc})") from exc
                time.sleep(self.backoff * 2 ** (attempt - 1))
                frame = {"type": "resume", "streamId": stream_id, "lastEventId": self.last_event_id or ""}

    def _frames(self) -> Iterator[dict[str, Any]]:
        from simple_websocket import ConnectionClosed

        while True:
            raw = self.socket.receive()
            if raw is None:
                raise ConnectionClosed(self.socket.close_reason, self.socket.close_message)
            yield json.loads(raw)

    def cancel(self, stream_id: str | None = None) -> None:
        """Cancel the stream this socket carries (or ``stream_id``); its events end with ``cancelled``."""
        self._send({"type": "cancel", **({"streamId": stream_id} if stream_id else {})})


class _DaemonThread(threading.Thread):
    """The library's reader thread, which must not keep a finished program alive: after ``close`` it may wait out
    the rest of a ping interval before it notices."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, daemon=True, **kwargs)


def _sequence(event_id: str) -> int | None:
    tail = event_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None
