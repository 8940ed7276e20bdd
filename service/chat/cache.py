"""The response cache (``RESPONSE_CACHE``): a first-turn message whose whole model input was answered before,
within the TTL, is answered again from the cache, with no provider call.

The key is a hash of everything the provider would be sent (model, messages with the system prompt, the reply cap
and any other parameter of the ``CompletionRequest``), so no two inputs that differ in any of them share an entry.
Only complete replies (finish reason ``stop``) are kept, token piece by token piece, so a replay streams the same
events the first reply did. Where entries live is a ``ReplyStore`` (``service.store.reply_cache``): this layer
hands it bytes and never knows whether it is memory or Redis.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import orjson

from service.llm.streaming import CompletionRequest, UpstreamStream

if TYPE_CHECKING:
    import httpx2

    from service.chat.stream import ChatStream

log = logging.getLogger(__name__)
KEY_VERSION = b"reply-cache-v1\n"  # part of every key: a change of what is hashed or stored starts afresh


class ReplyStore(Protocol):
    """Bytes under a key for the configured TTL; ``get`` is None when absent, expired or unreachable."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class CachedReply:
    """A complete reply as it streamed: its token pieces and the usage it was counted with."""

    tokens: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False  # the provider sent no usage: the counts are the service's

    def encode(self) -> bytes:
        return orjson.dumps([list(self.tokens), self.prompt_tokens, self.completion_tokens, self.estimated])

    @classmethod
    def decode(cls, value: bytes) -> CachedReply | None:
        """None for a value this version did not write (it is then treated as a miss)."""
        try:
            tokens, prompt, completion, estimated = orjson.loads(value)
            if not (isinstance(tokens, list) and tokens and all(isinstance(token, str) for token in tokens)):
                return None
            return cls(tuple(tokens), int(prompt), int(completion), bool(estimated))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None


def reply_key(request: CompletionRequest) -> str:
    """The hash of the whole model input: every field of the request but its id (which only names it in logs)."""
    model_input = dataclasses.replace(request, request_id=None)
    return hashlib.sha256(KEY_VERSION + orjson.dumps(model_input, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ReplyCache:
    """Looks replies up and keeps complete ones; ``counted(hit)`` is told of each lookup (for metrics)."""

    def __init__(self, store: ReplyStore, counted: Callable[[bool], None] | None = None) -> None:
        self.store = store
        self.counted = counted

    def lookup(self, key: str) -> CachedReply | None:
        """The reply kept under ``key``, or None; a store that fails is a miss, never the request's failure."""
        try:
            value = self.store.get(key)
        except Exception:
            log.exception("could not read the response cache")
            value = None
        found = CachedReply.decode(value) if value is not None else None
        if value is not None and found is None:
            log.warning("ignored a response cache entry this version cannot read")
        if self.counted is not None:
            self.counted(found is not None)
        return found

    def keep(self, key: str, chat: ChatStream) -> None:
        """Store ``chat``'s reply if it ended complete: finish reason ``stop``, no error, at least one token, and no
        reasoning (an entry holds answer text only)."""
        if chat.outcome != "done" or chat.upstream.finish_reason != "stop" or not len(chat.parts):
            return
        if chat.parts.reasoning() is not None:
            return
        usage, parts = chat.usage(), chat.parts
        tokens = tuple(parts[index] for index in range(len(parts)))
        reply = CachedReply(tokens, usage.prompt_tokens, usage.completion_tokens, usage.estimated)
        try:
            value = reply.encode()
        except TypeError:  # text JSON cannot carry (a lone surrogate): not cached, the reply itself is fine
            return
        self.store.put(key, value)

    def keeper(self, key: str, on_end: Callable[[ChatStream], None] | None) -> KeepWhenComplete:
        return KeepWhenComplete(self, key, on_end)


class KeepWhenComplete:
    """A stream's ``on_end``: keeps its reply in the cache, then runs the transport's own ``on_end``. An object, not
    a closure: every open stream holds one."""

    __slots__ = ("cache", "key", "then")

    def __init__(self, cache: ReplyCache, key: str, then: Callable[[ChatStream], None] | None) -> None:
        self.cache = cache
        self.key = key
        self.then = then

    def __call__(self, chat: ChatStream) -> None:
        try:
            self.cache.keep(self.key, chat)
        except Exception:
            log.exception("could not keep a reply in the response cache")
        finally:
            if self.then is not None:
                self.then(chat)


class ReplayedUpstream(UpstreamStream):
    """A cached reply in the shape of an open upstream: all its tokens in the first read (with the metadata, one
    write), then the end. It has no response to read or close, and it never waits, so nothing throws into it."""

    def __init__(self, reply: CachedReply) -> None:
        super().__init__(cast("httpx2.Response", None))  # no response: the reply was read when it was first made
        self._tokens: list[str] | None = list(reply.tokens)
        self.finish_reason = "stop"
        self.usage = None if reply.estimated else (reply.prompt_tokens, reply.completion_tokens)

    def next_batch(self, wait: bool = True) -> list[str] | None:
        tokens, self._tokens = self._tokens, None
        if tokens is not None:
            self.deltas += len(tokens)
        return tokens

    def close(self) -> None:
        self._tokens = None
