"""The one place that maps SDK and transport exceptions to the service's error tree."""

from __future__ import annotations

import httpx2
import openai

from service.errors import (
    ContentFiltered,
    InvalidRequest,
    ServiceError,
    UnsafeInput,
    UpstreamFailed,
    UpstreamUnavailable,
)


def map_open_error(exc: Exception) -> ServiceError:
    """An error raised while opening the upstream stream (after the SDK's own retries)."""
    if isinstance(exc, openai.APIStatusError):
        code = _error_code(exc)
        if code == "content_filter":
            return UnsafeInput("The provider's content filter refused the message.")
        if exc.status_code == 400 and code == "context_length_exceeded":
            return InvalidRequest("The conversation is too long for the model.", {"message": ["too long"]})
        return UpstreamUnavailable(f"The model service answered {exc.status_code}; try again shortly.")
    if isinstance(exc, (openai.APIConnectionError, httpx2.HTTPError, OSError)):
        return UpstreamUnavailable()
    return UpstreamUnavailable("The model service sent something unexpected.")


def map_error_payload(error: object) -> ServiceError:
    """An ``{"error": {...}}`` object the upstream sent inside its stream."""
    code = error.get("code") if isinstance(error, dict) else None
    if code == "content_filter":
        return ContentFiltered()
    return UpstreamFailed()


def _error_code(exc: openai.APIStatusError) -> str | None:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return str(inner["code"])
    return getattr(exc, "code", None) if isinstance(getattr(exc, "code", None), str) else None
