"""Who may stream how much: request rate (Flask-Limiter), open streams per user, and a token budget.

All three share one storage: ``memory://`` on one host, Redis across hosts (``RATELIMIT_STORAGE_URI``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol, cast

import redis
from flask import Flask
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from service.auth import Authenticator, current_user
from service.config import Settings
from service.errors import BudgetSpent, RateLimited, Unauthorized
from service.limit_storage import storage_uri

METER_BATCH = 64  # most tokens counted per storage hit: a stream may overshoot the budget by at most this many


def user_key(auth: Authenticator) -> Callable[[], str]:
    """Limits are per user; with auth off (or a bad token, refused later anyway) per remote address."""

    def key() -> str:
        if not auth.enabled:
            return f"ip:{get_remote_address()}"
        try:
            return f"user:{current_user(auth)}"
        except Unauthorized:
            return f"ip:{get_remote_address()}"

    return key


def _breach(limit: RequestLimit) -> None:
    raise RateLimited(f"Too many requests: the limit is {limit.limit}.", retry_after=int(limit.reset_at - time.time()))


def build_request_limiter(app: Flask, settings: Settings, auth: Authenticator) -> Limiter:
    limiter = Limiter(
        user_key(auth),
        app=app,
        storage_uri=storage_uri(settings.ratelimit_storage_uri),
        strategy="fixed-window",
        headers_enabled=True,
        on_breach=_breach,  # type: ignore[arg-type]
        key_prefix="chat-gateway",
    )
    for endpoint in ("chat.chat_stream", "chat.chat"):
        view = app.view_functions[endpoint]
        app.view_functions[endpoint] = cast(Any, limiter.limit(lambda: settings.rate_limit)(view))
    return limiter


class StreamSlots(Protocol):
    """Open streams per user. ``acquire`` returns a release callable, or None when the user is at the cap."""

    def acquire(self, user_id: str) -> Callable[[], None] | None: ...

    def open_count(self) -> int: ...


class SlotRelease:
    """A slot's release: a stream has several ways out, and each may call it, but it must count once.

    An object rather than a closure over a lambda: every open stream holds one, and the two functions with their
    cells took about 490 bytes where this takes about 170 (tracemalloc)."""

    __slots__ = ("_arguments", "_release")

    def __init__(self, release: Callable[..., None], *arguments: str) -> None:
        self._release: Callable[..., None] | None = release
        self._arguments = arguments

    def __call__(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release(*self._arguments)


class MemoryStreamSlots:
    """One process's count: right for one worker; use Redis when several workers or hosts share users."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.counts: dict[str, int] = {}

    def acquire(self, user_id: str) -> Callable[[], None] | None:
        if self.counts.get(user_id, 0) >= self.maximum:
            return None
        self.counts[user_id] = self.counts.get(user_id, 0) + 1
        return SlotRelease(self._release, user_id)

    def _release(self, user_id: str) -> None:
        left = self.counts[user_id] - 1
        if left:
            self.counts[user_id] = left
        else:
            del self.counts[user_id]

    def open_count(self) -> int:
        return sum(self.counts.values())


_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisStreamSlots:
    """Shared across workers and hosts: a sorted set per user of open stream tokens, scored by start time.

    Entries older than the longest possible stream are dropped, so a crashed worker cannot hold slots forever.
    """

    def __init__(self, url: str, maximum: int, stale_after: float) -> None:
        self.client = redis.Redis.from_url(url)
        self.maximum = maximum
        self.stale_after = stale_after
        self.script = self.client.register_script(_ACQUIRE)
        self.local_open = 0

    def acquire(self, user_id: str) -> Callable[[], None] | None:
        key = f"chat-gateway:streams:{user_id}"
        token = uuid.uuid4().hex
        now = time.time()
        args: list[float | int | str] = [now - self.stale_after, self.maximum, now, token, int(self.stale_after) + 60]
        if not self.script(keys=[key], args=args):
            return None
        self.local_open += 1
        return SlotRelease(self._release, key, token)

    def _release(self, key: str, token: str) -> None:
        self.local_open -= 1
        self.client.zrem(key, token)

    def open_count(self) -> int:
        return self.local_open


def build_stream_slots(settings: Settings) -> StreamSlots:
    if settings.ratelimit_storage_uri.startswith("redis"):
        stale = settings.stream_max_seconds + settings.stream_idle_timeout
        return RedisStreamSlots(settings.ratelimit_storage_uri, settings.max_streams_per_user, stale)
    return MemoryStreamSlots(settings.max_streams_per_user)


class TokenMeter:
    """Counts one stream's completion tokens against the user's budget, one storage hit per batch."""

    def __init__(self, budget: TokenBudget, user_id: str, remaining: int) -> None:
        self.budget = budget
        self.user_id = user_id
        self.pending = 0
        self.batch = max(1, min(METER_BATCH, remaining // 4))  # small batches when little is left

    def add(self, count: int) -> None:
        self.pending += count
        if self.pending >= self.batch:
            cost, self.pending = self.pending, 0
            if not self.budget.spend(self.user_id, cost):
                raise BudgetSpent()

    def flush(self) -> None:
        """The stream ended: count the rest (the reply is already delivered, so never raise here)."""
        if self.pending:
            cost, self.pending = self.pending, 0
            self.budget.spend(self.user_id, cost)


class TokenBudget:
    """``TOKEN_BUDGET`` completion tokens per user per window, in the limits storage."""

    def __init__(self, settings: Settings) -> None:
        self.item = parse(settings.token_budget)
        self.limiter = FixedWindowRateLimiter(storage_from_string(storage_uri(settings.ratelimit_storage_uri)))

    def check(self, user_id: str) -> int:
        """The tokens left; raise ``RateLimited`` (before any upstream call) when none are."""
        reset_at, remaining = self.limiter.get_window_stats(self.item, "tokens", user_id)
        if remaining <= 0:
            raise RateLimited("Your token budget is spent.", retry_after=int(reset_at - time.time()) + 1)
        return int(remaining)

    def spend(self, user_id: str, cost: int) -> bool:
        return bool(self.limiter.hit(self.item, "tokens", user_id, cost=cost))

    def meter(self, user_id: str, remaining: int) -> TokenMeter:
        return TokenMeter(self, user_id, remaining)
