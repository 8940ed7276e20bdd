"""Builds the model's messages: system prompt, as much recent history as fits the model's window, the message.

The window is shared by the prompt and the reply, so the prompt gets ``window - reserve``, the reserve being
the reply's cap (``max_tokens``) or, with no cap, a quarter of the window (at most 4,096 tokens). The oldest
messages go first; the system prompt and the new message never do. A message that cannot fit even alone is
refused with ``context_too_long`` before anything is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import ContextTooLong
from service.llm.tokens import MESSAGE_FRAMING, REPLY_PRIMER, TokenCounter, upper_bound
from service.llm.windows import ContextWindows

MAX_DEFAULT_RESERVE = 4_096


@dataclass(frozen=True)
class Context:
    messages: list[dict[str, str]]
    omitted: int  # earlier messages of the conversation left out to fit the window
    prompt_tokens: int  # the estimate (an upper bound where no tokenizer counted), for usage when none is sent
    kept: int  # history messages sent


class ContextBuilder:
    """Fits a turn's messages to its model's window."""

    def __init__(
        self, system_prompt: str, max_tokens: int | None, windows: ContextWindows, counter: TokenCounter
    ) -> None:
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self.windows = windows
        self.counter = counter

    def learn(self, model: str, window: int) -> None:
        """The provider named its window in a refusal: fit to that from now on."""
        self.windows.learn(model, window)

    def reserve(self, window: int) -> int:
        return self.max_tokens or min(MAX_DEFAULT_RESERVE, window // 4)

    def build(
        self, model: str, history: Sequence[tuple[str, str]], message: str, keep_at_most: int | None = None
    ) -> Context:
        """``history`` is the conversation's current branch up to this turn (the store walks it up from the branch's
        newest message, so no other branch is in it), oldest first and already capped to ``HISTORY_MESSAGES``; empty
        replies are dropped (a stream cancelled before its first token leaves one) because some servers reject empty
        content. ``keep_at_most`` caps the history kept (a retry after the provider counted more than we did)."""
        window = self.windows.size(model)
        budget = window - self.reserve(window) - REPLY_PRIMER
        history = [(role, content) for role, content in history if content]
        available = len(history)
        if keep_at_most is not None:
            history = _from_a_user_turn(history[len(history) - keep_at_most :] if keep_at_most else [])
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        tail = {"role": "user", "content": message}
        required = [*head, tail]
        everything = [*head, *({"role": role, "content": content} for role, content in history), tail]
        bound = sum(upper_bound(item["content"]) + MESSAGE_FRAMING for item in everything)
        if bound <= budget:  # fits even if every byte were a token: no counting needed
            return Context(everything, available - len(history), _rough(everything), len(history))
        count = self.counter.count
        used = sum(count(item["content"]) + MESSAGE_FRAMING for item in required)
        if used > budget:
            raise ContextTooLong(
                f"The message is too long for the model: with the system prompt it needs about {used} tokens, and "
                f"{max(budget, 0)} of the model's {window} are left for a prompt. Shorten the message."
            )
        costs: list[int] = []  # of the kept history, newest first
        for _role, content in reversed(history):
            cost = count(content) + MESSAGE_FRAMING
            if used + cost > budget:
                break
            used += cost
            costs.append(cost)
        kept_history = _from_a_user_turn(history[len(history) - len(costs) :] if costs else [])
        used -= sum(costs[len(kept_history) :])  # the oldest, left out to start with the user's turn
        messages = [*head, *({"role": role, "content": content} for role, content in kept_history), tail]
        return Context(messages, available - len(kept_history), used, len(kept_history))


def _from_a_user_turn(history: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A reply whose question was left out would read as the assistant speaking first: it goes too."""
    while history and history[0][0] != "user":
        history = history[1:]
    return history


def _rough(messages: Sequence[dict[str, str]]) -> int:
    """4 characters a token and 4 tokens of framing a message: the usage estimate when the provider sends none."""
    return sum(len(item["content"]) // 4 + 4 for item in messages)
