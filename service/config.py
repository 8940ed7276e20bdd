"""Typed settings, read once from the environment.

A bad value fails loudly at start (``ConfigError`` names the variable) rather than at the first request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from service.env import ConfigError, EnvReader
from service.origins import parse_origins

__all__ = ["ConfigError", "Settings", "default_database_url"]

DEFAULT_SYSTEM_PROMPT = "You are a helpful, concise assistant. Answer clearly and say so when you are not sure."
LOCAL_MODEL_NAME = "smollm2-135m-instruct"
DRAIN_MARGIN = 2.0  # seconds before gunicorn kills what is left: time to send server_shutdown and save
LOCAL_REPLY_CAP = 512  # the demo model's replies: long enough for an answer, short of a runaway loop


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment."""

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    azure_endpoint: str | None = None
    azure_api_key: str | None = None
    openai_api_version: str | None = None
    chat_model: str = "gpt-4o-mini"
    chat_models: tuple[str, ...] = ()
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int | None = None
    context_window: int | None = None  # tokens, for any model not in ``context_windows``
    context_windows: tuple[tuple[str, int], ...] = ()  # per model
    upstream_attempts: int = 3
    upstream_connect_timeout: float = 5.0
    database_url: str = ""
    save_timeout_seconds: float = 2.0  # longest a stream's end waits for its save before journaling it
    save_journal_dir: str | None = None  # None: beside a SQLite file, else the app's instance folder
    redis_url: str | None = None
    ratelimit_storage_uri: str = "memory://"
    redis_outage_policy: str = "per-host"  # what new requests get while Redis is away: per-host limits, or refuse
    rate_limit: str = "30/minute"
    token_budget: str = "40000/hour"
    max_streams_per_user: int = 3
    stream_idle_timeout: float = 60.0
    stream_max_seconds: float = 300.0
    heartbeat_seconds: float = 15.0
    send_timeout_seconds: float = 30.0  # longest a write waits for a client that does not read
    request_read_timeout_seconds: float = 10.0  # longest a client takes to send a request's head, and its body
    resume_grace_seconds: float = 15.0
    ws_idle_timeout_seconds: float = 300.0  # a WebSocket with no stream and no frame from its client is closed
    drain_seconds: float = 313.0  # gunicorn's graceful timeout less the margin its own kill needs
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    admin_claim: str = "admin"  # a token whose claim of this name is true may read every user's usage
    max_message_chars: int = 8000
    max_body_bytes: int = 64 * 1024
    history_messages: int = 20
    blocked_terms: tuple[str, ...] = ()
    moderation: bool = False
    local_model_url: str | None = None
    cors_origins: tuple[str, ...] = ()  # exact origins whose pages may call the API; none: CORS off
    response_cache: str = "off"  # off, memory (each worker its own) or redis (shared, at REDIS_URL)
    response_cache_ttl: int = 3600  # seconds a cached reply is served
    response_cache_max_entries: int = 1000  # per worker, with the memory backend: the least recently used go first

    @property
    def provider(self) -> str:
        """Which backend the settings select: ``azure``, ``openai`` (any compatible URL) or ``local``."""
        if self.azure_endpoint:
            return "azure"
        if self.openai_api_key or self.openai_base_url:
            return "openai"
        return "local"

    @property
    def allowed_models(self) -> tuple[str, ...]:
        return self.chat_models or (self.chat_model,)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"Unknown settings: {sorted(unknown)}")
        return replace(self, **overrides)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        reader = EnvReader(env)
        provider_set = env.get("AZURE_OPENAI_ENDPOINT") or env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL")
        local = bool(env.get("LOCAL_MODEL_URL")) or not provider_set  # the master points workers at it
        chat_model = reader.text("CHAT_MODEL", LOCAL_MODEL_NAME if local else "gpt-4o-mini")
        redis_url = reader.optional("REDIS_URL")
        reply_cap = reader.optional_int("MAX_COMPLETION_TOKENS") or (LOCAL_REPLY_CAP if local else None)
        any_model_window, model_windows = reader.windows("MODEL_CONTEXT_WINDOW")
        settings = cls(
            openai_api_key=reader.optional("OPENAI_API_KEY"),
            openai_base_url=reader.optional("OPENAI_BASE_URL"),
            azure_endpoint=reader.optional("AZURE_OPENAI_ENDPOINT"),
            azure_api_key=reader.optional("AZURE_OPENAI_API_KEY"),
            openai_api_version=reader.optional("OPENAI_API_VERSION"),
            chat_model=chat_model,
            chat_models=reader.items("CHAT_MODELS") or (chat_model,),
            system_prompt=reader.text("SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT),
            max_tokens=reply_cap,
            context_window=any_model_window,
            context_windows=model_windows,
            upstream_attempts=reader.integer("UPSTREAM_ATTEMPTS", 3, minimum=1),
            database_url=reader.text("DATABASE_URL", ""),
            save_timeout_seconds=reader.number("SAVE_TIMEOUT_SECONDS", 2.0, minimum=0.01),
            save_journal_dir=reader.optional("SAVE_JOURNAL_DIR"),
            redis_url=redis_url,
            ratelimit_storage_uri=reader.text("RATELIMIT_STORAGE_URI", redis_url or "memory://"),
            redis_outage_policy=reader.choice("REDIS_OUTAGE_POLICY", ("per-host", "refuse"), "per-host"),
            rate_limit=reader.rate("RATE_LIMIT", "30/minute"),
            token_budget=reader.rate("TOKEN_BUDGET", "40000/hour"),
            max_streams_per_user=reader.integer("MAX_STREAMS_PER_USER", 3, minimum=1),
            stream_idle_timeout=reader.number("STREAM_IDLE_TIMEOUT", 60.0),
            stream_max_seconds=reader.number("STREAM_MAX_SECONDS", 300.0),
            heartbeat_seconds=reader.number("HEARTBEAT_SECONDS", 15.0),
            send_timeout_seconds=reader.number("SEND_TIMEOUT_SECONDS", 30.0),
            request_read_timeout_seconds=reader.number("REQUEST_READ_TIMEOUT_SECONDS", 10.0),
            resume_grace_seconds=reader.number("RESUME_GRACE_SECONDS", 15.0, minimum=0.0),
            ws_idle_timeout_seconds=reader.number("WS_IDLE_TIMEOUT_SECONDS", 300.0, minimum=0.1),
            drain_seconds=max(0.0, graceful_timeout(reader) - DRAIN_MARGIN),
            jwt_secret=reader.optional("JWT_SECRET"),
            jwt_public_key=reader.optional("JWT_PUBLIC_KEY"),
            jwt_audience=reader.optional("JWT_AUDIENCE"),
            jwt_issuer=reader.optional("JWT_ISSUER"),
            admin_claim=reader.text("ADMIN_CLAIM", "admin"),
            max_message_chars=reader.integer("MAX_MESSAGE_CHARS", 8000, minimum=1),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", 64 * 1024, minimum=256),
            history_messages=reader.integer("HISTORY_MESSAGES", 20, minimum=0),
            blocked_terms=reader.items("BLOCKED_TERMS"),
            moderation=reader.switch("MODERATION"),
            local_model_url=reader.optional("LOCAL_MODEL_URL"),
            cors_origins=parse_origins("CORS_ORIGINS", reader.items("CORS_ORIGINS")),
            response_cache=response_cache(reader, redis_url),
            response_cache_ttl=reader.integer("RESPONSE_CACHE_TTL", 3600, minimum=1),
            response_cache_max_entries=reader.integer("RESPONSE_CACHE_MAX_ENTRIES", 1000, minimum=1),
        )
        return settings


def default_database_url(instance_path: str) -> str:
    return f"sqlite:///{Path(instance_path) / 'chat.sqlite3'}"


def response_cache(reader: EnvReader, redis_url: str | None) -> str:
    """``RESPONSE_CACHE``: ``redis`` needs ``REDIS_URL``, and says so at start rather than caching nothing."""
    backend = reader.choice("RESPONSE_CACHE", ("off", "memory", "redis"), "off")
    if backend == "redis" and not redis_url:
        raise ConfigError("Config 'RESPONSE_CACHE' is redis, which needs REDIS_URL set.")
    return backend


def graceful_timeout(reader: EnvReader) -> int:
    """gunicorn's graceful timeout: ``GUNICORN_GRACEFUL_TIMEOUT``, by default long enough for the longest stream
    (``STREAM_MAX_SECONDS``) to finish while its host drains. gunicorn.conf.py and the settings read it alike."""
    longest = reader.number("STREAM_MAX_SECONDS", 300.0)
    return reader.integer("GUNICORN_GRACEFUL_TIMEOUT", int(longest) + 15, minimum=1)
