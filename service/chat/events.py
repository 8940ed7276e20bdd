"""The events a chat stream yields: plain data, no SSE and no Flask.

``payload()`` gives the wire dict of docs/protocol.md; the SSE layer only frames it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    reasoning_tokens: int = 0  # of the completion tokens, how many the model spent reasoning

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "totalTokens": self.total_tokens,
        }
        if self.reasoning_tokens:
            body["reasoningTokens"] = self.reasoning_tokens
        if self.estimated:
            body["estimated"] = True
        return body


@dataclass(frozen=True, slots=True)
class Metadata:
    stream_id: str
    conversation_id: str
    message_id: str
    model: str
    omitted_turns: int = 0  # earlier messages left out of the model's context to fit its window
    request_id: str | None = None  # X-Request-ID: the same id is in every log line about this request
    cached: bool = False  # answered from the response cache (``RESPONSE_CACHE``), with no provider call

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "metadata",
            "streamId": self.stream_id,
            "conversationId": self.conversation_id,
            "messageId": self.message_id,
            "model": self.model,
        }
        if self.omitted_turns:
            body["omittedTurns"] = self.omitted_turns
        if self.request_id:
            body["requestId"] = self.request_id
        if self.cached:
            body["cached"] = True
        return body


@dataclass(frozen=True, slots=True)
class Token:
    content: str

    def payload(self) -> dict[str, Any]:
        return {"type": "token", "content": self.content}


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A piece of the model's reasoning, shown apart from the answer (numbered in the same sequence as tokens)."""

    content: str

    def payload(self) -> dict[str, Any]:
        return {"type": "reasoning", "content": self.content}


@dataclass(frozen=True, slots=True)
class Done:
    finish_reason: str
    usage: Usage
    tokens_per_second: float

    def payload(self) -> dict[str, Any]:
        return {
            "type": "done",
            "finishReason": self.finish_reason,
            "usage": self.usage.payload(),
            "tokensPerSecond": self.tokens_per_second,
        }


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    retryable: bool

    def payload(self) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"code": self.code, "message": self.message, "retryable": self.retryable},
        }


Event = Metadata | Token | Reasoning | Done | Error
