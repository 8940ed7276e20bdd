"""A Python client and command line for the chat service (docs/protocol.md): typed events, resume and fallback.

Stands alone (httpx + httpx-sse only) so other programs can copy it; run ``python -m service.client "hi"``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import connect_sse

API = "/api/v1/ai"
CHAT_READ_TIMEOUT = 330.0  # a non-streaming reply arrives whole, after up to the server's 300 s stream cap
METADATA_KEYS = ("streamId", "conversationId", "messageId", "model")
RESULT_KEYS = ("conversationId", "messageId", "content", "model", "finishReason")
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)  # the request surely never reached the server


@dataclass(frozen=True, kw_only=True)
class _Wire:
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # as received, for --json


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False


@dataclass(frozen=True)
class Metadata(_Wire):
    stream_id: str
    conversation_id: str
    message_id: str
    model: str
    omitted_turns: int = 0  # earlier messages the service left out of the model's context to fit its window


@dataclass(frozen=True)
class Token(_Wire):
    content: str


@dataclass(frozen=True)
class Done(_Wire):
    finish_reason: str
    usage: Usage
    tokens_per_second: float | None


@dataclass(frozen=True)
class StreamError(_Wire):
    code: str
    message: str
    retryable: bool


Event = Metadata | Token | Done | StreamError


@dataclass(frozen=True)
class ChatResult(_Wire):
    conversation_id: str
    message_id: str
    content: str
    model: str
    finish_reason: str
    usage: Usage


class ChatClientError(Exception):
    """A refusal before any stream began (the protocol's JSON errors), or a network failure after retries."""

    code = "error"

    def __init__(
        self, code: str, message: str, status: int | None = None, retry_after: float | None = None, details: Any = None
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.retry_after = code, message, status, retry_after
        self.details: dict[str, Any] = details if isinstance(details, dict) else {}


class ValidationFailed(ChatClientError):
    code = "validation_error"


class ContextTooLong(ChatClientError):
    """Not an outage: the message and the conversation do not fit the model's window. Start a new conversation
    (``conversation_id=None``) or send a shorter message; retrying as is fails the same way."""

    code = "context_too_long"


class UnsafeInput(ChatClientError):
    code = "unsafe_input"


class Unauthorized(ChatClientError):
    code = "unauthorized"


class NotFound(ChatClientError):
    code = "not_found"


class PayloadTooLarge(ChatClientError):
    code = "payload_too_large"


class UnsupportedMediaType(ChatClientError):
    code = "unsupported_media_type"


class RateLimited(ChatClientError):
    code = "rate_limited"  # ``retry_after``: seconds, from the Retry-After header


class UpstreamRejected(ChatClientError):
    """The provider refused the request itself (its credentials, the model name): the service's operator must
    act; retrying does not help."""

    code = "upstream_rejected"


class UpstreamUnavailable(ChatClientError):
    code = "upstream_unavailable"


ERRORS = {cls.code: cls for cls in ChatClientError.__subclasses__()}  # the protocol's codes only: defined above


class ConnectionFailed(ChatClientError):
    code = "connection_failed"  # not a protocol code: the service could not be reached, or kept dropping


class UnexpectedError(ChatClientError):
    code = "unexpected"  # any other answer: an unknown code, or a body not in the protocol's error shape


def error_from(response: httpx.Response) -> ChatClientError:
    """Map ``{"error": {"code", "message", "details"}}`` (or anything else) to its exception class."""
    try:
        body = response.json()["error"]
        code, message, details = str(body["code"]), str(body["message"]), body.get("details")
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", f"The server answered {response.status_code}.", None
    try:
        retry_after: float | None = float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        retry_after = None
    return ERRORS.get(code, UnexpectedError)(code, message, response.status_code, retry_after, details)


def _usage(raw: Any) -> Usage:
    raw = raw if isinstance(raw, dict) else {}
    prompt, completion = int(raw.get("promptTokens", 0)), int(raw.get("completionTokens", 0))
    return Usage(prompt, completion, int(raw.get("totalTokens", prompt + completion)), bool(raw.get("estimated")))


def parse_event(data: dict[str, Any]) -> Event | None:
    """One protocol event; None for types this client does not know (the protocol: ignore them)."""
    kind, error = data.get("type"), data.get("error") or {}
    if kind == "metadata":
        stream_id, conversation_id, message_id, model = (str(data.get(key, "")) for key in METADATA_KEYS)
        omitted = data.get("omittedTurns")
        omitted_turns = omitted if isinstance(omitted, int) else 0
        return Metadata(stream_id, conversation_id, message_id, model, omitted_turns, raw=data)
    if kind == "token":
        return Token(str(data.get("content", "")), raw=data)
    if kind == "done":
        return Done(str(data.get("finishReason")), _usage(data.get("usage")), data.get("tokensPerSecond"), raw=data)
    if kind == "error":
        return StreamError(str(error.get("code")), str(error.get("message")), bool(error.get("retryable")), raw=data)
    return None


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
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.last_event_id: str | None = None  # of the current stream: what a resume sends as Last-Event-ID

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
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
        return ChatResult(conversation_id, message_id, content, model, finish, _usage(raw.get("usage")), raw=raw)

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


def _sentence(text: str) -> str:
    text = text.strip() or "The request failed"
    return text if text.endswith((".", "!", "?")) else text + "."


def main(argv: list[str] | None = None) -> int:
    """The command line: print the reply as it streams; exit 0 on ``done``, 1 on any error."""
    parser = argparse.ArgumentParser(prog="python -m service.client", description="Chat with the service.")
    parser.add_argument("message")
    parser.add_argument("--url", default=os.environ.get("CHAT_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("CHAT_TOKEN"))
    parser.add_argument("--conversation", help="continue this conversation id")
    parser.add_argument("--model")
    parser.add_argument("--json", action="store_true", help="print each event as one JSON line")
    parser.add_argument("--no-stream", action="store_true", help="ask for the whole reply at once")
    args = parser.parse_args(argv)
    with ChatClient(args.url, args.token) as client:
        try:
            if args.no_stream:
                result = client.chat(args.message, args.conversation, args.model)
                print(json.dumps(result.raw) if args.json else result.content, flush=True)
                return 0
            for event in client.stream(args.message, args.conversation, args.model):
                if args.json:
                    print(json.dumps(event.raw), flush=True)
                elif isinstance(event, Metadata) and event.omitted_turns:
                    print(f"({event.omitted_turns} earlier messages left out to fit the model)", file=sys.stderr)
                elif isinstance(event, Token):
                    print(event.content, end="", flush=True)
                if isinstance(event, StreamError):
                    print("" if args.json else "\n", end="", flush=True)
                    print(_sentence(event.message), file=sys.stderr)
                    return 1
            if not args.json:
                print(flush=True)
            return 0
        except ContextTooLong as error:
            print(_sentence(error.message), file=sys.stderr)
            print("Start a new conversation (leave out --conversation) or send a shorter message.", file=sys.stderr)
            return 1
        except ChatClientError as error:
            print(_sentence(error.message), file=sys.stderr)
            return 1
        except BrokenPipeError:
            # the reader went away (``| head``): stop quietly, and keep Python from complaining at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


if __name__ == "__main__":
    sys.exit(main())
