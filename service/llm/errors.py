"""The one place that maps SDK and transport exceptions to the service's error tree.

Provider answers are mapped by what they mean, not by their status alone:
- 408, 429 and 5xx are passing trouble: retried by the SDK, then ``upstream_unavailable`` (try again).
- A context-length refusal, however the provider words it, is ``ContextTooLong``: the caller drops history.
- Any other 4xx is the request or the configuration, never an outage: ``upstream_rejected``, not retried, and
  logged with the provider's own words so an operator can see why.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import httpx2
import openai

from service.errors import (
    ContentFiltered,
    ContextTooLong,
    ServiceError,
    UnsafeInput,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

# OpenAI and Azure send the code ``context_length_exceeded``; llama.cpp the type ``exceed_context_size_error``
# (older builds a 500 with only a message); vLLM and others only a sentence.
_CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error", "string_above_max_length"})
_CONTEXT_WORDS = re.compile(
    r"maximum context length|context length|context size|context window|too many tokens|prompt is too long",
    re.IGNORECASE,
)
_STATED_WINDOW = re.compile(
    r"maximum context length is (\d+)|available context size \((\d+)|context (?:window|length) of (\d+)", re.IGNORECASE
)
_PASSING = frozenset({408, 429})


def map_open_error(exc: Exception) -> ServiceError:
    """An error raised while opening the upstream stream (after the SDK's own retries)."""
    if isinstance(exc, openai.APIStatusError):
        error = _error_object(exc.body)
        return _map_status(exc.status_code, error, exc.message, retry_after(exc.response.headers))
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamUnavailable("The model service did not answer in time; try again shortly.")
    if isinstance(exc, (openai.APIConnectionError, httpx2.HTTPError, OSError)):
        return UpstreamUnavailable()
    return UpstreamUnavailable("The model service sent something unexpected.")


def retry_after(headers: httpx2.Headers) -> int | None:
    """The whole seconds a provider's ``Retry-After`` asks for (the HTTP-date form is not used by providers)."""
    try:
        seconds = float(headers.get("retry-after", ""))
    except ValueError:
        return None
    return math.ceil(seconds) if 0 < seconds < math.inf else None


def _map_status(status: int, error: dict[str, Any], fallback_text: str, wait: int | None = None) -> ServiceError:
    code = _text(error.get("code")) or _text(error.get("type"))
    kind = _text(error.get("type"))
    message = _text(error.get("message")) or fallback_text
    if code == "content_filter":
        return UnsafeInput("The provider's content filter refused the message.")
    worded = status in (400, 413, 500) and _CONTEXT_WORDS.search(message)
    if code in _CONTEXT_CODES or kind in _CONTEXT_CODES or worded:
        return ContextTooLong(window=stated_window(error, message))
    if status in _PASSING or status >= 500:
        if wait:
            return UpstreamUnavailable(f"The model service answered {status}; try again in {wait} s.", wait)
        return UpstreamUnavailable(f"The model service answered {status}; try again shortly.")
    log.warning("the model service refused the request: %s %s: %s", status, code or "-", message[:300])
    if status in (401, 403):
        return UpstreamRejected(
            f"The model service refused the gateway's credentials ({status}); the service's operator must fix its "
            "configuration."
        )
    if status == 404:
        return UpstreamRejected("The model service does not know this model or endpoint (404).")
    return UpstreamRejected(f"The model service refused the request ({status}).")


def stated_window(error: dict[str, Any], message: str) -> int | None:
    """The context size the provider named in its refusal, if it named one."""
    n_ctx = error.get("n_ctx")
    if isinstance(n_ctx, int) and n_ctx > 0:
        return n_ctx
    match = _STATED_WINDOW.search(message)
    if match is None:
        return None
    return int(next(group for group in match.groups() if group))


def map_error_payload(error: object) -> ServiceError:
    """An ``{"error": {...}}`` object the upstream sent inside its stream."""
    code = error.get("code") if isinstance(error, dict) else None
    if code == "content_filter":
        return ContentFiltered()
    return UpstreamFailed()


def _error_object(body: object) -> dict[str, Any]:
    """The provider's ``error`` object (the SDK hands over either the whole body or the object itself)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner
    return {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
