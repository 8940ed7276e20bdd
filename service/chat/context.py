"""Builds the model's messages: system prompt, the recent history, then the new message."""

from __future__ import annotations

from collections.abc import Sequence


def build_messages(system_prompt: str, history: Sequence[tuple[str, str]], message: str) -> list[dict[str, str]]:
    """``history`` is already trimmed to ``HISTORY_MESSAGES`` by the store; empty replies are dropped
    (a stream cancelled before its first token leaves one) because some servers reject empty content."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.extend({"role": role, "content": content} for role, content in history if content)
    messages.append({"role": "user", "content": message})
    return messages


def estimate_prompt_tokens(messages: Sequence[dict[str, str]]) -> int:
    """A rough count (4 characters a token, 4 tokens of framing a message) for when usage is missing."""
    return sum(len(item["content"]) // 4 + 4 for item in messages)
