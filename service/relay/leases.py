"""A host that dies loses nothing that was generated: leases on running streams, and their recovery elsewhere.

Every mirrored stream holds a lease in Redis (a sorted set of stream ids by expiry). Each worker renews the leases
of its own running streams once a second, all in one pipeline (no per-token work), and looks for leases that ran
out: their host is gone without ending them. The first worker to remove an expired lease (``ZREM`` answers 1 to
exactly one caller) recovers that stream: it saves the reply the mirror holds as ``incomplete`` and ends the
stream for its readers with a retryable ``server_shutdown``.

After a Redis outage nobody could renew: every lease may have run out. A worker reaps only once Redis has answered
it for two lease periods, by which time every living host has renewed its own.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import gevent
import orjson
import redis

from service.chat.events import Error
from service.errors import ServerShutdown
from service.relay.mirror import LEASE_SECONDS, LEASES, PREFIX, RETENTION_SECONDS, SharedStreams
from service.relay.registry import StreamRegistry
from service.relay.sse import encode_event, event_prefix
from service.store.conversations import ConversationStore, ExchangeRecord

log = logging.getLogger(__name__)
RENEW_SECONDS = 1.0
_EVENT = re.compile(rb"id: [0-9a-f]+:(\d+)\ndata: (.*)\n")
HOST_LOST = "The server running this reply stopped; the reply so far is saved. Send the message again to go on."


class LeaseKeeper:
    """One greenlet per worker: renews this worker's leases and recovers streams whose host is gone."""

    def __init__(self, shared: SharedStreams, registry: StreamRegistry, store: ConversationStore) -> None:
        self.shared = shared
        self.client = shared.client
        self.health = shared.health
        self.registry = registry
        self.store = store

    def start(self) -> gevent.Greenlet[[], None]:
        return gevent.spawn(self._loop)

    def _loop(self) -> None:
        while True:
            try:
                self.renew()
                self.shared.finish_pending()
                if self.health.up_for() >= 2 * LEASE_SECONDS:
                    self.reap()
            except redis.RedisError as error:
                self.health.failed("renewing stream leases", error)
            gevent.sleep(RENEW_SECONDS)

    def renew(self) -> None:
        """Every running mirrored stream's lease, written whole (a restarted Redis may have lost it). A stream that
        ends while this call is on its way may get its lease back; its recovery then finds the end mark and stops."""
        mirrored = [live.stream_id for live in self.registry.running() if live.mirror is not None]
        if mirrored:
            expiry = time.time() + LEASE_SECONDS
            self.client.zadd(LEASES, dict.fromkeys(mirrored, expiry))
        else:
            self.client.ping()  # tells the health whether Redis answers, also on an idle host
        self.health.answered()

    def reap(self) -> None:
        for raw in self.client.zrangebyscore(LEASES, "-inf", time.time()):
            stream_id = raw.decode()
            if self.client.zrem(LEASES, stream_id) == 1:  # exactly one host wins each expired lease
                recover(self.client, self.store, stream_id)


def recover(client: Any, store: ConversationStore, stream_id: str) -> None:
    """Save what the mirror holds of a stream whose host died, and end it for its readers."""
    key = PREFIX + stream_id
    turn = {name.decode(): value.decode() for name, value in client.hgetall(key + ":turn").items()}
    entries = client.xrange(key)
    if not turn or any(b"end" in fields for _, fields in entries):
        return
    tokens: dict[int, str] = {}  # by number: a batch written twice (a retried flush) counts once
    thoughts: dict[int, str] = {}  # reasoning pieces, likewise
    last = 0
    for _, fields in entries:
        for sequence, data in _EVENT.findall(fields.get(b"data", b"")):
            last = max(last, int(sequence))
            event = orjson.loads(data)
            kind = event.get("type")
            if kind == "token":
                tokens[int(sequence)] = str(event.get("content", ""))
            elif kind == "reasoning":
                thoughts[int(sequence)] = str(event.get("content", ""))
    texts = [tokens[sequence] for sequence in sorted(tokens)]
    reply = "".join(texts)
    reasoning = "".join(thoughts[sequence] for sequence in sorted(thoughts)) if thoughts else None
    log.warning("stream %s lost its host; saving the %d tokens its mirror holds", stream_id, len(texts) + len(thoughts))
    try:
        _save(store, turn, reply, len(texts) + len(thoughts), reasoning, len(thoughts))
    except Exception:  # the dying host saved it after all (the reply's id is taken): nothing is lost
        log.exception("could not save the reply of stream %s", stream_id)
    final = Error(ServerShutdown.code, HOST_LOST, True)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(key, {"first": last + 1, "data": encode_event(event_prefix(stream_id), last + 1, final)})
    pipe.xadd(key, {"end": 1})
    pipe.expire(key, RETENTION_SECONDS)
    pipe.execute()


def _save(
    store: ConversationStore, turn: dict[str, str], reply: str, tokens: int, reasoning: str | None, thoughts: int
) -> None:
    store.save_exchange(
        ExchangeRecord(
            conversation_id=turn["conversation_id"],
            user_id=turn["user_id"],
            user_message=turn["message"],
            reply=reply,
            reply_id=turn["message_id"],
            status="incomplete",
            model=turn["model"],
            finish_reason=None,
            prompt_tokens=None,
            completion_tokens=tokens,
            new_conversation=turn["new"] == "1",
            estimated=True,
            duration_ms=round((time.time() - float(turn.get("started", time.time()))) * 1000, 1),
            outcome=ServerShutdown.code,
            parent_id=turn.get("parent_id") or None,
            depth=int(turn["depth"]) if turn.get("depth") else None,
            user_message_id=turn.get("user_message_id") or None,
            regenerate=turn.get("regenerate") == "1",
            reasoning=reasoning,
            reasoning_tokens=thoughts or None,
        )
    )
