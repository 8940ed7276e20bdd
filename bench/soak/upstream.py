"""The soak's scripted OpenAI-compatible upstream: ``bench.upstream``'s chunks and framing, with numbered tokens
and a model that can go silent.

Token ``i`` of every reply is ``reply_text``'s ``i``-th piece (``"t0 "``, ``"t1 "``, ...), so a saved reply can be
compared with exactly what the model sent, and a prefix of it tells how far the model got. The last user message
carries the script: ``#tokens=N``, ``#delay=SECONDS`` between tokens and ``#stall=K``: after K tokens send nothing
more until the service hangs up (what makes its idle timeout fire). Run: ``python -m bench.soak.upstream PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sys

from bench.upstream import _HEAD, DONE, ROLE, STOP, _chunk, _frame, _usage, serve

_DIRECTIVE = re.compile(rb"#(tokens|delay|stall)=([0-9.]+)")
STALL_LIMIT_SECONDS = 300.0  # a stalled reply is dropped by the service long before this


def token_text(index: int) -> str:
    return f"t{index} "


def reply_text(tokens: int) -> str:
    """The whole reply the upstream writes for ``#tokens=N``."""
    return "".join(token_text(index) for index in range(tokens))


@functools.cache
def _token_frame(index: int) -> bytes:
    return _frame(_chunk({"content": token_text(index)}))


async def _reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
    """Writes one reply; False when the connection is done with (a stalled reply ends when the service hangs up)."""
    script = {name: value for name, value in _DIRECTIVE.findall(body)}
    tokens = int(script.get(b"tokens", b"20"))
    delay = float(script.get(b"delay", b"0"))
    stall = int(script[b"stall"]) if b"stall" in script else None
    sent = tokens if stall is None else min(stall, tokens)
    if not delay:
        writer.write(_HEAD + ROLE + b"".join(_token_frame(index) for index in range(sent)))
    else:
        writer.write(_HEAD + ROLE)
        for index in range(sent):
            if index:
                await writer.drain()
                await asyncio.sleep(delay)
            writer.write(_token_frame(index))
    await writer.drain()
    if stall is not None:
        with contextlib.suppress(TimeoutError):  # silent until the service gives up and closes the connection
            await asyncio.wait_for(reader.read(), STALL_LIMIT_SECONDS)
        return False
    writer.write(STOP + _usage(tokens) + DONE)
    await writer.drain()
    return True


if __name__ == "__main__":
    asyncio.run(serve(_reply, int(sys.argv[1]) if len(sys.argv) > 1 else 0, backlog=4096))
