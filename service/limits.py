"""Who may stream how much: request rate (Flask-Limiter), open streams per user, and a token budget.

All three share one storage: ``memory://`` on one host, Redis across hosts (``RATELIMIT_STORAGE_URI``).
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import redis
from flask import Flask, Response
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from service.auth import Authenticator, current_user
from service.config import Settings
from service.errors import BudgetSpent, RateLimited, Unauthorized
from service.limit_storage import GeventMemoryStorage, storage_uri
from service.redis_health import CLIENT_OPTIONS, DOWN, ERRORS, Down, RedisHealth
from service.redis_health import client as redis_client

METER_BATCH = 64  # most tokens counted per storage hit: a stream may overshoot the budget by at most this many
RENEW_SECONDS = 1.0


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


def build_request_limiter(app: Flask, settings: Settings, auth: Authenticator) -> Limiter:
    """Requests per user per window. While Redis is away the limiter counts in this worker's memory (Flask-Limiter's
    own fallback) and goes back to Redis when it answers."""
    uri = settings.ratelimit_storage_uri
    limiter = Limiter(
        user_key(auth),
        app=app,
        storage_uri=storage_uri(uri),
        storage_options=CLIENT_OPTIONS if uri.startswith("redis") else None,
        in_memory_fallback_enabled=uri.startswith("redis"),
        strategy="fixed-window",
        headers_enabled=False,  # its Retry-After would name the request window's reset on every refusal
        key_prefix="chat-gateway",
    )
    _only_decorated_views(app, limiter)
    for endpoint in ("chat.chat_stream", "chat.chat"):
        view = app.view_functions[endpoint]
        limited = limiter.limit(lambda: settings.rate_limit)(view)
        app.view_functions[endpoint] = _refused_as_ours(limited, limiter)
    app.after_request(_limit_headers(limiter))
    return limiter


class TurnLimit:
    """``RATE_LIMIT`` for chat turns that are not requests (WebSocket ``chat`` frames): each counts in the same
    window as a ``POST /chat/stream`` of the same user, so a client cannot double its rate by switching transport.
    While the storage is away a turn is let through (the limiter's own fallback counts requests only)."""

    SCOPE = "chat.chat_stream"  # Flask-Limiter's scope for the stream view's limit: the same counter

    def __init__(self, limiter: Limiter, settings: Settings) -> None:
        self.limiter = limiter
        self.limit = parse(settings.rate_limit)

    def check(self, key: str) -> None:
        """Count one turn for ``key`` (``user_key``'s form); ``RateLimited`` when the window is full."""
        strategy = self.limiter.limiter
        identifiers = ("chat-gateway", key, self.SCOPE)
        try:
            if strategy.hit(self.limit, *identifiers):
                return
            reset_at = strategy.get_window_stats(self.limit, *identifiers).reset_time
        except ERRORS:
            return
        retry_after = int(reset_at - time.time()) + 1
        raise RateLimited(f"Too many requests: the limit is {self.limit.amount}.", retry_after)


def _only_decorated_views(app: Flask, limiter: Limiter) -> None:
    """Drop the limiter's app-wide ``before_request`` check: it exists for default and blueprint limits, which the
    service has none of, and it resolved limits for every request (health checks and scrapes included), a tenth
    of a short chat request's CPU. The limited views are checked by their own decorator."""
    app.before_request_funcs[None].remove(limiter._check_request_limit)


def _refused_as_ours(limited: Callable[..., Any], limiter: Limiter) -> Callable[..., Any]:
    """Flask-Limiter's refusal becomes the service's ``RateLimited``. Raised here, outside the limiter: an error
    raised inside it (``on_breach``) would be taken for its storage failing."""

    @functools.wraps(limited)
    def view(*args: Any, **kwargs: Any) -> Any:
        try:
            return limited(*args, **kwargs)
        except RateLimitExceeded as exceeded:
            current = limiter.current_limit
            retry_after = int(current.reset_at - time.time()) if current is not None else 1
            raise RateLimited(f"Too many requests: the limit is {exceeded.limit.limit}.", retry_after) from None

    return view


def _limit_headers(limiter: Limiter) -> Callable[[Response], Response]:
    """``X-RateLimit-*`` on the limited views; ``Retry-After`` comes only with a refusal, from the refusal itself,
    so the header and the body's ``retryAfter`` always agree."""

    def add(response: Response) -> Response:
        current = limiter.current_limit
        if current is None:
            return response
        try:
            reset_at, remaining = current.reset_at, current.remaining
        except ERRORS:
            return response
        response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
        response.headers["X-RateLimit-Remaining"] = str(remaining)
        response.headers["X-RateLimit-Reset"] = str(reset_at)
        return response

    return add


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
SLOT_LEASE_SECONDS = 10.0  # a slot whose host stops renewing it (a crash) is free again this long after


class RedisStreamSlots:
    """Shared across workers and hosts: a sorted set per user of open-stream slots, each scored by when its lease
    runs out. This worker renews the leases of the slots it holds once a second (``renew``, one pipeline for all),
    so a host that dies frees its users' slots within ``SLOT_LEASE_SECONDS``.

    While Redis is away a slot is granted by this worker's own count (the outage policy permitting), and when it is
    back ``renew`` writes every slot held here and removes the ones released meanwhile: the shared count is right
    again within a second.
    """

    def __init__(self, url: str, maximum: int, health: RedisHealth) -> None:
        self.client = redis_client(url)
        self.maximum = maximum
        self.health = health
        self.script = self.client.register_script(_ACQUIRE)
        self.held: dict[str, str] = {}  # slot token -> its user's key
        self.per_user: dict[str, int] = {}  # slots held here, by key: the count that decides during an outage
        self.released_unseen: dict[str, str] = {}  # released while Redis was away: token -> key
        self.in_sync = True  # False after a failed call: the next renewal writes every slot, not only present ones

    def acquire(self, user_id: str) -> Callable[[], None] | None:
        key = f"chat-gateway:streams:{user_id}"
        token = uuid.uuid4().hex
        now = time.time()
        lease = now + SLOT_LEASE_SECONDS
        args: list[float | int | str] = [now, self.maximum, lease, token, int(SLOT_LEASE_SECONDS) + 60]
        granted = self.health.attempt("counting open streams", lambda: self.script(keys=[key], args=args), True)
        if granted is DOWN:  # this worker's own count decides until Redis is back
            self.in_sync = False
            granted = self.per_user.get(key, 0) < self.maximum
        if not granted:
            return None
        self.held[token] = key
        self.per_user[key] = self.per_user.get(key, 0) + 1
        return SlotRelease(self._release, key, token)

    def _release(self, key: str, token: str) -> None:
        del self.held[token]
        left = self.per_user[key] - 1
        if left:
            self.per_user[key] = left
        else:
            del self.per_user[key]
        if self.health.attempt("releasing an open-stream slot", lambda: self.client.zrem(key, token)) is DOWN:
            self.in_sync = False
            self.released_unseen[token] = key

    def renew(self) -> None:
        """Extend the leases of the slots held here; after an outage, also write the ones granted meanwhile and
        remove the ones released meanwhile. Raises ``redis.RedisError`` when Redis is still away."""
        if not self.held and not self.released_unseen:
            return
        catching_up = not self.in_sync
        pipe = self.client.pipeline(transaction=False)
        lease = time.time() + SLOT_LEASE_SECONDS
        for token, key in self.held.items():
            pipe.zadd(key, {token: lease}, xx=not catching_up)
        gone = dict(self.released_unseen)
        for token, key in gone.items():
            pipe.zrem(key, token)
        try:
            pipe.execute()
        except redis.RedisError:
            self.in_sync = False
            raise
        for token in gone:
            self.released_unseen.pop(token, None)
        if catching_up and not self.released_unseen:
            self.in_sync = True

    def open_count(self) -> int:
        return len(self.held)


def build_stream_slots(settings: Settings, health: RedisHealth) -> StreamSlots:
    if settings.ratelimit_storage_uri.startswith("redis"):
        return RedisStreamSlots(settings.ratelimit_storage_uri, settings.max_streams_per_user, health)
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
    """``TOKEN_BUDGET`` completion tokens per user per window, in the limits storage.

    With Redis, an outage does not stop a stream: spending goes on against this worker's own count, and what was
    spent meanwhile is added to the shared count when Redis answers again (``reconcile``)."""

    def __init__(self, settings: Settings, health: RedisHealth) -> None:
        self.item = parse(settings.token_budget)
        self.health = health
        uri = settings.ratelimit_storage_uri
        options = CLIENT_OPTIONS if uri.startswith("redis") else {}
        self.limiter = FixedWindowRateLimiter(storage_from_string(storage_uri(uri), **options))
        self.local = FixedWindowRateLimiter(GeventMemoryStorage())  # consulted only while Redis is away
        self.owed: dict[str, int] = {}  # spent while Redis was away, by user: added to Redis when it is back

    def check(self, user_id: str) -> int:
        """The tokens left; raise ``RateLimited`` (before any upstream call) when none are."""
        stats = self.health.attempt(
            "checking a token budget", lambda: self.limiter.get_window_stats(self.item, "tokens", user_id), True
        )
        if isinstance(stats, Down):
            stats = self.local.get_window_stats(self.item, "tokens", user_id)
        reset_at, remaining = stats
        if remaining <= 0:
            raise RateLimited("Your token budget is spent.", int(reset_at - time.time()) + 1, "budget")
        return int(remaining)

    def spend(self, user_id: str, cost: int) -> bool:
        hit = self.health.attempt(
            "spending a token budget", lambda: self.limiter.hit(self.item, "tokens", user_id, cost=cost)
        )
        if isinstance(hit, Down):  # counted here, and in Redis once it is back
            self.owed[user_id] = self.owed.get(user_id, 0) + cost
            hit = self.local.hit(self.item, "tokens", user_id, cost=cost)
        return bool(hit)

    def reconcile(self) -> None:
        """Add what was spent during an outage to the shared count. Raises while Redis is still away."""
        while self.owed:
            user_id, cost = next(iter(self.owed.items()))
            self.limiter.hit(self.item, "tokens", user_id, cost=cost)  # counted even past the limit
            if self.owed.get(user_id) == cost:
                del self.owed[user_id]
            else:  # more was spent while this call waited on Redis
                self.owed[user_id] -= cost

    def meter(self, user_id: str, remaining: int) -> TokenMeter:
        return TokenMeter(self, user_id, remaining)


class LimitsUpkeep:
    """One greenlet per worker when limits live in Redis: renews slot leases and, after an outage, reconciles."""

    def __init__(self, slots: StreamSlots, budget: TokenBudget, health: RedisHealth) -> None:
        self.slots = slots
        self.budget = budget
        self.health = health

    def start(self) -> gevent.Greenlet[[], None]:
        return gevent.spawn(self._loop)

    def _loop(self) -> None:
        while True:
            gevent.sleep(RENEW_SECONDS)
            try:
                self.run_once()
            except ERRORS as error:
                self.health.failed("renewing open-stream slots", error)

    def run_once(self) -> None:
        if not self.health.up and not self.health.probe():
            return
        if isinstance(self.slots, RedisStreamSlots):
            self.slots.renew()
        if self.budget.owed:
            self.budget.reconcile()
