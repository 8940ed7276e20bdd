"""``gevent-memory://``: limits' in-memory storage, with its sweep of expired keys on one gevent timer.

Why: ``MemoryStorage`` sweeps expired keys from a ``threading.Timer`` that each hit starts when the last one has
finished. Under gevent a thread is a greenlet and ``Thread.start`` waits (yields) until it runs, so every request
that hits a limit meanwhile starts another: a burst of 500 streams left about 6 KB of timer "threads" per stream
(tracemalloc) and their CPU. Counting and expiry are the library's own (a key still expires when read); only the
sweep that frees stale keys is scheduled differently: at most one pending, and scheduling it never yields.
"""

from __future__ import annotations

from typing import Any

import gevent
from limits.storage import MemoryStorage

SWEEP_AFTER_SECONDS = 0.01  # as MemoryStorage's own timer
SCHEME = "gevent-memory"


class GeventMemoryStorage(MemoryStorage):
    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.sweeper: gevent.Greenlet[[], None] | None = None

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - the name the base class calls
        if self.sweeper is None:
            self.sweeper = gevent.spawn_later(SWEEP_AFTER_SECONDS, self._sweep)

    def _sweep(self) -> None:
        self.sweeper = None
        self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


if not hasattr(MemoryStorage, "_MemoryStorage__schedule_expiry"):  # pragma: no cover - a limits upgrade renamed it
    raise ImportError("limits' MemoryStorage no longer has the expiry scheduler this module replaces")


def storage_uri(configured: str) -> str:
    """The limits storage to use for ``configured``: ours in place of plain ``memory://``."""
    return SCHEME + configured[len("memory") :] if configured.startswith("memory://") else configured
