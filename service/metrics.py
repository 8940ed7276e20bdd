"""Prometheus metrics. Nothing here runs per token: streams report once, at their end; gauges are
computed when scraped. Each app has its own registry (tests build many apps in one process)."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest


def _count_loop_watchers() -> float:
    """Active watchers of this worker's event loop: every connection being read, every timer, every greenlet
    waiting on I/O holds one, so a leaked stream shows here. Counting greenlets instead meant walking the whole
    heap after a full collection on every scrape (a ~140 ms pause for every stream of the worker)."""
    import gevent

    return float(gevent.get_hub().loop.activecnt)


def _count_fds() -> float:
    try:
        return float(len(os.listdir("/proc/self/fd")))
    except OSError:
        return float("nan")


def _pool_connections(client: Any) -> list[Any]:
    """The connections of an httpx2 client's pool (an internal, read only for metrics)."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    return list(getattr(pool, "connections", []))


def upstream_pool_size(client: Any) -> float:
    """Connections the SDK's HTTP pool holds, idle keep-alives included."""
    return float(len(_pool_connections(client)))


def upstream_connections_in_use(client: Any) -> float:
    """Connections of the SDK's HTTP pool that carry a request now (idle keep-alives excluded)."""
    return float(sum(1 for item in _pool_connections(client) if not item.is_idle() and not item.is_closed()))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.streams_started = Counter("chat_streams_started", "Streams started.", registry=self.registry)
        self.streams_ended = Counter(
            "chat_streams_ended", "Streams ended, by outcome code.", ["outcome"], registry=self.registry
        )
        self.tokens = Counter("chat_tokens_relayed", "Token events relayed.", registry=self.registry)
        self.stream_seconds = Histogram(
            "chat_stream_seconds",
            "Whole-stream duration.",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def add_process_gauges(self) -> None:
        watchers = "Active watchers (connections, timers, waits) of this worker's event loop."
        self.gauge("chat_process_event_loop_watchers", watchers, _count_loop_watchers)
        self.gauge("chat_process_open_fds", "Open file descriptors of this worker.", _count_fds)
        frozen = "Objects frozen out of the garbage collector's walks at worker start (service/heap.py)."
        self.gauge("chat_process_gc_frozen_objects", frozen, lambda: float(gc.get_freeze_count()))
        resolver = Info(
            "chat_process_resolver",
            "gevent's name resolver in this worker (gunicorn.conf.py picks c-ares).",
            registry=self.registry,
        )
        resolver.info({"resolver": _resolver_name()})

    def stream_ended(self, outcome: str, tokens: int, seconds: float) -> None:
        self.streams_ended.labels(outcome).inc()
        self.tokens.inc(tokens)
        self.stream_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _resolver_name() -> str:
    """``ares``, ``thread``, ``block``...: the last part of the module of gevent's configured resolver."""
    import gevent

    return str(gevent.config.resolver.__module__).rsplit(".", 1)[-1]
