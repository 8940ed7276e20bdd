"""Streams shared across hosts through Redis: replay and follow from any host, cancel from any host.

The host that runs a stream mirrors its framed batches into a Redis stream (``XADD``), flushed at most every
``FLUSH_SECONDS`` — never a Redis call per token. Another host answers ``GET /stream/<id>`` with
``Last-Event-ID`` from there (``XRANGE`` then ``XREAD BLOCK``), and ``DELETE`` publishes a cancel that the
running host acts on. Keys expire ``RETENTION_SECONDS`` after the stream's last write. Beside the batches, the
turn itself (who asked what, in which conversation) is kept under ``<key>:turn``, so that another host can save the
partial reply if the running host dies (``service.relay.leases``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gevent
import redis
from gevent.lock import Semaphore

from service.chat.stream import ChatStream
from service.errors import SharedStateUnavailable
from service.redis_health import CONNECT_TIMEOUT, DOWN, RedisHealth
from service.redis_health import client as redis_client
from service.relay.sse import PING, retry_field

log = logging.getLogger(__name__)
FLUSH_SECONDS = 0.1
LEASE_SECONDS = 5.0  # a running stream's lease; its host renews it every second
RETENTION_SECONDS = 300
BLOCK_MS = 15_000
READER_MARGIN_MS = 5_000
PREFIX = "chat-gateway:stream:"
CANCEL_CHANNEL = "chat-gateway:cancel"
LEASES = "chat-gateway:leases"  # stream id -> when its host's lease runs out (epoch seconds)


def turn_of(chat: ChatStream) -> dict[str, str]:
    """What another host needs to save a stream's reply if this one dies (``service.relay.leases``)."""
    metadata, placement = chat.metadata, chat.placement
    where = {}
    if placement is not None:  # its place in the conversation's tree
        where = {
            "parent_id": placement.parent_id or "",
            "depth": str(placement.depth),
            "user_message_id": placement.user_message_id,
            "regenerate": "1" if placement.regenerate else "0",
        }
    return {
        **where,
        "conversation_id": metadata.conversation_id,
        "user_id": chat.request.user_id,
        "message": chat.request.message,
        "message_id": metadata.message_id,
        "model": metadata.model,
        "new": "0" if chat.request.conversation_id else "1",
        "started": repr(time.time() - (time.monotonic() - chat.started)),  # wall clock: another host reads it
    }


def split_after(first: int, data: bytes, after: int) -> bytes:
    """The events of one framed batch (numbered from ``first``) whose number is above ``after``."""
    if first > after:
        return data
    events = data.split(b"\n\n")[:-1]
    return b"".join(event + b"\n\n" for offset, event in enumerate(events) if first + offset > after)


class StreamMirror:
    """One stream's writer: batches collect in memory and go to Redis in one ``XADD`` per flush.

    Redis being away stops nothing: what could not be written stays pending and goes with the next flush (readers
    elsewhere drop events they already have, by number), and the stream's keys are written again then, in case a
    restarted Redis lost them. A mirror that ends with writes still pending is retried by the lease keeper."""

    def __init__(self, shared: SharedStreams, stream_id: str, user_id: str, turn: Mapping[str, str]) -> None:
        self.shared = shared
        self.client = shared.client
        self.stream_id = stream_id
        self.user_id = user_id
        self.turn = dict(turn)
        self.key = PREFIX + stream_id
        self.pending: list[tuple[int, bytes]] = []
        self.flusher: gevent.Greenlet[[], None] | None = None  # a flush scheduled, not yet started
        self.flushing = Semaphore()
        self.ended = False
        self.unwritten = False  # its keys are not (or no longer) in Redis: the next flush writes them
        pipe = self.client.pipeline(transaction=False)
        self._keys(pipe)
        self._execute(pipe)

    def _keys(self, pipe: Any) -> None:
        pipe.set(self.key + ":owner", self.user_id, ex=RETENTION_SECONDS)
        pipe.hset(self.key + ":turn", mapping=self.turn)
        pipe.expire(self.key + ":turn", RETENTION_SECONDS)
        pipe.zadd(LEASES, {self.stream_id: time.time() + LEASE_SECONDS})

    def _execute(self, pipe: Any) -> bool:
        """False when Redis failed it or is known to be down: the keys go again with the next flush."""
        self.unwritten = self.shared.health.attempt("mirroring a stream", pipe.execute) is DOWN
        return not self.unwritten

    def publish(self, first: int, data: bytes) -> None:
        self.pending.append((first, data))
        if self.flusher is None:
            self.flusher = gevent.spawn_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Write what is pending. One flush at a time: two in flight go over two pooled connections, and their
        batches (or the end mark) could land in Redis out of order, which readers elsewhere would take for a gap."""
        self.flusher = None
        with self.flushing:
            self._flush()

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        if not pending and not self.ended:
            return
        pipe = self.client.pipeline(transaction=False)
        if self.unwritten:
            self._keys(pipe)
        if pending:
            pipe.xadd(self.key, {"first": pending[0][0], "data": b"".join(data for _, data in pending)})
        if self.ended:
            pipe.xadd(self.key, {"end": 1})
            pipe.zrem(LEASES, self.stream_id)
        pipe.expire(self.key, RETENTION_SECONDS)
        pipe.expire(self.key + ":owner", RETENTION_SECONDS)
        if self._execute(pipe):
            self.shared.unfinished.discard(self)
            return
        self.pending[:0] = pending  # written with the next flush, in order
        if self.ended:
            self.shared.unfinished.add(self)

    def read_elsewhere(self) -> bool:
        """True while a reader on another host follows this stream (it refreshes ``<key>:reader``)."""
        try:
            return bool(self.client.exists(self.key + ":reader"))
        except redis.RedisError:
            return False

    def close(self) -> None:
        """The stream ended: write what is left and the end mark, after any flush under way."""
        if self.flusher is not None:
            self.flusher.kill(block=False)
            self.flusher = None
        self.ended = True
        self.flush()


class SharedStreams:
    def __init__(self, url: str, health: RedisHealth) -> None:
        self.client: Any = redis_client(url)
        self.follower: Any = redis_client(url, read_timeout=(BLOCK_MS + READER_MARGIN_MS) / 1000)  # XREAD BLOCK
        self.url = url
        self.health = health
        self.unfinished: set[StreamMirror] = set()  # ended while Redis was away: their last writes are pending

    def mirror(self, chat: ChatStream) -> StreamMirror:
        return StreamMirror(self, chat.metadata.stream_id, chat.request.user_id, turn_of(chat))

    def finish_pending(self) -> None:
        """Retry the last writes of mirrors that ended while Redis was away (the lease keeper calls this)."""
        for mirror in list(self.unfinished):
            mirror.flush()

    def owned_by(self, stream_id: str, user_id: str) -> bool:
        owner = self._for_a_request("finding a stream's owner", lambda: self.client.get(PREFIX + stream_id + ":owner"))
        return owner is not None and owner.decode() == user_id

    def _for_a_request(self, doing: str, work: Callable[[], Any]) -> Any:
        """``work()`` for a request about another host's stream: 503 ``shared_state_unavailable`` without Redis."""
        try:
            return work()
        except redis.RedisError as error:
            self.health.failed(doing, error)
            raise SharedStateUnavailable() from None

    def read(self, stream_id: str, after: int, heartbeat: float) -> Iterator[bytes]:
        """Replay from Redis, then follow until the end mark; ``: ping`` while the stream is quiet. If Redis goes
        away meanwhile the response just ends: the client resumes from its last event, as after any drop."""
        key = PREFIX + stream_id
        yield retry_field()
        last_id = "0-0"
        block = int(min(heartbeat * 1000, BLOCK_MS))
        client = self.follower
        while True:
            try:
                # tells the running host that a reader is here, so a dropped client's resume grace is not run out
                client.set(key + ":reader", 1, px=block + READER_MARGIN_MS)
                found = client.xread({key: last_id}, block=block, count=100)
                if not found and not client.exists(key):
                    return
            except redis.RedisError as error:
                self.health.failed("following a stream", error)
                return
            if not found:
                yield PING
                continue
            for entry_id, fields in found[0][1]:
                last_id = entry_id
                if b"end" in fields:
                    return
                first, data = int(fields[b"first"]), fields[b"data"]
                part = split_after(first, data, after)
                if part:
                    yield part
                    after = max(after, first + data.count(b"\n\n") - 1)  # a batch written twice goes out once

    def cancel(self, stream_id: str) -> None:
        self._for_a_request("publishing a cancel", lambda: self.client.publish(CANCEL_CHANNEL, stream_id))

    def listen_for_cancels(self, on_cancel: Callable[[str], None]) -> gevent.Greenlet[[], None]:
        """One greenlet per worker: every cancel published by any host reaches the host running the stream. Its
        client waits for messages without a reply timeout (a quiet channel is normal); keepalives find a dead peer."""
        listener: Any = redis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT, socket_keepalive=True)

        def listen() -> None:
            while True:
                pubsub = listener.pubsub(ignore_subscribe_messages=True)
                try:
                    pubsub.subscribe(CANCEL_CHANNEL)
                    self.health.answered()
                    for message in pubsub.listen():
                        if message["type"] == "message":
                            on_cancel(message["data"].decode())
                except redis.RedisError as error:
                    self.health.failed("listening for cancels", error)
                    gevent.sleep(1)
                finally:
                    pubsub.close()

        return gevent.spawn(listen)
