"""ChatClient: talks to one service, resumes dropped streams by ``Last-Event-ID`` and falls back to the
non-streaming endpoint when a stream cannot start."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import connect_sse

from service.client.errors import ConnectionFailed, NotFound, error_from
from service.client.events import (
    METADATA_KEYS,
    ChatResult,
    Done,
    Event,
    Metadata,
    StreamError,
    parse_event,
    usage_of,
)
from service.client.ws import Unreachable, WsTransport

API = "/api/v1/ai"
CHAT_READ_TIMEOUT = 330.0  # a non-streaming reply arrives whole, after up to the server's 300 s stream cap
RESULT_KEYS = ("conversationId", "messageId", "content", "model", "finishReason")
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)  # the request surely never reached the server


class ChatClient:
    """Talks to one service; ``stream()`` resumes dropped streams and falls back to ``chat()``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        transport: str = "sse",
    ) -> None:
        """``transport``: ``"sse"`` (a request per turn) or ``"ws"`` (every turn over one WebSocket; needs
        simple-websocket). The events, errors and retries are the same either way."""
        if transport not in ("sse", "ws"):
            raise ValueError(f"transport must be 'sse' or 'ws', not {transport!r}")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.last_event_id: str | None = None  # of the current stream: what a resume sends as Last-Event-ID
        self.ws = WsTransport(base_url.rstrip("/"), token, timeout, max_retries, backoff) if transport == "ws" else None

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ws is not None:
            self.ws.close()
        self.http.close()

    def _request(self, method: str, path: str, retries: int | None = None, **kwargs: Any) -> httpx.Response:
        """Retry only failures to connect: any other retry might run a chat turn twice."""
        retries = self.max_retries if retries is None else retries
        for attempt in range(1, retries + 2):
            try:
                response = self.http.request(method, API + path, **kwargs)
            except CONNECT_ERRORS as exc:
                if attempt > retries:
                    raise ConnectionFailed("connection_failed", f"Could not reach the service ({exc})") from exc
                time.sleep(self.backoff * 2 ** (attempt - 1))
                continue
            except httpx.TransportError as exc:
                raise ConnectionFailed("connection_failed", f"The connection failed ({exc})") from exc
            if response.is_error:
                raise error_from(response)
            return response
        raise AssertionError("unreachable")

    def chat(self, message: str, conversation_id: str | None = None, model: str | None = None) -> ChatResult:
        """The whole reply in one body: for callers (and networks) that cannot stream."""
        return self._chat(_body(message, conversation_id, model))

    def _chat(self, body: dict[str, Any], retries: int | None = None) -> ChatResult:
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, CHAT_READ_TIMEOUT))
        raw = self._request("POST", "/chat", retries, json=body, timeout=timeout).json()
        conversation_id, message_id, content, model, finish = (str(raw.get(key, "")) for key in RESULT_KEYS)
        reasoning = raw.get("reasoning")
        reasoning = reasoning if isinstance(reasoning, str) else None
        usage, cached = usage_of(raw.get("usage")), raw.get("cached") is True
        return ChatResult(conversation_id, message_id, content, model, finish, usage, cached, reasoning, raw=raw)

    def conversations(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/conversations").json()["conversations"])

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/conversations/{conversation_id}").json())

    def delete_conversation(self, conversation_id: str) -> None:
        self._request("DELETE", f"/conversations/{conversation_id}")

    def cancel(self, stream_id: str) -> None:
        """Stop a generation; its readers get a ``cancelled`` error event."""
        self._request("DELETE", f"/chat/stream/{stream_id}")

    def stream(self, message: str, conversation_id: str | None = None, model: str | None = None) -> Iterator[Event]:
        """Events as they arrive, each once: a dropped connection resumes with ``Last-Event-ID``.

        A stream that cannot start (refused connection, 502/503/504, an answer that is not SSE) becomes
        ``chat()``'s reply as events. A ``server_shutdown`` error is resumed, and yielded only if that fails.
        """
        body = _body(message, conversation_id, model)
        if self.ws is not None:
            yield from self._stream_ws(body)
            return
        self.last_event_id, stream_id, seen, attempt = None, None, -1, 0
        shutdown: StreamError | None = None
        while True:
            progressed = False
            try:
                with self._connect(body, stream_id, seen) as source:
                    response = source.response
                    if response.status_code != 200 or "text/event-stream" not in response.headers.get(
                        "content-type", ""
                    ):
                        response.read()
                        if stream_id is not None or response.status_code not in (200, 502, 503, 504):
                            raise error_from(response)
                        break  # the stream could not start: fall back below, outside this response
                    for sse in source.iter_sse():
                        sequence = _sequence(sse.id)
                        if not sse.data or (sequence is not None and sequence <= seen):
                            continue  # ``retry:`` blocks, and replayed events the caller already has
                        event = parse_event(json.loads(sse.data))
                        if isinstance(event, StreamError) and event.code == "server_shutdown" and stream_id:
                            shutdown = event
                            raise httpx.RemoteProtocolError("server_shutdown")  # resume with Last-Event-ID
                        if sequence is not None:
                            seen, self.last_event_id, progressed = sequence, sse.id, True
                        if isinstance(event, Metadata):
                            stream_id = event.stream_id
                        if event is not None:
                            yield event
                        if isinstance(event, Done | StreamError):
                            return
                    raise httpx.RemoteProtocolError("The stream ended before its done or error event.")
            except (httpx.TransportError, NotFound) as exc:
                if isinstance(exc, NotFound) and shutdown is None:
                    raise
                attempt = 1 if progressed else attempt + 1
                if shutdown and (attempt > self.max_retries or isinstance(exc, NotFound)):
                    yield shutdown  # the stream could not be found again: the error stands
                    return
                if stream_id is None and not isinstance(exc, CONNECT_ERRORS):
                    raise ConnectionFailed("connection_failed", f"The stream failed before it began ({exc})") from exc
                if attempt > self.max_retries:
                    if stream_id is None:
                        break  # never connected: try the non-streaming endpoint once
                    raise ConnectionFailed("connection_failed", f"The stream was lost and not resumed ({exc})") from exc
                time.sleep(self.backoff * 2 ** (attempt - 1))
        yield from self._fallback(body)

    def _stream_ws(self, body: dict[str, Any]) -> Iterator[Event]:
        """Over the WebSocket; a turn that cannot reach it at all falls back to ``chat()`` as over SSE."""
        assert self.ws is not None
        try:
            for event in self.ws.stream(body):
                self.last_event_id = self.ws.last_event_id
                yield event
        except Unreachable:
            yield from self._fallback(body)

    def _connect(self, body: dict[str, Any], stream_id: str | None, seen: int) -> Any:
        if stream_id is None:
            return connect_sse(self.http, "POST", f"{API}/chat/stream", json=body)
        headers = {"Last-Event-ID": self.last_event_id or f"{stream_id}:{seen}"}
        return connect_sse(self.http, "GET", f"{API}/chat/stream/{stream_id}", headers=headers)

    def _fallback(self, body: dict[str, Any]) -> Iterator[Event]:
        """``chat()`` as the events a stream would have sent (no stream id: there is no stream)."""
        raw = self._chat(body, retries=0).raw
        wire: list[dict[str, Any]] = [
            {"type": "metadata", "streamId": "", **{key: raw.get(key, "") for key in METADATA_KEYS[1:]}},
            *([{"type": "reasoning", "content": raw["reasoning"]}] if raw.get("reasoning") else []),
            {"type": "token", "content": raw.get("content", "")},
            {"type": "done", "finishReason": raw.get("finishReason"), "usage": raw.get("usage")},
        ]
        yield from (event for event in map(parse_event, wire) if event is not None)


def _body(message: str, conversation_id: str | None, model: str | None) -> dict[str, Any]:
    extra = {"conversationId": conversation_id, "model": model}
    return {"message": message, **{key: value for key, value in extra.items() if value}}


def _sequence(event_id: str) -> int | None:
    """``n`` of ``<streamId>:<n>``: replayed events at or below the last one seen are dropped."""
    tail = event_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None
