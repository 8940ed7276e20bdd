"""Chat views: stream, resume, cancel, and the non-streaming fallback. Thin: auth → schema → service."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Blueprint, Response, request

from service.api.errors import attach_error_handlers
from service.api.request_body import json_body
from service.api.request_id import attach_request_ids, request_id
from service.auth import current_user
from service.chat.stream import ChatRequest, ChatStream
from service.errors import (
    Cancelled,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from service.extensions import Services, services
from service.metrics import Metrics
from service.relay.live import LiveStream
from service.relay.send_guard import GuardedBody, send_guard
from service.relay.sse import STREAM_HEADERS
from service.relay.watchdog import Watchdog
from service.schemas import ChatRequestSchema, ChatResponseSchema, load
from service.tracing import RequestTrace, tracer

replies = logging.getLogger("service.replies")
bp = Blueprint("chat", __name__, url_prefix="/api/v1/ai")
attach_error_handlers(bp)
attach_request_ids(bp)
_schema = ChatRequestSchema()
_reply = ChatResponseSchema()
_LAST_EVENT_ID = re.compile(r"^(?P<stream>[0-9a-f]{32}):(?P<sequence>\d{1,9})$")


def _chat_request(found: Services, user_id: str) -> ChatRequest:
    body = json_body(found.settings.max_body_bytes, found.settings.request_read_timeout_seconds)
    return chat_request_from(found, user_id, body, request_id())


def chat_request_from(found: Services, user_id: str, given: Any, request_id_: str) -> ChatRequest:
    """A chat turn from its JSON body (a POST's, or a WebSocket ``chat`` frame's): the schema, then the model."""
    body = load(_schema, given)
    model = body["model"]
    if model is not None and model not in found.settings.allowed_models:
        raise InvalidRequest(
            "That model is not available.", {"model": [f"must be one of {list(found.settings.allowed_models)}"]}
        )
    conversation, regenerate, edit = body["conversationId"], body["regenerateMessageId"], body["editMessageId"]
    return ChatRequest(
        user_id,
        body["message"] or "",  # a regenerate's is the stored question's
        str(conversation) if conversation else None,
        model,
        request_id_,
        trace=_trace(),
        regenerate_id=str(regenerate) if regenerate else None,
        edit_id=str(edit) if edit else None,
    )


def _trace() -> RequestTrace | None:
    """A trace of this request when tracing is configured (``service.tracing``); else nothing at all."""
    found = tracer()
    if found is None:
        return None
    return RequestTrace(found, f"{request.method} {request.path}", {"http.request_id": request_id()})


class _StreamEnded:
    """A stream's end: its slot is released and it is counted. An object, not a closure: every open stream holds
    one."""

    __slots__ = ("metrics", "release")

    def __init__(self, release: Callable[[], None], metrics: Metrics) -> None:
        self.release = release
        self.metrics = metrics

    def __call__(self, chat: ChatStream) -> None:
        self.release()
        seconds = time.monotonic() - chat.started
        self.metrics.stream_ended(chat, seconds)
        log_reply(chat, seconds)
        trace = chat.request.trace
        if trace is not None:
            attributes = {"chat.model": chat.metadata.model, "chat.tokens": chat.tokens_relayed}
            trace.end(chat.outcome, chat.first_token_at, **attributes)


def log_reply(chat: ChatStream, seconds: float) -> None:
    """One line per finished reply: ids, counts and timings, never its text."""
    if not replies.isEnabledFor(logging.INFO):
        return
    metadata, tokens = chat.metadata, chat.tokens_relayed
    rate = chat.tokens_per_second(tokens, seconds)
    fields = {
        "request_id": chat.request.request_id,
        "user_id": chat.request.user_id,
        "conversation_id": metadata.conversation_id,
        "stream_id": metadata.stream_id,
        "model": metadata.model,
        "streamed": chat.streamed,
        "outcome": chat.outcome,
        "ttft_ms": chat.ttft_ms,
        "tokens": tokens,
        "tokens_per_second": None if rate is None else round(rate, 1),
        "duration_ms": round(seconds * 1000, 1),
    }
    replies.info("reply ended %s", " ".join(f"{name}={value}" for name, value in fields.items()), extra=fields)


def _open(found: Services, user_id: str) -> ChatStream:
    return open_chat(found, user_id, _chat_request(found, user_id))


def open_chat(found: Services, user_id: str, request_: ChatRequest) -> ChatStream:
    """Guards, then the service: budget and the open-stream cap are checked before any upstream call."""
    try:
        return _guarded_open(found, user_id, request_)
    except ServiceError as refused:
        if request_.trace is not None:
            request_.trace.end(refused.code)
        raise


def _guarded_open(found: Services, user_id: str, request_: ChatRequest) -> ChatStream:
    remaining_tokens = found.budget.check(user_id)
    release = found.slots.acquire(user_id)
    if release is None:
        limit = found.settings.max_streams_per_user
        raise RateLimited(f"You already have {limit} streams open; wait for one to finish.", 2, "streams")

    ended = _StreamEnded(release, found.metrics)
    try:
        chat = found.chat.open_stream(request_, meter=found.budget.meter(user_id, remaining_tokens), on_end=ended)
    except (UpstreamUnavailable, UpstreamRejected) as error:
        release()
        found.metrics.upstream_errors.labels(error.code).inc()
        raise
    except BaseException:
        release()
        raise
    found.metrics.stream_started(chat.metadata.model)
    return chat


def _event_stream(body: Iterable[bytes]) -> Response:
    """The SSE response: each yielded buffer is written and flushed by gunicorn as it comes."""
    response = Response(body, headers=STREAM_HEADERS, direct_passthrough=True)
    response.headers["Content-Type"] = STREAM_HEADERS["Content-Type"]  # not Flask's default text/html
    return response


@bp.post("/chat/stream")
def chat_stream() -> Response:
    """Stream a reply as Server-Sent Events (docs/protocol.md)."""
    found = services()
    user_id = current_user(found.auth)
    chat = _open(found, user_id)
    live, watchdog = start_live(found, chat, request.environ.get("gunicorn.socket"))  # runs as gunicorn iterates it
    return _event_stream(live.owner_body(watchdog.release_client))


def start_live(found: Services, chat: ChatStream, client: socket.socket | None) -> tuple[LiveStream, Watchdog]:
    """The opened stream made live: registered for resumes (and mirrored across hosts), watched by its watchdog.
    Call it in the greenlet that will run the stream (``LiveStream``)."""
    mirror = found.shared.mirror(chat) if found.shared else None
    live = LiveStream(chat, mirror, found.timing.resume_grace, found.metrics.first_token_written)
    found.streams.add(live)
    return live, Watchdog(live, found.timing, client)


@bp.get("/chat/stream/<stream_id>")
def resume_stream(stream_id: str) -> Response:
    """Replay the events after ``Last-Event-ID`` and follow the stream live."""
    found = services()
    user_id = current_user(found.auth)
    after = event_sequence(stream_id, request.headers.get("Last-Event-ID", ""), "Last-Event-ID")
    guard, connection = send_guard(found.timing.send_timeout), request.environ.get("gunicorn.socket")
    return _event_stream(GuardedBody(read_stream(found, stream_id, user_id, after), guard, connection))


def event_sequence(stream_id: str, last_event_id: str, field: str) -> int:
    """The sequence number in a last event id ``<streamId>:<n>`` of this stream; -1 for none (from the start)."""
    last_event_id = last_event_id.strip()
    if not last_event_id:
        return -1
    match = _LAST_EVENT_ID.match(last_event_id)
    if match is None or match["stream"] != stream_id:
        raise InvalidRequest(f"{field} must be '<streamId>:<n>' of this stream.", {field: ["malformed"]})
    return int(match["sequence"])


def read_stream(found: Services, stream_id: str, user_id: str, after: int) -> Iterator[bytes]:
    """A reader of the user's stream from after ``after``, wherever it runs (SSE bytes); ``NotFound`` if none."""
    live = found.streams.get(stream_id, user_id)
    if live is not None:
        return live.read(after)
    if found.shared is not None and found.shared.owned_by(stream_id, user_id):  # running on another host
        return found.shared.read(stream_id, after, found.settings.heartbeat_seconds)
    raise NotFound("No such stream.")


@bp.delete("/chat/stream/<stream_id>")
def cancel_stream(stream_id: str) -> tuple[str, int]:
    """Stop the generation and the upstream request; readers get a ``cancelled`` event."""
    found = services()
    cancel(found, stream_id, current_user(found.auth))
    return "", 204


def cancel(found: Services, stream_id: str, user_id: str) -> None:
    """Stop the user's stream wherever it runs; ``NotFound`` if there is none."""
    live = found.streams.get(stream_id, user_id)
    if live is not None:
        if live.stop(Cancelled()):
            live.wait(5)
        return
    if found.shared is not None and found.shared.owned_by(stream_id, user_id):  # running on another host
        found.shared.cancel(stream_id)
        return
    raise NotFound("No such stream.")


@bp.post("/chat")
def chat() -> dict[str, Any]:
    """The non-streaming fallback: the whole reply as one JSON body."""
    found = services()
    user_id = current_user(found.auth)
    reply: dict[str, Any] = _reply.dump(found.chat.chat(_open(found, user_id)))
    return reply
