"""The per-process singletons, built once in ``create_app`` and reached through ``services()``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from service.auth import Authenticator
from service.chat.service import ChatService
from service.config import Settings
from service.limits import StreamSlots, TokenBudget, TurnLimit
from service.metrics import Metrics
from service.redis_health import RedisHealth
from service.relay.mirror import SharedStreams
from service.relay.registry import StreamRegistry
from service.relay.watchdog import Timing
from service.store.conversations import ConversationStore
from service.store.database import Database
from service.store.usage import UsageStore

KEY = "chat_gateway"


@dataclass
class Services:
    settings: Settings
    database: Database
    conversations: ConversationStore
    usage: UsageStore
    chat: ChatService
    streams: StreamRegistry
    auth: Authenticator
    timing: Timing
    slots: StreamSlots
    budget: TokenBudget
    metrics: Metrics
    shared: SharedStreams | None  # streams visible from any host (REDIS_URL), else None
    redis_health: RedisHealth
    turn_limit: TurnLimit | None = None  # RATE_LIMIT for WebSocket turns, set once the limiter is built


def services() -> Services:
    found: Services = current_app.extensions[KEY]
    return found
