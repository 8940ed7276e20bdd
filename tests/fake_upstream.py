"""A real OpenAI-compatible streaming server for tests, on port 0, scripted per request.

The last user message may carry directives, e.g. ``"hi #tokens=5 #delay=0.5 #fail_after=2"``:
``#tokens=N`` reply length; ``#delay=S`` seconds between chunks; ``#first_delay=S`` before the first;
``#status=CODE`` or ``#status=CODExK`` (fail the first K attempts only); ``#fail_after=N`` drop the connection
after N tokens; ``#error_after=N`` send an ``error`` object after N tokens; ``#silence=S`` go quiet after the
first token; ``#azure`` add filter-only and empty-choices chunks; ``#no_usage``; ``#filter_after=N`` finish
with ``content_filter``; ``#length`` finish with ``length``; ``#one_write`` send the whole reply, headers and
all, in one write; ``#keepalive`` keep the connection open for the next request (otherwise it is closed after
each reply); ``#hostile`` reply with ``HOSTILE_REPLY`` (markup and script, cut across tokens); ``#sized`` send
the reply with a Content-Length instead of chunked; ``#context=PROVIDER #window=N`` refuse, in that provider's
words (``CONTEXT_ERRORS``), any request whose messages hold more than N characters in all. Faults:
``#header_delay=S`` wait S seconds before the response headers; ``#retry_after=S`` send ``Retry-After: S`` with a
``#status`` failure; ``#malformed_after=N`` send a chunk that is not JSON after N tokens; ``#odd_after=N
#odd=K`` send ``ODD_CHUNKS[K]`` (JSON, but not a chunk's shape) after N tokens and end; ``#big=BYTES`` make the
first token BYTES long; ``#one_byte`` make every token one character; ``#linger=S`` keep the body open S seconds
after ``data: [DONE]`` before ending it; ``#gzip`` compress the stream (``Content-Encoding: gzip``, flushed event
by event, as a compressing proxy sends it). It records every request (with the time it came) and when each
connection closed, as the upstream saw it. ``#awkward_text`` replies with ``AWKWARD_TOKENS`` (line ends, NUL,
SSE syntax, lone surrogates). Reasoning, as vLLM, llama.cpp and DeepSeek stream it: ``#reasoning=N`` sends N
reasoning deltas (``REASONING_WORDS``) in ``delta.reasoning_content`` before the answer, and counts them in the
usage's ``completion_tokens_details.reasoning_tokens``; ``#reasoning_field=reasoning`` uses ``delta.reasoning``
instead; ``#reasoning_both`` sends the last reasoning delta and the first answer text in one chunk;
``#no_reasoning_usage`` leaves the reasoning count out of the usage. ``#markdown`` replies with ``MARKDOWN_REPLY``
(repeated to ``#tokens`` tokens when that is longer); ``#hostile_markdown`` with ``HOSTILE_MARKDOWN``.
"""

from __future__ import annotations

import io
import json
import re
import select
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = (
    "Baby sleep patterns change a lot in the first year . Newborns sleep sixteen hours a day in short "
    "stretches , and longer nights come with time ."
).split()
# What a malicious or manipulated model might write: markup that runs script if a page ever renders it as HTML,
# and what would forge an event if the gateway ever framed text into SSE unescaped.
HOSTILE_REPLY = (
    "Look: <img src=x onerror=\"window.__xss=1;console.error('xss-ran')\"> and "
    "<script>window.__xss=2;console.error('xss-ran')</script> "
    '<a href="javascript:window.__xss=3">click</a> <b>bold</b> &amp; <iframe src="about:blank"></iframe>'
    '\n\nevent: error\ndata: {"type":"done"}\n\n'  # and would end the stream early if framed raw
    "the end"
)
REASONING_WORDS = "Let me think . The user asks about sleep , so I should be brief .".split()
# Markdown as a model writes it: a heading, a list, a table, a fenced code block, inline code, emphasis and a link.
MARKDOWN_REPLY = (
    "## Sleep plan\n\n"
    "Here is **a plan** with `inline code` and a [link](https://example.com/sleep).\n\n"
    "- first item\n- second item\n\n"
    "| age | hours |\n| --- | --- |\n| newborn | 16 |\n| one year | 13 |\n\n"
    "```python\nprint('hello <b>world</b>')\n```\n\n"
)
# Markdown that would run script if its links, images or embedded HTML were trusted (``#hostile_markdown``).
HOSTILE_MARKDOWN = (
    "[click me](javascript:window.__xss=4) ![pic](x onerror=window.__xss=5) "
    "[data](data:text/html,<script>window.__xss=6</script>)\n\n"
    "<details open><summary>s</summary><img src=x onerror=\"window.__xss=7;console.error('xss-ran')\"></details>\n\n"
    "```html\n<script>window.__xss=8</script>\n```\n\n"
    '<svg onload="window.__xss=9"><script>window.__xss=10</script></svg>\n\n'
    "*the end*"
)
# Text that must reach the client as it is, but for the surrogates: JSON can carry lone ones (as escapes), UTF-8
# cannot. The 😀 pair is split across two chunks, as a provider that cuts a string between UTF-16 units would.
AWKWARD_TOKENS = ["a\r\nb\rc\n", "\x00", "\u2028\u2029", "\n\ndata: x\nid: 9\n\n", "\ud83d", "\ude00", "é👶"]
# How each kind of server words a prompt that does not fit its context window: (status, body).
CONTEXT_ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "openai": (
        400,
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in "
                "9100 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
    ),
    "openai_responses": (
        400,
        {
            "error": {
                "message": "Your input exceeds the context window of this model. Please adjust your input and try "
                "again.",
                "type": "invalid_request_error",
                "param": "input",
                "code": "context_length_exceeded",
            }
        },
    ),
    "azure": (
        400,
        {
            "error": {
                "code": "context_length_exceeded",
                "message": "This model's maximum context length is 8192 tokens. However, you requested 9100 tokens "
                "(8900 in the messages, 200 in the completion). Please reduce the length of the messages or "
                "completion.",
                "param": "messages",
                "type": "invalid_request_error",
                "status": 400,
            }
        },
    ),
    "llamacpp": (
        400,
        {
            "error": {
                "code": 400,
                "message": "request (2101 tokens) exceeds the available context size (2048 tokens), try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": 2101,
                "n_ctx": 2048,
            }
        },
    ),
    "llamacpp_old": (
        500,
        {
            "error": {
                "code": 500,
                "message": "the request exceeds the available context size, try increasing the context size or "
                "enable context shift",
                "type": "server_error",
            }
        },
    ),
    "vllm": (
        400,
        {
            "object": "error",
            "message": "This model's maximum context length is 2048 tokens. However, you requested 2300 tokens "
            "(1788 in the messages, 512 in the completion). Please reduce the length of the messages or completion.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
    ),
}
# JSON that is not a chunk's shape, for ``#odd_after=N #odd=K``
ODD_CHUNKS: list[Any] = [
    {"choices": [{"delta": {"content": ["a list", "not text"]}}]},
    {"choices": [{"delta": {"content": 7}}]},
    {"choices": "not a list"},
    {"choices": [1]},
    {"usage": 5, "choices": []},
    {"choices": [{"delta": "not an object"}]},
    {"choices": [{"delta": {"reasoning_content": ["a list", "not text"]}}]},
    {"choices": [{"delta": {"reasoning": 7, "content": None}}]},
    [1, 2, 3],
]
_DIRECTIVE = re.compile(r"#(\w+)(?:=([\w.]+))?")


@dataclass
class Connection:
    message: str
    opened_at: float
    closed_at: float | None = None
    completed: bool = False
    tokens_sent: int = 0
    sent_at: list[float] = field(default_factory=list)
    peer_port: int = 0  # the client's port: two requests with one port came over one kept-alive connection


@dataclass
class Recorder:
    requests: list[dict[str, Any]] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open_connections(self) -> int:
        with self.lock:
            return sum(1 for item in self.connections if item.closed_at is None)


def directives(message: str) -> dict[str, str]:
    return {name: value or "1" for name, value in _DIRECTIVE.findall(message)}


def _chunk(
    content: str | None = None, finish: str | None = None, role: bool = False, reasoning: tuple[str, str] | None = None
) -> dict[str, Any]:
    """One chunk; ``reasoning`` is (field name, text) of a reasoning delta."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if reasoning is not None:
        delta[reasoning[0]] = reasoning[1]
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _tokens(script: dict[str, str], count: int) -> list[str]:
    """The reply's text deltas: words by default, one character each with ``#one_byte``, the first ``#big``."""
    if "awkward_text" in script:
        return list(AWKWARD_TOKENS)
    if "hostile" in script:  # cut mid-tag, as a model's tokens would be
        return [HOSTILE_REPLY[start : start + 7] for start in range(0, len(HOSTILE_REPLY), 7)]
    if "hostile_markdown" in script:
        return [HOSTILE_MARKDOWN[start : start + 5] for start in range(0, len(HOSTILE_MARKDOWN), 5)]
    if "markdown" in script:  # about 4 characters a token, as a model's would be
        text = MARKDOWN_REPLY * max(1, -(-count * 4 // len(MARKDOWN_REPLY)))
        pieces = [text[start : start + 4] for start in range(0, len(text), 4)]
        return pieces[: max(count, -(-len(MARKDOWN_REPLY) // 4))]
    if "one_byte" in script:
        tokens = ["ab"[index % 2] for index in range(count)]
    else:
        words = WORDS * (count // len(WORDS) + 1)
        tokens = [(word if index == 0 else " " + word) for index, word in enumerate(words)][:count]
    if "big" in script and tokens:
        tokens[0] = "x" * int(script["big"])
    return tokens


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    compressor: Any = None  # with ``#gzip``: the stream's one compressor

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("health"):
            self._json(200, {"status": "ok"})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        recorder = self.server.recorder
        messages = body.get("messages", [])
        message = messages[-1]["content"] if messages else ""
        script = directives(message)
        with recorder.lock:
            recorder.requests.append(
                {"path": self.path, "body": body, "headers": dict(self.headers), "at": time.monotonic()}
            )
            attempt = recorder.attempts.get(message, 0) + 1
            recorder.attempts[message] = attempt
        if "moderations" in self.path:
            flagged = "#flag" in str(body.get("input"))
            self._json(
                200,
                {"id": "m", "model": "mod", "results": [{"flagged": flagged, "categories": {}, "category_scores": {}}]},
            )
            return
        if "context" in script:
            size = sum(len(str(item.get("content") or "")) for item in messages)
            if size > int(script.get("window", "0")):
                self._json(*CONTEXT_ERRORS[script["context"]])
                return
        if "status" in script:
            code, _, times = script["status"].partition("x")
            if not times or attempt <= int(times):
                extra = {"Retry-After": script["retry_after"]} if "retry_after" in script else {}
                failure = {"error": {"message": "scripted failure", "type": "server_error", "code": None}}
                self._json(int(code), failure, extra)
                return
        if not body.get("stream"):
            self._json(400, {"error": {"message": "this fake only streams"}})
            return
        self._stream(script, message)

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _wait(self, seconds: float) -> bool:
        """Sleep, but notice at once if the client hangs up; False if it did."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            readable, _, _ = select.select([self.connection], [], [], left)
            if readable:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return False
                except OSError:
                    return False
                time.sleep(min(left, 0.01))

    def _send(self, payload: Any) -> None:
        data = b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"
        if self.compressor is not None:
            data = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_buffered(self, socket_writer: Any, reply: io.BytesIO) -> None:
        """With ``#one_write``: what was written so far goes out now, in one write."""
        if self.wfile is reply:
            self.wfile = socket_writer
            socket_writer.write(reply.getvalue())

    def _reason(self, script: dict[str, str], tokens: list[str], delay: float) -> int | None:
        """With ``#reasoning=N``: N reasoning deltas (the last with the first answer text, ``#reasoning_both``);
        how many were sent, or None if the client hung up."""
        count = int(script.get("reasoning", 0))
        field_name = script.get("reasoning_field", "reasoning_content")
        words = REASONING_WORDS * (count // len(REASONING_WORDS) + 1)
        for index in range(count):
            if index and delay and not self._wait(delay):
                return None
            thought = words[index] if index == 0 else " " + words[index]
            both = index == count - 1 and "reasoning_both" in script and tokens
            self._send(_chunk(content=tokens[0] if both else None, reasoning=(field_name, thought)))
        if count and delay and not self._wait(delay):
            return None
        return count

    def _sized(self, tokens: list[str]) -> None:
        """The whole reply as one body with a Content-Length, as some servers and proxies send it."""
        events = [_chunk(role=True, content=""), *(_chunk(content=token) for token in tokens), _chunk(finish="stop")]
        body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _stream(self, script: dict[str, str], message: str) -> None:
        recorder = self.server.recorder
        connection = Connection(message, time.monotonic(), peer_port=self.client_address[1])
        with recorder.lock:
            recorder.connections.append(connection)
        count = int(script.get("tokens", len(WORDS)))
        delay = float(script.get("delay", 0))
        tokens = _tokens(script, count)
        socket_writer, reply = self.wfile, io.BytesIO()
        if "sized" in script:
            self._sized(tokens)
            return
        if "one_write" in script:  # the whole reply, headers and all, in one write (as a fast local model can)
            self.wfile = reply
        try:
            if not self._wait(float(script.get("header_delay", 0))):
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.compressor = zlib.compressobj(wbits=31) if "gzip" in script else None  # 31: the gzip format
            if self.compressor is not None:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            if "azure" in script:
                self._send(
                    {
                        "id": "",
                        "object": "",
                        "created": 0,
                        "model": "",
                        "choices": [],
                        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
                    }
                )
            self._send(_chunk(role=True, content=""))
            if not self._wait(float(script.get("first_delay", 0))):
                return
            thoughts = self._reason(script, tokens, delay)
            if thoughts is None:
                return
            if "reasoning_both" in script and tokens:
                connection.tokens_sent += 1
                connection.sent_at.append(time.monotonic())
                tokens = tokens[1:]
            for index, token in enumerate(tokens):
                if index and delay and not self._wait(delay):
                    return
                if "fail_after" in script and index == int(script["fail_after"]):
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if "malformed_after" in script and index == int(script["malformed_after"]):
                    self._send(b'{"id": "chatcmpl-test", "choices": [{"delta": {"content": "cut')
                if "odd_after" in script and index == int(script["odd_after"]):
                    self._send(ODD_CHUNKS[int(script.get("odd", 0))])
                    break
                if "error_after" in script and index == int(script["error_after"]):
                    self._send({"error": {"message": "scripted mid-stream error", "type": "server_error"}})
                    break
                if "filter_after" in script and index == int(script["filter_after"]):
                    self._send(_chunk(finish="content_filter"))
                    break
                self._send(_chunk(content=token))
                connection.tokens_sent += 1
                connection.sent_at.append(time.monotonic())
                if "azure" in script:
                    self._send(
                        {
                            **_chunk(),
                            "choices": [
                                {"index": 0, "delta": {}, "content_filter_results": {"hate": {"filtered": False}}}
                            ],
                        }
                    )
                if index == 0 and "silence" in script and not self._wait(float(script["silence"])):
                    return
            else:
                self._send(_chunk(finish="length" if "length" in script else "stop"))
            if "no_usage" not in script:
                completion = connection.tokens_sent + thoughts
                usage: dict[str, Any] = {
                    "prompt_tokens": 12,
                    "completion_tokens": completion,
                    "total_tokens": 12 + completion,
                }
                if thoughts and "no_reasoning_usage" not in script:
                    usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
                self._send({**_chunk(), "choices": [], "usage": usage})
            self._send(b"[DONE]")
            if self.compressor is not None:
                ending = self.compressor.flush()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(ending), ending))
            if "linger" in script and not self._wait(float(script["linger"])):
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            self._send_buffered(socket_writer, reply)
            connection.completed = True
            self._wait(0.05)
        except OSError:
            pass
        finally:
            self._send_buffered(socket_writer, reply)
            connection.closed_at = time.monotonic()
            self.close_connection = "keepalive" not in script


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    recorder: Recorder


class FakeUpstream:
    """Start with ``start()``; ``base_url`` ends in ``/v1`` as the SDK expects."""

    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.recorder = Recorder()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def recorder(self) -> Recorder:
        return self.server.recorder

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeUpstream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def connection_for(self, marker: str) -> Connection:
        with self.recorder.lock:
            found = [item for item in self.recorder.connections if marker in item.message]
        if not found:
            raise AssertionError(f"the upstream saw no connection for {marker!r}")
        return found[-1]
