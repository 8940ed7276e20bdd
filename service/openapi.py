"""The OpenAPI document, built from the marshmallow schemas so that it cannot drift from validation."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from service import schemas

_ERRORS = {
    "400": "validation_error or unsafe_input",
    "401": "unauthorized",
    "404": "not_found",
    "413": "payload_too_large",
    "415": "unsupported_media_type",
    "429": "rate_limited (see Retry-After)",
    "503": "upstream_unavailable",
}
_EVENT_STREAM = {
    "description": "Server-Sent Events: metadata, token…, then one done or error (see WIRE.md). "
    "Each event has `id: <streamId>:<n>`; `: ping` comments keep quiet streams open.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


def _errors(*codes: str) -> dict[str, Any]:
    return {
        code: {"description": _ERRORS[code], "content": {"application/json": {"schema": "Error"}}} for code in codes
    }


def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="Chat streaming gateway",
        version="1.0.0",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Streams AI chat replies token by token over Server-Sent Events."},
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    for name, schema in {
        "ChatRequest": schemas.ChatRequestSchema,
        "ChatResponse": schemas.ChatResponseSchema,
        "Error": schemas.ErrorSchema,
        "Conversation": schemas.ConversationSchema,
        "ConversationDetail": schemas.ConversationDetailSchema,
        "ConversationList": schemas.ConversationListSchema,
    }.items():
        spec.components.schema(name, schema=schema)
    body = {"required": True, "content": {"application/json": {"schema": "ChatRequest"}}}
    all_errors = _errors("400", "401", "404", "413", "415", "429", "503")
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    spec.path(
        path="/api/v1/ai/chat/stream",
        operations={
            "post": {
                "summary": "Stream a reply",
                "requestBody": body,
                "security": secured,
                "responses": {"200": _EVENT_STREAM, **all_errors},
            }
        },
    )
    stream_id = {"name": "streamId", "in": "path", "required": True, "schema": {"type": "string"}}
    last_event = {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}}
    spec.path(
        path="/api/v1/ai/chat/stream/{streamId}",
        operations={
            "get": {
                "summary": "Resume a stream after Last-Event-ID",
                "parameters": [stream_id, last_event],
                "security": secured,
                "responses": {"200": _EVENT_STREAM, **_errors("400", "401", "404")},
            },
            "delete": {
                "summary": "Cancel a stream",
                "parameters": [stream_id],
                "security": secured,
                "responses": {"204": {"description": "cancelled"}, **_errors("401", "404")},
            },
        },
    )
    spec.path(
        path="/api/v1/ai/chat",
        operations={
            "post": {
                "summary": "The whole reply as one JSON body (non-streaming fallback)",
                "requestBody": body,
                "security": secured,
                "responses": {
                    "200": {"description": "the reply", "content": {"application/json": {"schema": "ChatResponse"}}},
                    **all_errors,
                },
            }
        },
    )
    conversation_id = {"name": "conversationId", "in": "path", "required": True, "schema": {"type": "string"}}
    spec.path(
        path="/api/v1/ai/conversations",
        operations={
            "get": {
                "summary": "The caller's conversations, newest first",
                "security": secured,
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {
                    "200": {
                        "description": "conversations",
                        "content": {"application/json": {"schema": "ConversationList"}},
                    },
                    **_errors("400", "401"),
                },
            }
        },
    )
    spec.path(
        path="/api/v1/ai/conversations/{conversationId}",
        operations={
            "get": {
                "summary": "One conversation with its messages, oldest first",
                "parameters": [conversation_id],
                "security": secured,
                "responses": {
                    "200": {
                        "description": "the conversation",
                        "content": {"application/json": {"schema": "ConversationDetail"}},
                    },
                    **_errors("401", "404"),
                },
            },
            "delete": {
                "summary": "Delete a conversation",
                "parameters": [conversation_id],
                "security": secured,
                "responses": {"204": {"description": "deleted"}, **_errors("401", "404")},
            },
        },
    )
    for path, summary in (("/healthz", "Process up"), ("/readyz", "Dependencies usable"), ("/metrics", "Prometheus")):
        spec.path(path=path, operations={"get": {"summary": summary, "responses": {"200": {"description": "ok"}}}})
    document: dict[str, Any] = spec.to_dict()
    return document
