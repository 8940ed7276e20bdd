"""Prometheus metrics. Nothing here runs per token: a stream reports when it starts, when its first token is
written and when it ends; gauges are sampled once a second and when scraped. No user ids or text in labels: the
model, an outcome code, a limit's name. Each app has its own registry (tests build many apps in one process)."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import gevent
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from service.chat.stream import ChatStream

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_SECONDS = 1.0
DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
RELAY_DELAY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
RATE_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)
UPSTREAM_OUTCOMES = frozenset({"upstream_error", "idle_timeout"})  # a provider failing mid-stream


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


class WorkerGauges(Collector):
    """Gauges of the one worker process answering the scrape (its fds, its event loop), read when scraped. A
    collector of its own rather than ``Gauge`` objects: in multiprocess mode those would also leave a file per
    process, and the name would appear twice."""

    def __init__(self) -> None:
        self.readers: list[tuple[str, str, Callable[[], float]]] = []
        self.infos: list[tuple[str, str, dict[str, str]]] = []

    def collect(self) -> Iterator[Metric]:
        for name, documentation, read in self.readers:
            yield GaugeMetricFamily(name, documentation, value=read())
        for name, documentation, labels in self.infos:
            yield InfoMetricFamily(name, documentation, value=labels)


class Metrics:
    """Under gunicorn (``PROMETHEUS_MULTIPROC_DIR``, set by gunicorn.conf.py) counters, histograms and the stream
    gauges live in files shared by every worker of the host, so a scrape of any worker describes them all; the
    ``chat_process_*`` gauges describe the worker that answered. Elsewhere (tests, a mounted app under another
    server) everything is this process's own."""

    def __init__(self) -> None:
        self.multiprocess = MULTIPROCESS_DIR in os.environ
        self.registry = CollectorRegistry()
        shared = None if self.multiprocess else self.registry  # multiprocess values are read from the files
        if self.multiprocess:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        by_model = ["model"]
        self.streams_started = Counter("chat_streams_started", "Streams started.", by_model, registry=shared)
        self.streams_ended = Counter(
            "chat_streams_ended", "Streams ended, by outcome code.", ["outcome", "model"], registry=shared
        )
        self.tokens = Counter("chat_tokens_relayed", "Token events relayed.", by_model, registry=shared)
        self.upstream_errors = Counter(
            "chat_upstream_errors", "Provider failures, by the error code they became.", ["kind"], registry=shared
        )
        self.refusals = Counter("chat_refusals", "Requests refused by a limit, by limit.", ["limit"], registry=shared)
        self.cache_lookups = Counter(
            "chat_response_cache_lookups",
            "First-turn messages looked up in the response cache (RESPONSE_CACHE), by result: hit or miss.",
            ["result"],
            registry=shared,
        )
        self._cache_hits, self._cache_misses = self.cache_lookups.labels("hit"), self.cache_lookups.labels("miss")
        self.stream_seconds = Histogram(
            "chat_stream_seconds", "Whole-stream duration.", by_model, buckets=DURATION_BUCKETS, registry=shared
        )
        self.first_token_seconds = Histogram(
            "chat_time_to_first_token_seconds",
            "Request received to the provider's first token.",
            by_model,
            buckets=FIRST_TOKEN_BUCKETS,
            registry=shared,
        )
        self.relay_delay_seconds = Histogram(
            "chat_relay_first_token_delay_seconds",
            "The relay's own delay before the first token: written to the client minus read from the provider.",
            by_model,
            buckets=RELAY_DELAY_BUCKETS,
            registry=shared,
        )
        self.tokens_per_second = Histogram(
            "chat_tokens_per_second",
            "Tokens a second from the first token to the end of the stream.",
            by_model,
            buckets=RATE_BUCKETS,
            registry=shared,
        )
        self.sampled: list[tuple[Gauge, Callable[[], float]]] = []
        self._by_model: dict[str, ModelSeries] = {}
        self.worker = WorkerGauges()
        self.registry.register(self.worker)

    def gauge(self, name: str, documentation: str, read: Callable[[], float], mode: str = "livesum") -> None:
        """A gauge of the whole host: each worker's ``read()`` is sampled (every second, and when it answers a
        scrape) and the workers' values are combined by ``mode`` (``livesum``, ``livemin``...)."""
        gauge = Gauge(
            name,
            documentation,
            registry=None if self.multiprocess else self.registry,
            multiprocess_mode=mode,  # type: ignore[arg-type]
        )
        self.sampled.append((gauge, read))

    def sample(self) -> None:
        for gauge, read in self.sampled:
            gauge.set(read())

    def start_sampling(self) -> gevent.Greenlet[[], None] | None:
        """Under gunicorn, keep this worker's share of the host gauges fresh for scrapes answered by the others."""
        if not self.multiprocess:
            return None

        def loop() -> None:
            while True:
                gevent.sleep(SAMPLE_SECONDS)
                self.sample()

        return gevent.spawn(loop)

    def add_process_gauges(self) -> None:
        worker = self.worker
        watchers = "Active watchers (connections, timers, waits) of this worker's event loop."
        worker.readers.append(("chat_process_event_loop_watchers", watchers, _count_loop_watchers))
        worker.readers.append(("chat_process_open_fds", "Open file descriptors of this worker.", _count_fds))
        frozen = "Objects frozen out of the garbage collector's walks at worker start (service/heap.py)."
        worker.readers.append(("chat_process_gc_frozen_objects", frozen, lambda: float(gc.get_freeze_count())))
        resolver = "gevent's name resolver in this worker (gunicorn.conf.py picks c-ares)."
        worker.infos.append(("chat_process_resolver", resolver, {"resolver": _resolver_name()}))

    def for_model(self, model: str) -> ModelSeries:
        series = self._by_model.get(model)
        if series is None:
            series = self._by_model[model] = ModelSeries(self, model)
        return series

    def cache_looked_up(self, hit: bool) -> None:
        (self._cache_hits if hit else self._cache_misses).inc()

    def stream_started(self, model: str) -> None:
        self.for_model(model).started.inc()

    def stream_ended(self, chat: ChatStream, seconds: float) -> None:
        """Once per stream, at its end."""
        model, outcome, tokens = chat.metadata.model, chat.outcome, chat.tokens_relayed
        series = self.for_model(model)
        series.ended(outcome).inc()
        series.tokens.inc(tokens)
        series.stream_seconds.observe(seconds)
        if outcome in UPSTREAM_OUTCOMES:
            self.upstream_errors.labels(outcome).inc()
        if chat.metadata.cached:  # no provider answered: its first token and rate are not the provider's
            return
        ttft = chat.ttft_ms
        if ttft is not None:
            series.first_token_seconds.observe(ttft / 1000)
        rate = chat.tokens_per_second(tokens, seconds)
        if rate is not None:
            series.tokens_per_second.observe(rate)

    def first_token_written(self, chat: ChatStream) -> None:
        self.for_model(chat.metadata.model).relay_delay_seconds.observe(time.monotonic() - chat.first_token_at)

    def render(self) -> bytes:
        """Sampled in this greenlet; under gunicorn the text is built in gevent's thread pool, because reading every
        worker's files took 50-100 ms, and in the event loop that held every stream of the worker as long. In a
        thread the loop takes the interpreter back every few milliseconds."""
        self.sample()
        if not self.multiprocess:
            return generate_latest(self.registry)
        return cast(bytes, gevent.get_hub().threadpool.apply(generate_latest, (self.registry,)))


class ModelSeries:
    """One model's series of the by-model metrics, looked up once: ``labels()`` checks and locks on every call, and
    each stream made eight of them. Models come from ``ALLOWED_MODELS``, so there are few of these."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.model = model
        self._metrics = metrics
        self._ended: dict[str, Any] = {}
        self.started = metrics.streams_started.labels(model)
        self.tokens = metrics.tokens.labels(model)
        self.stream_seconds = metrics.stream_seconds.labels(model)
        self.first_token_seconds = metrics.first_token_seconds.labels(model)
        self.relay_delay_seconds = metrics.relay_delay_seconds.labels(model)
        self.tokens_per_second = metrics.tokens_per_second.labels(model)

    def ended(self, outcome: str) -> Any:
        """The ``chat_streams_ended`` series of this model and ``outcome`` (an error code: a short, fixed list)."""
        series = self._ended.get(outcome)
        if series is None:
            series = self._ended[outcome] = self._metrics.streams_ended.labels(outcome, self.model)
        return series


def _resolver_name() -> str:
    """``ares``, ``thread``, ``block``...: the last part of the module of gevent's configured resolver."""
    import gevent

    return str(gevent.config.resolver.__module__).rsplit(".", 1)[-1]
