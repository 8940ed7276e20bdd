"""How many tokens a model's context window holds, so a prompt can be fitted to it before it is sent.

In order of trust: the operator's setting (``MODEL_CONTEXT_WINDOW``), what the provider itself stated in a
context-length refusal (learned at run time), the local llama-server's own ``/props`` (its per-slot ``n_ctx``),
the published windows of common OpenAI models, and last a conservative fallback. A provider that refuses
anyway is answered by dropping more history (``ChatService``), so an unknown model is never stuck.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

import httpx2

from service.llm.providers import server_root

log = logging.getLogger(__name__)

# Published context windows (tokens), matched by the longest prefix of the model name.
KNOWN_WINDOWS: Mapping[str, int] = {
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1-mini": 128_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
}
FALLBACK_WINDOW = 8_192
_BY_LENGTH = sorted(KNOWN_WINDOWS, key=len, reverse=True)


class ContextWindows:
    """One per worker. ``size(model)`` is cheap after the first call for a model."""

    def __init__(
        self,
        configured: Mapping[str, int] | None = None,
        default: int | None = None,
        local_model_url: str | None = None,
    ) -> None:
        self.configured = dict(configured or {})
        self.default = default
        self.local_model_url = local_model_url
        self.learned: dict[str, int] = {}
        self._local: int | None = None

    def size(self, model: str) -> int:
        if model in self.configured:
            return self.configured[model]
        if model in self.learned:
            return self.learned[model]
        if self.default is not None:
            return self.default
        if self.local_model_url is not None:
            return self._local_window()
        return known_window(model)

    def learn(self, model: str, window: int) -> None:
        """The provider named the window in a refusal: trust it over any guess (never over the operator)."""
        if model not in self.configured and window > 0:
            self.learned[model] = window

    def _local_window(self) -> int:
        """The local server's per-slot context (``-c`` divided by ``-np``), asked once; the fallback until it
        answers (a model still loading is asked again next time)."""
        if self._local is None:
            self._local = read_local_window(self.local_model_url or "")
        return self._local or FALLBACK_WINDOW


@functools.cache
def known_window(model: str) -> int:
    for prefix in _BY_LENGTH:
        if model.startswith(prefix):
            return KNOWN_WINDOWS[prefix]
    return FALLBACK_WINDOW


def read_local_window(base_url: str) -> int | None:
    """``n_ctx`` of llama-server's ``GET /props`` (the root, not ``/v1``); None if it does not answer."""
    root = server_root(base_url)
    try:
        response = httpx2.get(f"{root}/props", timeout=2.0)
        response.raise_for_status()
        n_ctx = response.json().get("default_generation_settings", {}).get("n_ctx")
    except (httpx2.HTTPError, ValueError, AttributeError) as exc:
        log.warning("could not read the local model's context size from %s/props: %s", root, exc)
        return None
    return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None
