"""Async load generator: N streams over plain sockets, timing the first token and the whole stream.

Runs in its own process so its CPU is not the service's. ``--target service`` reads the service's SSE events;
``--target direct`` reads the upstream itself (the limit any relay can reach). Prints one JSON object.
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
    "direct": (b'{"content": "', b"[DONE]"),
}


@dataclass
class Result:
    ok: bool
    tokens: int
    ttft: float
    total: float


def _request(target: str, host: str, tokens: int, delay: float, one_write: bool = False) -> bytes:
    message = f"bench #tokens={tokens} #delay={delay}" + (" #one_write" if one_write else "")
    if target == "service":
        path, body = "/api/v1/ai/chat/stream", json.dumps({"message": message})
    else:
        payload = {"model": "bench", "messages": [{"role": "user", "content": message}], "stream": True}
        path, body = "/v1/chat/completions", json.dumps(payload)
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()


class _StreamReader(asyncio.Protocol):
    """Counts token events as bytes arrive (no stream reader, no copy of the body): the load generator shares
    the machine's two cores with the relay, so every microsecond it spends per token is one the relay lacks."""

    def __init__(self, request: bytes, token: bytes, done: bytes, started: float) -> None:
        self.request, self.token, self.done_marker, self.started = request, token, done, started
        self.carry = b""
        self.overlap = max(len(token), len(done)) - 1
        self.count = 0
        self.ttft = 0.0
        self.finished = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, chunk: bytes) -> None:
        data = self.carry + chunk
        found = data.count(self.token) - self.carry.count(self.token)
        if found and not self.count:
            self.ttft = time.perf_counter() - self.started
        self.count += found
        if self.done_marker in data:
            self.finished = True
            assert self.transport is not None
            self.transport.close()
        self.carry = data[-self.overlap :]  # a marker split across two reads is counted once, in the second

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def one_stream(target: str, host: str, port: int, request: bytes, connect: asyncio.Semaphore) -> Result:
    token, done = MARKERS[target]
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    reader = _StreamReader(request, token, done, started)
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
