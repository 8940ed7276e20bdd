"""The one error tree and the one JSON error shape.

```
ServiceError                      code                 status  (retryable once streaming)
├── RequestError                  (before the stream: plain HTTP + JSON body)
│   ├── InvalidRequest            validation_error     400
│   ├── ContextTooLong            context_too_long     400
│   ├── UnsafeInput               unsafe_input         400
│   ├── Unauthorized              unauthorized         401
│   ├── Forbidden                 forbidden            403
│   ├── NotFound                  not_found            404
│   ├── RequestTimeout            request_timeout      408
│   ├── PayloadTooLarge           payload_too_large    413
│   ├── UnsupportedMediaType      unsupported_media_type 415
│   ├── RateLimited               rate_limited         429 (+ Retry-After)
│   ├── UpstreamRejected          upstream_rejected    502
│   ├── UpstreamUnavailable       upstream_unavailable 503
│   └── Unavailable               (503 + Retry-After: a part of the service is away for a while)
│       ├── DatabaseUnavailable   database_unavailable 503
│       └── SharedStateUnavailable shared_state_unavailable 503
└── StreamError                   (after the first byte: an SSE ``error`` event)
    ├── IdleTimeout               idle_timeout         retryable
    ├── BudgetSpent               rate_limited         retryable
    ├── UpstreamFailed            upstream_error       retryable
    ├── ContentFiltered           content_filtered
    ├── Cancelled                 cancelled
    ├── ClientStalled             client_stalled       retryable
    ├── ServerShutdown            server_shutdown      retryable
    └── InternalError             internal
```
Messages are written for a person and never carry internals (tracebacks, upstream bodies, keys).
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False
    default_message: ClassVar[str] = "Something went wrong on our side."

    def __init__(self, message: str | None = None, details: dict[str, Any] | None = None) -> None:
        self.message = message or self.default_message
        self.details = details or {}
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class RequestError(ServiceError):
    """Refused before any stream began."""

    headers: dict[str, str]

    def __init__(self, message: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.headers = {}


class InvalidRequest(RequestError):
    code, status, default_message = "validation_error", 400, "The request is not valid."


class ContextTooLong(RequestError):
    """The message (with the system prompt and the reply's reserve) does not fit the model's context window even
    without history. ``window`` is the provider's own figure when it named one (it sharpens the next estimate)."""

    code, status = "context_too_long", 400
    default_message = (
        "The message and this conversation do not fit the model's context window: "
        "start a new conversation or shorten the message."
    )

    def __init__(self, message: str | None = None, window: int | None = None) -> None:
        super().__init__(message)
        self.window = window


class UnsafeInput(RequestError):
    code, status, default_message = "unsafe_input", 400, "The message was refused by a safety check."


class Unauthorized(RequestError):
    code, status, default_message = "unauthorized", 401, "A valid bearer token is required."


class Forbidden(RequestError):
    """Only for what a user may know exists but not read (another user's usage); a conversation or stream that
    is not yours is ``NotFound``, never this."""

    code, status, default_message = "forbidden", 403, "You may not read this."


class NotFound(RequestError):
    code, status, default_message = "not_found", 404, "Not found."


class MethodNotAllowed(RequestError):
    code, status, default_message = "method_not_allowed", 405, "That method is not allowed here."


class RequestTimeout(RequestError):
    """The client took longer than ``REQUEST_READ_TIMEOUT_SECONDS`` to send its body."""

    code, status, default_message = "request_timeout", 408, "The request body did not arrive in time."


class PayloadTooLarge(RequestError):
    code, status, default_message = "payload_too_large", 413, "The request body is too large."


class UnsupportedMediaType(RequestError):
    code, status, default_message = "unsupported_media_type", 415, "Send the body as application/json."


class RateLimited(RequestError):
    code, status, default_message = "rate_limited", 429, "Too many requests; try again later."

    def __init__(self, message: str | None = None, retry_after: int = 1, limit: str = "rate") -> None:
        super().__init__(message, {"retryAfter": retry_after})
        self.retry_after = max(1, retry_after)
        self.headers = {"Retry-After": str(self.retry_after)}
        self.limit = limit  # which one: rate, streams or budget (a metrics label, not sent)


class UpstreamRejected(RequestError):
    """The provider refused the request itself (a 4xx other than 408 and 429): retrying cannot help, so it is
    neither retried nor reported as an outage. The message says which side must act."""

    code, status = "upstream_rejected", 502
    default_message = "The model service refused the request."


class UpstreamUnavailable(RequestError):
    code, status, default_message = "upstream_unavailable", 503, "The model could not be reached; try again shortly."
    retryable = True

    def __init__(self, message: str | None = None, retry_after: int | None = None) -> None:
        """``retry_after``: the wait the provider asked for, passed on to the client."""
        super().__init__(message, {"retryAfter": retry_after} if retry_after else None)
        if retry_after:
            self.headers = {"Retry-After": str(retry_after)}


class Unavailable(RequestError):
    """A part the request needs is away (the database, or Redis for another host's stream): retry later."""

    status, retryable = 503, True

    def __init__(self, message: str | None = None, retry_after: int = 5) -> None:
        super().__init__(message, {"retryAfter": retry_after})
        self.retry_after = max(1, retry_after)
        self.headers = {"Retry-After": str(self.retry_after)}


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"
    default_message = "Conversations cannot be read right now; try again shortly."


class SharedStateUnavailable(Unavailable):
    code = "shared_state_unavailable"
    default_message = "That stream runs on another server, which cannot be reached right now; try again shortly."


class StreamError(ServiceError):
    """Ends a stream that has already started, as an SSE ``error`` event."""


class IdleTimeout(StreamError):
    code, retryable, default_message = "idle_timeout", True, "The model stopped responding."


class BudgetSpent(StreamError):
    code, retryable, default_message = "rate_limited", True, "Your token budget is spent; try again later."


class UpstreamFailed(StreamError):
    code, retryable, default_message = "upstream_error", True, "The model failed while answering."


class ContentFiltered(StreamError):
    code, default_message = "content_filtered", "The provider's content filter stopped the reply."


class Cancelled(StreamError):
    code, default_message = "cancelled", "The stream was cancelled."


class ClientStalled(StreamError):
    """The stream's own client stopped reading (its connection stayed open, its receive window shut) for
    ``SEND_TIMEOUT_SECONDS``: the stream is ended and saved rather than held open for it."""

    code, retryable, default_message = "client_stalled", True, "The client stopped reading the stream."


class ServerShutdown(StreamError):
    code, retryable, default_message = "server_shutdown", True, "The server is restarting; reconnect to resume."


class InternalError(StreamError):
    code, default_message = "internal", "Something went wrong on our side."
