"""One exception class per error code of the protocol, and the mapping from an HTTP answer to it."""

from __future__ import annotations

from typing import Any

import httpx


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
