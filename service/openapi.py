"""The OpenAPI document, built from the marshmallow schemas so that it cannot drift from validation."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from service import schemas

_ERRORS = {
    "400": "validation_error, unsafe_input or context_too_long",
    "401": "unauthorized",
    "403": "forbidden",
    "404": "not_found",
    "408": "request_timeout (the body did not arrive in time)",
    "413": "payload_too_large",
    "415": "unsupported_media_type",
    "429": "rate_limited (see Retry-After)",
    "502": "upstream_rejected (the provider refused the request itself; not retryable)",
    "503": "upstream_unavailable, database_unavailable or shared_state_unavailable (see Retry-After)",
}
_EVENT_STREAM = {
    "description": "Server-Sent Events: metadata, reasoning… and token…, then one done or error (docs/protocol.md). "
    "Each event has `id: <streamId>:<n>`; `: ping` comments keep quiet streams open.",
    # OpenAPI 3.0 has a text/event-stream schema describe each event (its fields after SSE parsing).
    "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/StreamEvent"}}},
}
_WEBSOCKET = (
    "A WebSocket (send `Upgrade: websocket`, `Connection: Upgrade`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version: "
    "13`) that carries many chat turns, one JSON object per text frame (docs/protocol.md, *WebSocket*). The client "
    'sends `{"type":"chat","message":...,"conversationId":...,"model":...}` (a `ChatRequest` with a `type`), '
    '`{"type":"cancel"}`, `{"type":"resume","streamId":...,"lastEventId":...}`, `{"type":"ping"}`, and, without '
    'an `Authorization` header, first `{"type":"auth","token":...}`. The server sends the stream\'s events as '
    "`StreamEventData` with the SSE `id` as an `id` member first, `pong`, and `error` events (without `id`) for "
    "refused frames."
)
_USAGE_FIELDS = ("promptTokens", "completionTokens", "totalTokens")
# What a stream event's ``data`` holds (one line of compact JSON); a client ignores types and fields it does not know.
_EVENT_DATA: dict[str, dict[str, Any]] = {
    "MetadataEvent": {
        "required": ["type", "streamId", "conversationId", "messageId", "model"],
        "properties": {
            "streamId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "conversationId": {"type": "string", "format": "uuid"},
            "messageId": {"type": "string", "format": "uuid"},
            "model": {"type": "string"},
            "requestId": {"type": "string"},
            "omittedTurns": {"type": "integer", "minimum": 1},
            "cached": {"type": "boolean", "enum": [True]},
        },
    },
    "TokenEvent": {"required": ["type", "content"], "properties": {"content": {"type": "string"}}},
    "ReasoningEvent": {
        "required": ["type", "content"],
        "properties": {
            "content": {"type": "string", "description": "A piece of the model's reasoning, apart from the answer."}
        },
    },
    "DoneEvent": {
        "required": ["type", "finishReason", "usage", "tokensPerSecond"],
        "properties": {
            "finishReason": {"type": "string"},
            "usage": {
                "type": "object",
                "required": list(_USAGE_FIELDS),
                "properties": {
                    **{name: {"type": "integer", "minimum": 0} for name in _USAGE_FIELDS},
                    "reasoningTokens": {"type": "integer", "minimum": 1},
                    "estimated": {"type": "boolean"},
                },
            },
            "tokensPerSecond": {"type": "number", "nullable": True},
        },
    },
    "ErrorEvent": {
        "required": ["type", "error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "retryable"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "retryable": {"type": "boolean"},
                },
            }
        },
    },
}


def _stream_event_schemas() -> dict[str, dict[str, Any]]:
    """``StreamEvent`` (one SSE event as a client's parser sees it) and the JSON shapes its ``data`` carries."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, shape in _EVENT_DATA.items():
        kind = name.removesuffix("Event").lower()
        properties = {"type": {"type": "string", "enum": [kind]}, **shape["properties"]}
        shapes[name] = {"type": "object", "required": shape["required"], "properties": properties}
    shapes["StreamEventData"] = {
        "description": "The JSON in a stream event's `data`, told apart by `type`.",
        "oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in _EVENT_DATA],
        "discriminator": {
            "propertyName": "type",
            "mapping": {name.removesuffix("Event").lower(): f"#/components/schemas/{name}" for name in _EVENT_DATA},
        },
    }
    shapes["StreamEvent"] = {
        "type": "object",
        "required": ["id", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{32}:[0-9]+$", "description": "`<streamId>:<n>`"},
            "event": {"type": "string", "enum": ["message"]},
            "data": {"type": "string", "description": "One line of compact JSON: a `StreamEventData`."},
            "retry": {"type": "integer"},
        },
    }
    return shapes


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _json(_ERRORS[code], "Error") for code in codes}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _secured(summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    """An operation that takes the bearer token (when auth is configured)."""
    return {"summary": summary, "security": [{"bearer": []}], "responses": responses, **more}


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
        "CurrentBranch": schemas.CurrentBranchSchema,
        "ModelList": schemas.ModelListSchema,
        "UsageReport": schemas.UsageReportSchema,
    }.items():
        spec.components.schema(name, schema=schema)
    for name, component in _stream_event_schemas().items():
        spec.components.schema(name, component)
    body = {"required": True, "content": {"application/json": {"schema": "ChatRequest"}}}
    all_errors = _errors("400", "401", "404", "408", "413", "415", "429", "502", "503")
    stream_id, conversation_id = _path_parameter("streamId"), _path_parameter("conversationId")
    last_event = {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}}
    page = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": schemas.MAX_PAGE_SIZE}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": schemas.MAX_OFFSET}},
    ]
    operations: dict[str, dict[str, Any]] = {
        "/api/v1/ai/chat/stream": {
            "post": _secured("Stream a reply", {"200": _EVENT_STREAM, **all_errors}, requestBody=body),
        },
        "/api/v1/ai/chat/stream/{streamId}": {
            "get": _secured(
                "Resume a stream after Last-Event-ID",
                {"200": _EVENT_STREAM, **_errors("400", "401", "404", "503")},
                parameters=[stream_id, last_event],
            ),
            "delete": _secured(
                "Cancel a stream",
                {"204": {"description": "cancelled"}, **_errors("401", "404", "503")},
                parameters=[stream_id],
            ),
        },
        "/api/v1/ai/chat/ws": {
            "get": _secured(
                "Chat turns over a WebSocket (upgrade)",
                {
                    "101": {"description": "Switching Protocols: the WebSocket is open"},
                    "400": _json("validation_error: not a WebSocket upgrade", "Error"),
                    "401": _json("unauthorized: the `Authorization` header's token was refused", "Error"),
                    "403": _json("forbidden: a page of another origin (not this host, not in CORS_ORIGINS)", "Error"),
                },
                description=_WEBSOCKET,
            ),
        },
        "/api/v1/ai/chat": {
            "post": _secured(
                "The whole reply as one JSON body (non-streaming fallback)",
                {"200": _json("the reply", "ChatResponse"), **all_errors},
                requestBody=body,
            ),
        },
        "/api/v1/ai/conversations": {
            "get": _secured(
                "The caller's conversations, newest first",
                {"200": _json("conversations", "ConversationList"), **_errors("400", "401", "503")},
                parameters=page,
            ),
        },
        "/api/v1/ai/models": {
            "get": _secured(
                "The models a request may pick, and the default",
                {"200": _json("models", "ModelList"), **_errors("401", "503")},
            ),
        },
        "/api/v1/ai/conversations/{conversationId}/current": {
            "put": _secured(
                "Make the branch through a message current, down to its newest descendant",
                {
                    "200": _json("the conversation", "ConversationDetail"),
                    **_errors("400", "401", "404", "408", "413", "415", "503"),
                },
                parameters=[conversation_id],
                requestBody={"required": True, "content": {"application/json": {"schema": "CurrentBranch"}}},
            ),
        },
        "/api/v1/ai/usage": {
            "get": _secured(
                "The caller's token usage (an admin's: any user's, or every user's with user=*)",
                {"200": _json("totals by day or by model", "UsageReport"), **_errors("400", "401", "403", "503")},
                parameters=[
                    {"name": name, "in": "query", "schema": {"type": "string"}, "description": description}
                    for name, description in (
                        ("from", "ISO date or date-time, inclusive (default: 30 days before `to`)"),
                        ("to", "ISO date (inclusive) or date-time (exclusive); default now"),
                        ("groupBy", "day (UTC) or model; default day"),
                        ("user", "admins only: a user id, or * for every user"),
                    )
                ],
            ),
        },
        "/api/v1/ai/conversations/{conversationId}": {
            "get": _secured(
                "One conversation: its current branch oldest first, and every branch's messages",
                {"200": _json("the conversation", "ConversationDetail"), **_errors("401", "404", "503")},
                parameters=[conversation_id],
            ),
            "delete": _secured(
                "Delete a conversation",
                {"204": {"description": "deleted"}, **_errors("401", "404", "503")},
                parameters=[conversation_id],
            ),
        },
    }
    for path, summary in (
        ("/healthz", "Process up"),
        ("/readyz", "Dependencies usable (503 when not)"),
        ("/metrics", "Prometheus text format"),
        ("/openapi.json", "This document"),
        ("/", "The browser chat page (HTML)"),
        ("/favicon.ico", "The page's icon (SVG)"),
    ):
        operations[path] = {"get": {"summary": summary, "responses": {"200": {"description": "ok"}}}}
    operations["/readyz"]["get"]["responses"]["503"] = {"description": "not ready: `checks` names what is not"}
    operations["/static/{filename}"] = {
        "get": {
            "summary": "The page's modules, styles and icon",
            "parameters": [_path_parameter("filename")],
            "responses": {"200": {"description": "the file"}, "404": {"description": "no such file"}},
        }
    }
    for path, path_operations in operations.items():
        spec.path(path=path, operations=path_operations)
    document: dict[str, Any] = spec.to_dict()
    return document
