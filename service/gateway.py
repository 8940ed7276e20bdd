"""The gateway as a Flask extension (flaskr / Flask-Limiter style): ``ChatGateway(app)`` or ``init_app(app)``.

A standalone deployment gets the whole app from ``create_app``, which uses this too. An existing Flask app mounts
the API under a prefix of its own and names the user its own way:

    gateway = ChatGateway()
    gateway.init_app(app, url_prefix="/assistant", user_loader=lambda: session.get("user_id"))

``user_loader`` is called once per request and returns the user's id, or None for an anonymous request (401);
it replaces the gateway's own JWT check. Mounted, the gateway adds its views (chat, conversations, health) and
handles the errors raised in them; the host's own routes and error handlers are left alone. It needs a server that
holds many streams at once (gunicorn's gevent worker) and says so loudly when started under any other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from service.api import chat, conversations, health, models, pages, usage, ws
from service.api.errors import register_error_handlers
from service.auth import Authenticator
from service.chat.cache import ReplyCache
from service.chat.context import ContextBuilder
from service.chat.service import ChatService
from service.config import ConfigError, Settings, default_database_url
from service.extensions import KEY, Services
from service.limits import LimitsUpkeep, TokenBudget, TurnLimit, build_request_limiter, build_stream_slots
from service.llm.providers import build_clients
from service.llm.streaming import StreamingService
from service.llm.tokens import LocalTokenizer, TokenCounter
from service.llm.windows import ContextWindows
from service.metrics import Metrics, upstream_connections_in_use, upstream_pool_size
from service.redis_health import RedisHealth
from service.relay.leases import LeaseKeeper
from service.relay.mirror import SharedStreams
from service.relay.registry import CancelRelay, StreamRegistry
from service.relay.shutdown import drain_on_sigterm
from service.relay.watchdog import Timing
from service.store.conversations import ConversationStore
from service.store.database import Database
from service.store.journal import SaveJournal, default_folder
from service.store.reply_cache import MemoryReplyCache, RedisReplyCache
from service.store.usage import UsageStore
from service.tracing import start_tracing

log = logging.getLogger(__name__)
UserLoader = Callable[[], "str | None"]
API_PREFIX = "/api/v1/ai"
ONE_AT_A_TIME = (
    "This server is not running the gateway under gevent (gunicorn's gevent worker, `-k gevent`): each open "
    "stream would hold a whole worker, and streams would be served ONE AT A TIME. Run it with "
    "`gunicorn -c gunicorn.conf.py wsgi:app`, or with `-k gevent` for an app that mounts it."
)


class ChatGateway:
    """Binds the gateway to a Flask app; its per-process parts live in ``app.extensions["chat_gateway"]``."""

    def __init__(self, app: Flask | None = None, **options: object) -> None:
        if app is not None:
            self.init_app(app, **options)  # type: ignore[arg-type]

    def init_app(
        self,
        app: Flask,
        *,
        settings: Settings | None = None,
        url_prefix: str = "",
        user_loader: UserLoader | None = None,
        standalone: bool = False,
    ) -> Services:
        """Build the gateway's parts and register its views under ``url_prefix``. ``standalone`` also serves the
        chat page and makes the gateway's error shape the whole app's (``create_app``)."""
        settings = settings or Settings.from_env()
        if not settings.database_url:
            settings = settings.with_overrides({"database_url": default_database_url(app.instance_path)})
        if not settings.save_journal_dir:
            folder = default_folder(settings.database_url, Path(app.instance_path))
            settings = settings.with_overrides({"save_journal_dir": str(folder)})
        found = build_services(settings, user_loader)
        app.extensions[KEY] = found
        if not _gevent_worker():
            log.error(ONE_AT_A_TIME)
        else:
            drain_on_sigterm(found.streams, settings.drain_seconds)
            found.metrics.start_sampling()
            if found.shared is not None:
                found.shared.listen_for_cancels(CancelRelay(found.streams))
                LeaseKeeper(found.shared, found.streams, found.conversations).start()
            if settings.ratelimit_storage_uri.startswith("redis"):
                LimitsUpkeep(found.slots, found.budget, found.redis_health).start()
        prefix = url_prefix.rstrip("/")
        app.register_blueprint(chat.bp, url_prefix=prefix + API_PREFIX)
        app.register_blueprint(ws.bp, url_prefix=prefix + API_PREFIX)
        app.register_blueprint(conversations.bp, url_prefix=prefix + API_PREFIX + "/conversations")
        app.register_blueprint(usage.bp, url_prefix=prefix + API_PREFIX + "/usage")
        app.register_blueprint(models.bp, url_prefix=prefix + API_PREFIX + "/models")
        app.register_blueprint(health.bp, url_prefix=prefix or None)
        if standalone:
            app.register_blueprint(pages.bp)
            register_error_handlers(app)
        found.turn_limit = TurnLimit(build_request_limiter(app, settings, found.auth), settings)
        return found


def build_services(settings: Settings, user_loader: UserLoader | None = None) -> Services:
    database = Database(settings.database_url)
    database.create_tables()
    folder = Path(settings.save_journal_dir) if settings.save_journal_dir else default_folder(settings.database_url)
    journal = SaveJournal(folder, settings.database_url, database.cooperative)
    store = ConversationStore(database, journal, settings.save_timeout_seconds)
    auth = Authenticator(settings, user_loader)
    start_tracing()  # only with OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) set
    limits_uri = settings.ratelimit_storage_uri
    health = RedisHealth(
        settings.redis_url or (limits_uri if limits_uri.startswith("redis") else None), settings.redis_outage_policy
    )
    if not auth.enabled:
        log.warning("JWT_SECRET and JWT_PUBLIC_KEY are unset: auth is OFF and every request is one local user.")
    metrics = Metrics()
    found = Services(
        settings=settings,
        database=database,
        conversations=store,
        usage=UsageStore(database),
        chat=ChatService(
            settings,
            StreamingService(*build_clients(settings), response_timeout=settings.stream_idle_timeout),
            store,
            _context_builder(settings),
            _reply_cache(settings, health, metrics),
        ),
        streams=StreamRegistry(),
        auth=auth,
        timing=Timing(
            settings.heartbeat_seconds,
            settings.stream_idle_timeout,
            settings.stream_max_seconds,
            settings.resume_grace_seconds,
            settings.send_timeout_seconds,
        ),
        slots=build_stream_slots(settings, health),
        budget=TokenBudget(settings, health),
        metrics=metrics,
        shared=SharedStreams(settings.redis_url, health) if settings.redis_url else None,
        redis_health=health,
    )
    _register_gauges(found)
    return found


def _context_builder(settings: Settings) -> ContextBuilder:
    """The local model is asked for its window and counts its own tokens; providers get estimates."""
    local = settings.local_model_url
    windows = ContextWindows(dict(settings.context_windows), settings.context_window, local)
    counter = TokenCounter(LocalTokenizer(local) if local else None)
    return ContextBuilder(settings.system_prompt, settings.max_tokens, windows, counter)


def _reply_cache(settings: Settings, health: RedisHealth, metrics: Metrics) -> ReplyCache | None:
    """``RESPONSE_CACHE``: None when off, so a request pays one ``is None`` check for it."""
    backend = settings.response_cache
    if backend == "off":
        return None
    if backend == "memory":
        return ReplyCache(
            MemoryReplyCache(settings.response_cache_ttl, settings.response_cache_max_entries), metrics.cache_looked_up
        )
    if backend == "redis" and settings.redis_url:
        return ReplyCache(
            RedisReplyCache(settings.redis_url, settings.response_cache_ttl, health), metrics.cache_looked_up
        )
    raise ConfigError(f"Config 'RESPONSE_CACHE' must be off, memory or redis (redis with REDIS_URL), got {backend!r}.")


def _register_gauges(found: Services) -> None:
    """What a leak would show: each must return to its idle value once streams end."""
    metrics = found.metrics
    metrics.add_process_gauges()
    metrics.gauge("chat_streams_open", "Streams being generated now.", lambda: float(len(found.streams.running())))
    metrics.gauge("chat_stream_slots_held", "Per-user open-stream slots held.", lambda: float(found.slots.open_count()))
    redis_up = "1 while Redis answers every worker, else 0."
    metrics.gauge("chat_redis_up", redis_up, lambda: float(found.redis_health.up), mode="livemin")
    metrics.gauge("chat_db_sessions_open", "Database sessions open now.", lambda: float(found.database.active_units))
    clients = [sdk._client for sdk in found.chat.streaming.clients]
    metrics.gauge(
        "chat_upstream_connections_in_use",
        "Upstream HTTP connections in use.",
        lambda: sum(upstream_connections_in_use(client) for client in clients),
    )
    pooled = "Upstream HTTP connections in the pool, idle keep-alives included."
    metrics.gauge(
        "chat_upstream_connections_pooled", pooled, lambda: sum(upstream_pool_size(client) for client in clients)
    )


def _gevent_worker() -> bool:
    """True inside a gevent-patched process (gunicorn's gevent worker), where the SIGTERM hook belongs."""
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))
