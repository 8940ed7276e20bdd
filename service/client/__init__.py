"""A Python client and command line for the chat service (docs/protocol.md): typed events, one exception per
error code, resume by ``Last-Event-ID`` and a non-streaming fallback. Needs only httpx and httpx-sse; run
``python -m service.client "hi"``."""

from __future__ import annotations

from service.client.errors import (
    ERRORS,
    ChatClientError,
    ConnectionFailed,
    ContextTooLong,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnexpectedError,
    UnsafeInput,
    UnsupportedMediaType,
    UpstreamRejected,
    UpstreamUnavailable,
    ValidationFailed,
    error_from,
)
from service.client.events import (
    ChatResult,
    Done,
    Event,
    Metadata,
    Reasoning,
    StreamError,
    Token,
    Usage,
    parse_event,
)
from service.client.session import ChatClient

__all__ = [
    "ERRORS",
    "ChatClient",
    "ChatClientError",
    "ChatResult",
    "ConnectionFailed",
    "ContextTooLong",
    "Done",
    "Event",
    "Metadata",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Reasoning",
    "StreamError",
    "Token",
    "Unauthorized",
    "UnexpectedError",
    "UnsafeInput",
    "UnsupportedMediaType",
    "UpstreamRejected",
    "UpstreamUnavailable",
    "Usage",
    "ValidationFailed",
    "error_from",
    "parse_event",
]
