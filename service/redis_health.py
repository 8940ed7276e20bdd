"""Whether Redis answers, as this worker last saw it, and the one place an outage is logged and decided on.

Every part that talks to Redis (limits, open-stream slots, token budgets, the stream mirror, leases, cancels)
reports here: a failure marks Redis down, any answer marks it back. The log says so once per change of state,
never once per failed call. While Redis is down, running streams go on with this host's own accounting; what
new requests get is the outage policy: ``per-host`` (the default: they go on with per-host limits) or ``refuse``
(503 ``shared_state_unavailable`` until Redis is back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import redis
from limits.errors import StorageError

from service.errors import SharedStateUnavailable

log = logging.getLogger(__name__)
POLICIES = ("per-host", "refuse")
CONNECT_TIMEOUT = 1.0  # a Redis that is gone refuses at once; one that hangs must not hold a request longer
REPLY_TIMEOUT = 2.0
CLIENT_OPTIONS: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": REPLY_TIMEOUT}
PAUSED = "The service's shared store is unavailable, so new replies are paused; try again shortly."
ERRORS = (redis.RedisError, StorageError)  # redis-py's own, and the limits library's when it wraps them
T = TypeVar("T")


class Down:
    """What ``attempt`` returns when Redis did not answer, or was not asked because it is known to be down."""


DOWN: Final = Down()


class RedisHealth:
    def __init__(self, url: str | None = None, policy: str = "per-host") -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown Redis outage policy {policy!r}")
        self.url = url  # None when nothing is kept in Redis
        self.policy = policy
        self.up = True
        self.changed_at = time.monotonic()
        self._prober: Any = None

    def probe(self) -> bool:
        """Ask Redis now (the readiness check): True when it answers."""
        if self.url is None:
            return False
        if self._prober is None:
            self._prober = client(self.url)
        try:
            self._prober.ping()
        except redis.RedisError as error:
            self.failed("answering a readiness check", error)
            return False
        self.answered()
        return True

    def failed(self, doing: str, error: BaseException) -> None:
        """A call failed: the first failure after a good spell is logged, the others are not."""
        if self.up:
            self.up = False
            self.changed_at = time.monotonic()
            then = "new requests use this host's own limits" if self.policy == "per-host" else "new requests get 503"
            log.warning("Redis is unavailable (%s: %s); running streams go on, %s", doing, error, then)

    def answered(self) -> None:
        if not self.up:
            down_for = time.monotonic() - self.changed_at
            self.up = True
            self.changed_at = time.monotonic()
            log.warning("Redis is back after %.1f s; reconciling this host's accounting", down_for)

    def up_for(self) -> float:
        """Seconds since Redis last came back (or since start): 0 while it is down."""
        return time.monotonic() - self.changed_at if self.up else 0.0

    def attempt(self, doing: str, work: Callable[[], T], new_request: bool = False) -> T | Down:
        """``work()``, or ``DOWN`` when Redis fails it or is known to be down (then it is not called). For a
        ``new_request`` the outage policy applies: under ``refuse`` it raises ``SharedStateUnavailable``."""
        if self.up:
            try:
                return work()
            except ERRORS as error:
                self.failed(doing, error)
        if new_request and self.policy == "refuse":
            raise SharedStateUnavailable(PAUSED)
        return DOWN


def client(url: str, read_timeout: float = REPLY_TIMEOUT) -> Any:
    """A client that gives up on a dead or hung Redis in seconds (redis-py waits forever by default).
    ``read_timeout`` must exceed any ``BLOCK`` the caller asks for. Typed ``Any``: redis-py's reply types are too
    loose to check."""
    return redis.Redis.from_url(url, **{**CLIENT_OPTIONS, "socket_timeout": read_timeout})
