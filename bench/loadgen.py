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


def _request(target: str, host: str, tokens: int, delay: float) -> bytes:
    message = f"bench #tokens={tokens} #delay={delay}"
    if target == "service":
        path, body = "/api/v1/ai/chat/stream", json.dumps({"message": message})
    else:
        payload = {"model": "bench", "messages": [{"role": "user", "content": message}], "stream": True}
        path, body = "/v1/chat/completions", json.dumps(payload)
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()


async def one_stream(target: str, host: str, port: int, request: bytes, connect: asyncio.Semaphore) -> Result:
    token, done = MARKERS[target]
    started = time.perf_counter()
    ttft = 0.0
    count = 0
    finished = False
    try:
        async with connect:
            reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        carry = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data = carry + chunk
            found = data.count(token)
            if found and not count:
                ttft = time.perf_counter() - started
            count += found
            if done in data:
                finished = True
                break
            carry = data[-len(done) :]
        writer.close()
    except OSError:
        return Result(False, count, ttft, time.perf_counter() - started)
    return Result(finished and count > 0, count, ttft, time.perf_counter() - started)


async def run(args: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = _request(args.target, f"{host}:{port}", args.tokens, args.delay)
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
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
