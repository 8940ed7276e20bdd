"""Counting a prompt's tokens before it is sent: exactly where the model's own tokenizer is at hand, else an
estimate that errs high.

Byte-level tokenizers (GPT's, SmolLM2's, llama.cpp's byte fallback) never make more tokens than a text has UTF-8
bytes, so ``upper_bound`` is a true ceiling that costs no tokenizer call: a prompt under the budget by that
measure fits. Only a prompt over it is counted, and then each message once (``TokenCounter`` keeps counts by
text, since a conversation's history is sent again every turn).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import httpx2

from service.llm.providers import server_root

log = logging.getLogger(__name__)

MESSAGE_FRAMING = 8  # the chat template's tokens around one message (role markers, separators), rounded up
REPLY_PRIMER = 8  # the tokens that open the assistant's reply
_CACHE_SIZE = 2048


def upper_bound(text: str) -> int:
    """At most one token per UTF-8 byte."""
    return len(text) if text.isascii() else len(text.encode())


def estimate(text: str) -> int:
    """For a provider whose tokenizer is not here: one token per 3 bytes (English runs about 4 characters a
    token); a provider that counts more refuses, and the caller drops history then."""
    return -(-upper_bound(text) // 3)


class TokenCounter:
    """Counts a text's tokens with ``tokenize`` (or ``estimate``), remembering the last few thousand texts."""

    def __init__(self, tokenize: Callable[[str], int | None] | None = None) -> None:
        self.tokenize = tokenize
        self._counts: OrderedDict[str, int] = OrderedDict()

    @property
    def exact(self) -> bool:
        return self.tokenize is not None

    def count(self, text: str) -> int:
        counts = self._counts
        found = counts.get(text)
        if found is not None:
            counts.move_to_end(text)
            return found
        counted = self.tokenize(text) if self.tokenize is not None else None
        if counted is None:  # no tokenizer, or it did not answer: err high
            return upper_bound(text) if self.tokenize is not None else estimate(text)
        counts[text] = counted
        if len(counts) > _CACHE_SIZE:
            counts.popitem(last=False)
        return counted


class LocalTokenizer:
    """llama-server's own ``POST /tokenize``: the exact count for the local model, with no download."""

    def __init__(self, base_url: str, timeout: float = 2.0) -> None:
        self.url = server_root(base_url) + "/tokenize"
        self.http = httpx2.Client(timeout=timeout)

    def __call__(self, text: str) -> int | None:
        try:
            response = self.http.post(self.url, json={"content": text})
            response.raise_for_status()
            tokens = response.json().get("tokens")
        except (httpx2.HTTPError, ValueError, AttributeError) as exc:
            log.warning("could not count tokens with %s: %s", self.url, exc)
            return None
        return len(tokens) if isinstance(tokens, list) else None
