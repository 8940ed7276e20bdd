"""The in-memory limits storage: the library's counting, with its expiry sweep on one gevent timer."""

from __future__ import annotations

import gevent
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from service.limit_storage import GeventMemoryStorage, storage_uri


def test_memory_uris_map_to_ours_and_others_are_kept() -> None:
    assert storage_uri("memory://") == "gevent-memory://"
    assert storage_uri("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert isinstance(storage_from_string(storage_uri("memory://")), GeventMemoryStorage)


def test_hits_start_no_timer_threads_and_one_sweep_frees_expired_keys() -> None:
    storage = storage_from_string(storage_uri("memory://"))
    assert isinstance(storage, GeventMemoryStorage)
    first_timer = storage.timer  # the base class's own, started once in its constructor
    limiter = FixedWindowRateLimiter(storage)
    per_second = parse("100/second")
    gevent.joinall([gevent.spawn(limiter.hit, per_second, "user", str(number)) for number in range(200)])
    assert storage.timer is first_timer  # the base class would have started a new threading.Timer
    assert len(storage.storage) == 200
    assert limiter.hit(per_second, "user", "0")  # counting is the library's: a second hit in the window is fine
    gevent.sleep(1.1)  # every window has expired...
    assert limiter.hit(per_second, "other")  # ...and this hit schedules the one sweep that frees them
    assert storage.sweeper is not None
    gevent.sleep(0.1)
    assert storage.sweeper is None
    assert len(storage.storage) == 1
