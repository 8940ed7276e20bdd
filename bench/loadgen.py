"""Async load generator: N streams over plain sockets, timing the first token and the whole stream.

Runs in its own process so its CPU is not the service's. ``--target service`` reads the service's SSE events;
``--target ws`` the same events over the WebSocket endpoint, one socket per concurrent client carrying its turns one
after another; ``--target direct`` reads the upstream itself (the limit any relay can reach). Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

MARKERS = {
    "service": (b'"type":"token"', b'"type":"done"'),
    "ws": (b'"type":"token"', b'"type":"done"'),  # frames hold the same JSON as the SSE data lines
    "direct": (b'{"content": "', b"[DONE]"),
}
WS_KEY = "YmVuY2gtd2Vic29ja2V0LWtleQ=="  # any 16 bytes, base64: the server only echoes a hash of it


@dataclass
class Result:
    ok: bool
    tokens: int
    ttft: float
    total: float


def _message(tokens: int, delay: float, one_write: bool) -> str:
    return f"bench #tokens={tokens} #delay={delay}" + (" #one_write" if one_write else "")


def _ws_upgrade(host: str) -> bytes:
    return (
        f"GET /api/v1/ai/chat/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _ws_chat_frame(message: str) -> bytes:
    """A masked text frame (clients must mask) with a zero key, so the payload goes as is."""
    payload = json.dumps({"type": "chat", "message": message}).encode()
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def _request(target: str, host: str, tokens: int, delay: float, one_write: bool = False) -> bytes:
    message = _message(tokens, delay, one_write)
    if target == "service":
        return post_request(host, "/api/v1/ai/chat/stream", {"message": message})
    payload = {"model": "bench", "messages": [{"role": "user", "content": message}], "stream": True}
    return post_request(host, "/v1/chat/completions", payload)


def post_request(host: str, path: str, payload: dict[str, object]) -> bytes:
    """A whole HTTP/1.1 POST of ``payload`` as JSON, asking for an event stream, one connection per request."""
    body = json.dumps(payload)
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()


class StreamReader(asyncio.Protocol):
    """Counts token events as bytes arrive (no stream reader, no copy of the body): the load generator shares
    the machine's two cores with the relay, so every microsecond it spends per token is one the relay lacks.
    ``ttft`` is the first token's time after ``started``, ``last`` the clock when the last one came."""

    def __init__(self, request: bytes, token: bytes, done: bytes, started: float) -> None:
        self.request, self.token, self.done_marker, self.started = request, token, done, started
        self.carry = b""
        self.overlap = max(len(token), len(done)) - 1
        self.count = 0
        self.ttft = 0.0
        self.last = 0.0
        self.finished = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, chunk: bytes) -> None:
        data = self.carry + chunk
        found = data.count(self.token) - self.carry.count(self.token)
        if found:
            self.last = time.perf_counter()
            if not self.count:
                self.ttft = self.last - self.started
        self.count += found
        if self.done_marker in data:
            self.finished = True
            assert self.transport is not None
            self.transport.close()
        self.carry = data[-self.overlap :]  # a marker split across two reads is counted once, in the second

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _WsReader(asyncio.Protocol):
    """One WebSocket carrying turn after turn: sends a ``chat`` frame, counts token frames by their marker in the
    bytes as they arrive (no frame parsing: the markers cannot be split by a frame header of a token frame, and a
    marker split across reads is counted once), and ends the turn at ``done``."""

    def __init__(self, upgrade: bytes, frame: bytes) -> None:
        token, done = MARKERS["ws"]
        self.upgrade, self.frame, self.token, self.done_marker = upgrade, frame, token, done
        self.overlap = max(len(token), len(done)) - 1
        self.carry = b""
        self.open = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.turn: asyncio.Future[None] | None = None
        self.count = 0
        self.ttft = 0.0
        self.started = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.upgrade)  # type: ignore[attr-defined]

    def start_turn(self) -> asyncio.Future[None]:
        self.count, self.ttft, self.carry = 0, 0.0, b""
        self.turn = asyncio.get_running_loop().create_future()
        self.started = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.frame)
        return self.turn

    def data_received(self, chunk: bytes) -> None:
        if not self.open:
            head, found, chunk = chunk.partition(b"\r\n\r\n")
            if not found or not head.startswith(b"HTTP/1.1 101"):
                self.connection_lost(ConnectionError(head[:100].decode(errors="replace")))
                return
            self.open = True
            self.ready.set_result(None)
        data = self.carry + chunk
        found_tokens = data.count(self.token) - self.carry.count(self.token)
        if found_tokens and not self.count:
            self.ttft = time.perf_counter() - self.started
        self.count += found_tokens
        self.carry = data[-self.overlap :]
        if self.turn is not None and not self.turn.done():
            if self.done_marker in data:
                self.carry = b""
                self.turn.set_result(None)
            elif b'"type":"error"' in data:  # a refusal or a failed stream: this turn does not count
                self.carry, self.count = b"", 0
                self.turn.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        error = exc or ConnectionError("closed")
        for future in (self.ready, self.turn):
            if future is not None and not future.done():
                future.set_exception(error)


async def ws_turns(host: str, port: int, rounds: int, message: str, connect: asyncio.Semaphore) -> list[Result]:
    """``rounds`` turns over one socket, each timed from its ``chat`` frame to its ``done``."""
    loop = asyncio.get_running_loop()
    reader = _WsReader(_ws_upgrade(f"{host}:{port}"), _ws_chat_frame(message))
    results: list[Result] = []
    try:
        async with connect:
            await loop.create_connection(lambda: reader, host, port)
            await reader.ready
        for _ in range(rounds):
            try:
                await reader.start_turn()
            except OSError:
                results.append(Result(False, reader.count, reader.ttft, time.perf_counter() - reader.started))
                break
            results.append(Result(reader.count > 0, reader.count, reader.ttft, time.perf_counter() - reader.started))
    except OSError:
        results.append(Result(False, 0, 0.0, 0.0))
    finally:
        if reader.transport is not None:
            reader.transport.close()
    results.extend(Result(False, 0, 0.0, 0.0) for _ in range(rounds - len(results)))
    return results


async def one_stream(target: str, host: str, port: int, request: bytes, connect: asyncio.Semaphore) -> Result:
    token, done = MARKERS[target]
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    reader = StreamReader(request, token, done, started)
    try:
        async with connect:
            await loop.create_connection(lambda: reader, host, port)
        await reader.closed
    except OSError:
        return Result(False, reader.count, reader.ttft, time.perf_counter() - started)
    return Result(reader.finished and reader.count > 0, reader.count, reader.ttft, time.perf_counter() - started)


async def run(args: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = _request(args.target, f"{host}:{port}", args.tokens, args.delay, args.one_write)
    connect = asyncio.Semaphore(args.connect_parallel)
    results: list[Result] = []

    async def worker(rounds: int) -> None:
        if args.target == "ws":  # one socket per concurrent client, its turns one after another
            message = _message(args.tokens, args.delay, args.one_write)
            results.extend(await ws_turns(host, port, rounds, message, connect))
            return
        for _ in range(rounds):
            results.append(await one_stream(args.target, host, port, request, connect))

    started = time.perf_counter()
    rounds = max(1, args.streams // args.concurrency)
    await asyncio.gather(*(worker(rounds) for _ in range(args.concurrency)))
    wall = time.perf_counter() - started
    good = [item for item in results if item.ok]
    return {
        "streams": len(results),
        "ok": len(good),
        "tokens": sum(item.tokens for item in results),
        "wall": wall,
        "ttft": sorted(item.ttft for item in good),
        "total": sorted(item.total for item in good),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", choices=sorted(MARKERS), default="service")
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--connect-parallel", type=int, default=256)
    parser.add_argument("--one-write", action="store_true", help="ask the upstream for each reply in one write")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
