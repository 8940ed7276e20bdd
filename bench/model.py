"""The real model: the embedded llama-server called directly, and through the service in front of it.

Starts llama-server once (``service.local_model``, the service's own options and sampling) and the service under
real gunicorn (one gevent worker, every default feature on: saving, usage, limits, metrics, the access log) pointed
at it. Each round sends 1 or 4 concurrent first-turn requests with the same body the service sends (its system
prompt, ``max_tokens``, ``stream_options``) to llama-server itself and, in turn, the same messages through the
service; the order of the two flips every round. A round's messages are new, and sent once with a one-token cap
before it, so both paths find the whole prompt in llama-server's cache alike. Per stream it times the first token
(from before the connection is opened) and the rate from the first token to the last; the table gives each path's
medians and what the service adds.

    .venv/bin/python -m bench.model                       # 1 and 4 concurrent, 8 rounds each (~5 minutes)
    .venv/bin/python -m bench.model --rounds 4 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.loadgen import StreamReader, post_request
from bench.run import start_service
from service.config import DEFAULT_SYSTEM_PROMPT, LOCAL_MODEL_NAME
from service.local_model import LocalModelOptions, LocalModelServer

TOPICS = (
    "Give me five tips for sleeping better",
    "Explain how a bicycle gear works",
    "Describe a simple bread recipe",
    "What should I pack for a weekend hike",
    "How do I keep basil alive indoors",
    "Explain compound interest with an example",
    "Suggest a plan for learning to swim",
    "How does a refrigerator keep food cold",
)
MARKERS = {"direct": b'"delta":{"content":"', "service": b'"type":"token"'}
END = {"direct": b"data: [DONE]", "service": b'"type":"done"'}


@dataclass
class Timing:
    ok: bool
    tokens: int
    ttft: float  # seconds from before the connect to the first token
    rate: float  # tokens a second from the first token to the last


def request_bytes(target: str, host: str, message: str, max_tokens: int) -> bytes:
    body: dict[str, object]
    if target == "service":
        path, body = "/api/v1/ai/chat/stream", {"message": message}
    else:  # what the service sends for a first turn
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": message}]
        path = "/v1/chat/completions"
        body = {
            "model": LOCAL_MODEL_NAME,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
        }
    return post_request(host, path, body)


async def one_stream(target: str, url: str, message: str, max_tokens: int) -> Timing:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = request_bytes(target, f"{host}:{port}", message, max_tokens)
    started = time.perf_counter()
    reader = StreamReader(request, MARKERS[target], END[target], started)
    try:
        await asyncio.get_running_loop().create_connection(lambda: reader, host, port)
        await asyncio.wait_for(reader.closed, 300)
    except (OSError, TimeoutError):
        return Timing(False, reader.count, 0.0, 0.0)
    span = reader.last - (started + reader.ttft)
    rate = (reader.count - 1) / span if reader.count > 1 and span > 0 else 0.0
    return Timing(reader.finished and reader.count > 0, reader.count, reader.ttft, rate)


async def one_round(target: str, url: str, messages: list[str], max_tokens: int) -> list[Timing]:
    return list(await asyncio.gather(*(one_stream(target, url, message, max_tokens) for message in messages)))


def summary(timings: list[Timing]) -> dict[str, float]:
    good = [timing for timing in timings if timing.ok]
    if not good:
        return {"success": 0.0, "ttft_p50": float("nan"), "ttft_mean": float("nan"), "rate": float("nan"),
                "tokens": 0.0}  # fmt: skip
    return {
        "success": 100.0 * len(good) / len(timings),
        "ttft_p50": statistics.median(timing.ttft for timing in good) * 1000,
        "ttft_mean": statistics.fmean(timing.ttft for timing in good) * 1000,
        "rate": statistics.median(timing.rate for timing in good),
        "tokens": statistics.fmean(timing.tokens for timing in good),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,4", help="concurrent requests per round, comma-separated")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per path and concurrency")
    parser.add_argument("--max-tokens", type=int, default=64, help="each reply's cap (the service's too)")
    args = parser.parse_args()
    model = LocalModelServer(LocalModelOptions())
    model.start()
    rows: list[tuple[int, str, dict[str, float]]] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            overrides = {
                "OPENAI_BASE_URL": model.base_url,
                "OPENAI_API_KEY": "local",
                "CHAT_MODEL": LOCAL_MODEL_NAME,
                "MAX_COMPLETION_TOKENS": str(args.max_tokens),
            }
            service, port = start_service(0, 1, folder, overrides=overrides)
            urls = {"direct": model.base_url.removesuffix("/v1"), "service": f"http://127.0.0.1:{port}"}
            try:
                for concurrency in (int(item) for item in args.concurrency.split(",")):
                    rows.extend(measure(concurrency, args.rounds, args.max_tokens, urls))
            finally:
                service.terminate()
                service.wait(30)
    finally:
        model.stop()
    print_table(rows, args.max_tokens)


def measure(
    concurrency: int, rounds: int, max_tokens: int, urls: dict[str, str]
) -> list[tuple[int, str, dict[str, float]]]:
    """``rounds`` rounds on each path, taking turns, after a warm-up round each that is not counted. A round's
    messages are sent once with a one-token cap first, so that both paths find the prompt in llama-server's cache
    and the first token measures the path, not how far the prompt cache reached."""
    timings: dict[str, list[Timing]] = {"direct": [], "service": []}
    for index in range(-1, rounds):
        messages = [
            f"{TOPICS[(index + slot) % len(TOPICS)]} (note {os.getpid()}-{concurrency}-{index}-{slot})"
            for slot in range(concurrency)
        ]
        asyncio.run(one_round("direct", urls["direct"], messages, 1))
        for target in ["direct", "service"] if index % 2 == 0 else ["service", "direct"]:
            found = asyncio.run(one_round(target, urls[target], messages, max_tokens))
            if index >= 0:
                timings[target].extend(found)
        print(f"{concurrency} concurrent: round {index + 1} of {rounds}", file=sys.stderr, flush=True)
    return [(concurrency, target, summary(found)) for target, found in timings.items()]


def print_table(rows: list[tuple[int, str, dict[str, float]]], max_tokens: int) -> None:
    print(f"\nThe local model (SmolLM2-135M, llama-server's own sampling), first turns capped at {max_tokens} tokens")
    print("| conc. | path    | success% | tokens/reply | TTFT p50 ms | TTFT mean ms | tokens/s a stream (p50) |")
    print("| ----: | ------- | -------: | -------: | -------: | -------: | -------: |")
    by_key = {(concurrency, target): stats for concurrency, target, stats in rows}
    for (concurrency, target), stats in by_key.items():
        print(
            f"| {concurrency:>5} | {target:<7} | {stats['success']:>8.1f} | {stats['tokens']:>8.1f} "
            f"| {stats['ttft_p50']:>8.1f} | {stats['ttft_mean']:>8.1f} | {stats['rate']:>8.1f} |"
        )
    for concurrency in sorted({concurrency for concurrency, _target, _stats in rows}):
        direct, service = by_key[(concurrency, "direct")], by_key[(concurrency, "service")]
        added = service["ttft_p50"] - direct["ttft_p50"]
        slower = 100.0 * (1 - service["rate"] / direct["rate"])
        print(
            f"{concurrency} concurrent: the service adds {added:.1f} ms to the first token (p50) and is "
            f"{slower:.1f} % slower in tokens a second (negative: faster)"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
