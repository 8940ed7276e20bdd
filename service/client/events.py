"""The protocol's events and results as typed objects, parsed from their JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

METADATA_KEYS = ("streamId", "conversationId", "messageId", "model")


@dataclass(frozen=True, kw_only=True)
class _Wire:
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # as received, for --json


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False
    reasoning_tokens: int = 0  # of the completion tokens, those the model spent reasoning


@dataclass(frozen=True)
class Metadata(_Wire):
    stream_id: str
    conversation_id: str
    message_id: str
    model: str
    omitted_turns: int = 0  # earlier messages the service left out of the model's context to fit its window
    request_id: str | None = None  # the service's id for the request: quote it when reporting a problem
    cached: bool = False  # the reply comes from the service's response cache, with no call to the model


@dataclass(frozen=True)
class Token(_Wire):
    content: str


@dataclass(frozen=True)
class Reasoning(_Wire):
    """A piece of the model's reasoning (its thinking before the answer), apart from the answer's tokens."""

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


Event = Metadata | Token | Reasoning | Done | StreamError


@dataclass(frozen=True)
class ChatResult(_Wire):
    conversation_id: str
    message_id: str
    content: str
    model: str
    finish_reason: str
    usage: Usage
    cached: bool = False  # the reply came from the service's response cache, with no call to the model
    reasoning: str | None = None  # the model's reasoning, when it sent some


def usage_of(raw: Any) -> Usage:
    raw = raw if isinstance(raw, dict) else {}
    prompt, completion = int(raw.get("promptTokens", 0)), int(raw.get("completionTokens", 0))
    total, reasoning = int(raw.get("totalTokens", prompt + completion)), int(raw.get("reasoningTokens", 0))
    return Usage(prompt, completion, total, bool(raw.get("estimated")), reasoning)


def parse_event(data: dict[str, Any]) -> Event | None:
    """One protocol event; None for types this client does not know (the protocol: ignore them)."""
    kind, error = data.get("type"), data.get("error") or {}
    if kind == "metadata":
        stream_id, conversation_id, message_id, model = (str(data.get(key, "")) for key in METADATA_KEYS)
        omitted = data.get("omittedTurns")
        omitted_turns = omitted if isinstance(omitted, int) else 0
        request_id = data.get("requestId")
        request_id = request_id if isinstance(request_id, str) else None
        cached = data.get("cached") is True
        return Metadata(stream_id, conversation_id, message_id, model, omitted_turns, request_id, cached, raw=data)
    if kind == "token":
        return Token(str(data.get("content", "")), raw=data)
    if kind == "reasoning":
        return Reasoning(str(data.get("content", "")), raw=data)
    if kind == "done":
        return Done(str(data.get("finishReason")), usage_of(data.get("usage")), data.get("tokensPerSecond"), raw=data)
    if kind == "error":
        return StreamError(str(error.get("code")), str(error.get("message")), bool(error.get("retryable")), raw=data)
    return None
