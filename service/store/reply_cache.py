"""Where cached replies are kept (``RESPONSE_CACHE``): opaque bytes under a key, each for ``ttl`` seconds.

Two backends with one shape (``get``/``put``): ``MemoryReplyCache``, this worker's own (bounded: the least
recently used entry goes first once ``max_entries`` are held), and ``RedisReplyCache``, shared by every worker and
host (one key per entry, expiring with Redis's own ``EX``). What the bytes hold is the chat layer's business.

A cache is an optimisation: a Redis that is away makes every lookup a miss and every store a no-op, reported to
``RedisHealth`` like any other Redis call, never an error for the user.
"""

from __future__ import annotations

import logging
from typing import Any

from cachetools import TTLCache

from service.redis_health import RedisHealth, client

log = logging.getLogger(__name__)
KEY_PREFIX = "chat:reply-cache:"
LOOKUP_TIMEOUT = 0.5  # a hung Redis holds a first message no longer than this before it goes to the provider


class MemoryReplyCache:
    """This worker's cache: an LRU of at most ``max_entries``, each dropped ``ttl`` seconds after it was stored.
    Only the worker's own greenlets touch it, and no call yields, so it needs no lock."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._entries: TTLCache[str, bytes] = TTLCache(maxsize=max_entries, ttl=ttl)

    def get(self, key: str) -> bytes | None:
        return self._entries.get(key)

    def put(self, key: str, value: bytes) -> None:
        self._entries[key] = value


class RedisReplyCache:
    """One Redis key per entry (``chat:reply-cache:<key>``), set with ``EX`` so Redis itself expires it."""

    def __init__(self, url: str, ttl: int, health: RedisHealth, prefix: str = KEY_PREFIX) -> None:
        self.ttl = ttl
        self.health = health
        self.prefix = prefix
        self._redis: Any = client(url, read_timeout=LOOKUP_TIMEOUT)

    def get(self, key: str) -> bytes | None:
        found = self.health.attempt("reading the reply cache", lambda: self._redis.get(self.prefix + key))
        return found if isinstance(found, bytes) else None

    def put(self, key: str, value: bytes) -> None:
        self.health.attempt("writing the reply cache", lambda: self._redis.set(self.prefix + key, value, ex=self.ttl))
