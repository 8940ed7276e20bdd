"""A fast scripted OpenAI-compatible streaming server for benchmarks (asyncio, pre-encoded chunks).

The last user message carries the script: ``#tokens=N`` and ``#delay=SECONDS`` between tokens. Responses are
chunked ``text/event-stream`` on keep-alive connections, like the real API, and like a provider each token is its
own ``write`` (its own TCP segment), even with no delay. ``#one_write`` sends a reply with no delay in one write
instead: an extra, labelled bench row, since no provider sends a reply that way. Run: ``python -m bench.upstream
PORT``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import sys
from collections.abc import Awaitable, Callable

_DIRECTIVE = re.compile(rb"#(tokens|delay)=([0-9.]+)")
ONE_WRITE = b"#one_write"
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nx-request-id: bench\r\n\r\n"
)


def _frame(payload: dict[str, object] | str) -> bytes:
    data = b"data: " + (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


ROLE = _frame(_chunk({"role": "assistant", "content": ""}))
WORDS = [_frame(_chunk({"content": word})) for word in (" sleep", " baby", " night", " nap", " rest", " dream")]
FIRST = _frame(_chunk({"content": "Baby"}))
STOP = _frame(_chunk({}, "stop"))
DONE = _frame("[DONE]") + b"0\r\n\r\n"


def _usage(tokens: int) -> bytes:
    usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
    return _frame({**_chunk({}), "choices": [], "usage": usage})


@functools.lru_cache(maxsize=64)
def _whole_reply(tokens: int) -> bytes:
    """A reply with no delay, built once per length: the same bytes as token-by-token writes, sent in one
    ``write`` so the upstream spends next to no CPU per token (on 2 cores, its CPU is CPU a relay cannot have)."""
    words = b"".join(WORDS[index % len(WORDS)] for index in range(1, tokens))
    return _HEAD + ROLE + FIRST + words + STOP + _usage(tokens) + DONE


async def _reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
    script = dict(_DIRECTIVE.findall(body))
    tokens = int(script.get(b"tokens", b"50"))
    delay = float(script.get(b"delay", b"0"))
    if not delay and ONE_WRITE in body:
        writer.write(_whole_reply(tokens))
        await writer.drain()
        return True
    writer.write(_HEAD + ROLE + FIRST)
    for index in range(1, tokens):
        await writer.drain()
        await asyncio.sleep(delay)  # with no delay, still one pass of the event loop: one write per token
        writer.write(WORDS[index % len(WORDS)])
    writer.write(STOP + _usage(tokens) + DONE)
    await writer.drain()
    return True


Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


async def serve(reply: Reply, port: int, backlog: int = 8192) -> None:
    """Answer every request on every keep-alive connection with ``reply(reader, writer, body)``, which returns
    False when the connection is done with. Prints the port it listens on."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if not await reply(reader, writer, body):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", port, backlog=backlog, limit=1 << 20)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(_reply, int(sys.argv[1]) if len(sys.argv) > 1 else 0))
