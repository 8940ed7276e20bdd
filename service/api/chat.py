"""Chat views: stream, resume, cancel, and the non-streaming fallback. Thin: auth → schema → service."""

from __future__ import annotations

import re
from typing import Any

import gevent
from flask import Blueprint, Response, request

from service.api.request_body import json_body
from service.api.sse import STREAM_HEADERS
from service.chat.service import ChatRequest
from service.errors import Cancelled, InvalidRequest, NotFound
from service.extensions import Services, services
from service.live import LiveStream
from service.schemas import ChatRequestSchema, load
from service.watchdog import watch

bp = Blueprint("chat", __name__, url_prefix="/api/v1/ai")
_schema = ChatRequestSchema()
_LAST_EVENT_ID = re.compile(r"^(?P<stream>[0-9a-f]{32}):(?P<sequence>\d{1,9})$")


def _chat_request(found: Services, user_id: str) -> ChatRequest:
    body = load(_schema, json_body(found.settings.max_body_bytes))
    model = body["model"]
    if model is not None and model not in found.settings.allowed_models:
        raise InvalidRequest(
            "That model is not available.", {"model": [f"must be one of {list(found.settings.allowed_models)}"]}
        )
    conversation = body["conversationId"]
    return ChatRequest(user_id, body["message"], str(conversation) if conversation else None, model)


def _streaming_response(live: LiveStream, after: int) -> Response:
    response = Response(live.read(after), headers=STREAM_HEADERS, direct_passthrough=True)
    response.headers["Content-Type"] = STREAM_HEADERS["Content-Type"]
    return response


@bp.post("/chat/stream")
def chat_stream() -> Response:
    """Stream a reply as Server-Sent Events (WIRE.md)."""
    found = services()
    user_id = found.auth.user_for(request.headers.get("Authorization"))
    chat = found.chat.open_stream(_chat_request(found, user_id))
    live = LiveStream(chat)
    found.streams.add(live)
    live.start()
    gevent.spawn(watch, live, found.timing, request.environ.get("gunicorn.socket"))
    body = live.read()

    def owner_reader() -> Any:
        """The POST's reader: when it goes, the stream goes (upstream request included)."""
        try:
            yield from body
        finally:
            if not live.done:
                live.stop(Cancelled("The client disconnected before the reply finished."))

    response = Response(owner_reader(), headers=STREAM_HEADERS, direct_passthrough=True)
    response.headers["Content-Type"] = STREAM_HEADERS["Content-Type"]
    return response


@bp.get("/chat/stream/<stream_id>")
def resume_stream(stream_id: str) -> Response:
    """Replay the events after ``Last-Event-ID`` and follow the stream live."""
    found = services()
    user_id = found.auth.user_for(request.headers.get("Authorization"))
    after = -1
    last_event_id = request.headers.get("Last-Event-ID", "").strip()
    if last_event_id:
        match = _LAST_EVENT_ID.match(last_event_id)
        if match is None or match["stream"] != stream_id:
            raise InvalidRequest(
                "Last-Event-ID must be '<streamId>:<n>' of this stream.", {"Last-Event-ID": ["malformed"]}
            )
        after = int(match["sequence"])
    live = found.streams.get(stream_id, user_id)
    if live is None:
        raise NotFound("No such stream.")
    return _streaming_response(live, after)


@bp.delete("/chat/stream/<stream_id>")
def cancel_stream(stream_id: str) -> tuple[str, int]:
    """Stop the generation and the upstream request; readers get a ``cancelled`` event."""
    found = services()
    user_id = found.auth.user_for(request.headers.get("Authorization"))
    live = found.streams.get(stream_id, user_id)
    if live is None:
        raise NotFound("No such stream.")
    if live.stop(Cancelled()):
        live.wait(5)
    return "", 204


@bp.post("/chat")
def chat() -> dict[str, Any]:
    """The non-streaming fallback: the whole reply as one JSON body."""
    found = services()
    user_id = found.auth.user_for(request.headers.get("Authorization"))
    stream = found.chat.open_stream(_chat_request(found, user_id))
    return found.chat.chat(stream)
