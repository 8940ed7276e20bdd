"""Builds the Flask app: settings, extensions, blueprints, error handlers. No routes live here."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from service.api import chat, conversations, health, pages
from service.api.errors import register_error_handlers
from service.auth import Authenticator
from service.chat.context import ContextBuilder
from service.chat.service import ChatService
from service.config import Settings, default_database_url
from service.extensions import KEY, Services
from service.limits import TokenBudget, build_request_limiter, build_stream_slots
from service.llm.providers import build_clients
from service.llm.streaming import StreamingService
from service.llm.tokens import LocalTokenizer, TokenCounter
from service.llm.windows import ContextWindows
from service.metrics import Metrics, upstream_connections_in_use, upstream_pool_size
from service.relay.mirror import SharedStreams
from service.relay.registry import CancelRelay, StreamRegistry
from service.relay.shutdown import end_streams_on_sigterm
from service.relay.watchdog import Timing
from service.store.conversations import ConversationStore
from service.store.database import Database

log = logging.getLogger(__name__)


def build_app(overrides: Mapping[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """Build the app from the environment; ``overrides`` replace individual settings (tests)."""
    app = Flask("service", instance_relative_config=True)
    settings = (settings or Settings.from_env()).with_overrides(overrides or {})
    if not settings.database_url:
        settings = settings.with_overrides({"database_url": default_database_url(app.instance_path)})
    database = Database(settings.database_url)
    database.create_tables()
    store = ConversationStore(database)
    auth = Authenticator(settings)
    if not auth.enabled:
        log.warning("JWT_SECRET and JWT_PUBLIC_KEY are unset: auth is OFF and every request is one local user.")
    app.extensions[KEY] = Services(
        settings=settings,
        database=database,
        conversations=store,
        chat=ChatService(settings, StreamingService(*build_clients(settings)), store, _context_builder(settings)),
        streams=StreamRegistry(),
        auth=auth,
        timing=Timing(
            settings.heartbeat_seconds,
            settings.stream_idle_timeout,
            settings.stream_max_seconds,
            settings.resume_grace_seconds,
        ),
        slots=build_stream_slots(settings),
        budget=TokenBudget(settings),
        metrics=Metrics(),
        shared=SharedStreams(settings.redis_url) if settings.redis_url else None,
    )
    _register_gauges(app.extensions[KEY])
    if _gevent_worker():
        found: Services = app.extensions[KEY]
        end_streams_on_sigterm(found.streams)
        if found.shared is not None:
            found.shared.listen_for_cancels(CancelRelay(found.streams))
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    for blueprint in (chat.bp, conversations.bp, health.bp, pages.bp):
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    build_request_limiter(app, settings, auth)
    return app


def _context_builder(settings: Settings) -> ContextBuilder:
    """The local model is asked for its window and counts its own tokens; providers get estimates."""
    local = settings.local_model_url
    windows = ContextWindows(dict(settings.context_windows), settings.context_window, local)
    counter = TokenCounter(LocalTokenizer(local) if local else None)
    return ContextBuilder(settings.system_prompt, settings.max_tokens, windows, counter)


def _register_gauges(found: Services) -> None:
    """What a leak would show: each must return to its idle value once streams end."""
    metrics = found.metrics
    metrics.add_process_gauges()
    metrics.gauge("chat_streams_open", "Streams being generated now.", lambda: float(len(found.streams.running())))
    metrics.gauge("chat_stream_slots_held", "Per-user open-stream slots held.", lambda: float(found.slots.open_count()))
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
