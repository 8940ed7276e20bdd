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

from service.chat.stream import ChatStream
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
    metadata = chat.metadata
    return {
        "conversation_id": metadata.conversation_id,
        "user_id": chat.request.user_id,
        "message": chat.request.message,
        "message_id": metadata.message_id,
        "model": metadata.model,
        "new": "0" if chat.request.conversation_id else "1",
    }


def split_after(first: int, data: bytes, after: int) -> bytes:
    """The events of one framed batch (numbered from ``first``) whose number is above ``after``."""
    if first > after:
        return data
    events = data.split(b"\n\n")[:-1]
    return b"".join(event + b"\n\n" for offset, event in enumerate(events) if first + offset > after)


class StreamMirror:
    """One stream's writer: batches collect in memory and go to Redis in one ``XADD`` per flush."""

    def __init__(self, client: Any, stream_id: str, user_id: str, turn: Mapping[str, str]) -> None:
        self.client = client
        self.stream_id = stream_id
        self.key = PREFIX + stream_id
        self.pending: list[tuple[int, bytes]] = []
        self.flusher: gevent.Greenlet[[], None] | None = None
        pipe = client.pipeline(transaction=False)
        pipe.set(self.key + ":owner", user_id, ex=RETENTION_SECONDS)
        pipe.hset(self.key + ":turn", mapping=dict(turn))
        pipe.expire(self.key + ":turn", RETENTION_SECONDS)
        pipe.zadd(LEASES, {stream_id: time.time() + LEASE_SECONDS})
        pipe.execute()

    def publish(self, first: int, data: bytes) -> None:
        self.pending.append((first, data))
        if self.flusher is None:
            self.flusher = gevent.spawn_later(FLUSH_SECONDS, self._flush)

    def _flush(self, end: bool = False) -> None:
        self.flusher = None
        pending, self.pending = self.pending, []
        if not pending and not end:
            return
        pipe = self.client.pipeline(transaction=False)
        if pending:
            pipe.xadd(self.key, {"first": pending[0][0], "data": b"".join(data for _, data in pending)})
        if end:
            pipe.xadd(self.key, {"end": 1})
            pipe.zrem(LEASES, self.stream_id)
        pipe.expire(self.key, RETENTION_SECONDS)
        pipe.expire(self.key + ":owner", RETENTION_SECONDS)
        try:
            pipe.execute()
        except redis.RedisError:
            log.exception("could not mirror stream %s to Redis", self.key)

    def read_elsewhere(self) -> bool:
        """True while a reader on another host follows this stream (it refreshes ``<key>:reader``)."""
        try:
            return bool(self.client.exists(self.key + ":reader"))
        except redis.RedisError:
            return False

    def close(self) -> None:
        """The stream ended: write what is left and the end mark."""
        if self.flusher is not None:
            self.flusher.kill(block=False)
        self._flush(end=True)


class SharedStreams:
    def __init__(self, url: str) -> None:
        self.client: Any = redis.Redis.from_url(url)  # redis-py's own types are too loose to check replies

    def mirror(self, chat: ChatStream) -> StreamMirror:
        return StreamMirror(self.client, chat.metadata.stream_id, chat.request.user_id, turn_of(chat))

    def owned_by(self, stream_id: str, user_id: str) -> bool:
        owner = self.client.get(PREFIX + stream_id + ":owner")
        return owner is not None and owner.decode() == user_id

    def read(self, stream_id: str, after: int, heartbeat: float) -> Iterator[bytes]:
        """Replay from Redis, then follow until the end mark; ``: ping`` while the stream is quiet."""
        key = PREFIX + stream_id
        yield retry_field()
        last_id = "0-0"
        block = int(min(heartbeat * 1000, BLOCK_MS))
        while True:
            # tells the running host that a reader is here, so a dropped client's resume grace is not run out
            self.client.set(key + ":reader", 1, px=block + READER_MARGIN_MS)
            found = self.client.xread({key: last_id}, block=block, count=100)
            if not found:
                if not self.client.exists(key):
                    return
                yield PING
                continue
            for entry_id, fields in found[0][1]:
                last_id = entry_id
                if b"end" in fields:
                    return
                part = split_after(int(fields[b"first"]), fields[b"data"], after)
                if part:
                    yield part

    def cancel(self, stream_id: str) -> None:
        self.client.publish(CANCEL_CHANNEL, stream_id)

    def listen_for_cancels(self, on_cancel: Callable[[str], None]) -> gevent.Greenlet[[], None]:
        """One greenlet per worker: every cancel published by any host reaches the host running the stream."""

        def listen() -> None:
            while True:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                try:
                    pubsub.subscribe(CANCEL_CHANNEL)
                    for message in pubsub.listen():
                        if message["type"] == "message":
                            on_cancel(message["data"].decode())
                except redis.RedisError:
                    log.warning("cancel listener lost Redis; reconnecting", exc_info=True)
                    gevent.sleep(1)
                finally:
                    pubsub.close()

        return gevent.spawn(listen)
