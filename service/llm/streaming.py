"""One upstream chat completion, streamed: the SDK opens it, the relay reads its bytes raw.

The SDK builds, authenticates, routes (Azure) and retries the request; once the response headers are in,
the typed ``Stream`` would build a pydantic object per chunk (about 212 µs of CPU a token here), so the body
is read raw and decoded with ``SSEDataDecoder`` and orjson (about 30 µs). ``UpstreamStream`` knows nothing
of conversations or SSE framing downstream.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import gevent
import h11
import httpx2
import openai
import orjson
from openai.types.chat import ChatCompletionChunk

from service.errors import ContentFiltered, ServiceError, UpstreamFailed
from service.llm.body_reader import BodyReader, HttpxReader, body_reader
from service.llm.chunk_json import load_chunk
from service.llm.errors import map_error_payload, map_open_error
from service.llm.providers import UNSENT_HEADERS
from service.llm.sse_decoder import SSEDataDecoder

log = logging.getLogger(__name__)
REASONING_FIELDS = ("reasoning_content", "reasoning")  # vLLM, llama.cpp and DeepSeek; OpenRouter and newer vLLM
# How long the body's end may take after ``[DONE]``: a provider that leaves its body open after the last event
# gets its connection closed (not reused) after this, instead of holding it until the read timeout.
DRAIN_SECONDS = 1.0


class ReasoningText(str):
    """A reasoning delta (the model's thinking before its answer), told apart from answer text by its class: a
    batch stays one ``list[str]``, and a reply without reasoning costs not a single extra check per token."""

    __slots__ = ()


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None = None
    request_id: str | None = None  # sent on as X-Request-ID, so the provider's logs name the same request


class UpstreamStream:
    """An open upstream response. Call ``next_batch()`` until it returns None (or iterate ``batches()`` once);
    then read ``finish_reason`` and ``usage``. The response is closed at its end and on every error; a caller that
    stops early calls ``close()`` (idempotent).
    """

    def __init__(self, response: httpx2.Response, read_timeout: float | None = None) -> None:
        self._response: httpx2.Response | None = response
        self.read_timeout = read_timeout
        # False when a watchdog's one timer bounds this stream's silences: its reads then arm no timer each
        self.timed_reads = True
        self.finish_reason: str | None = None
        self.usage: tuple[int, int] | None = None
        self.deltas = 0
        self.reasoning_deltas = 0  # how many of ``deltas`` were reasoning: while 0, a batch holds answer text only
        self.reasoning_tokens: int | None = None  # the provider's own count, when its usage carries one
        self._drained: gevent.Greenlet[[BodyReader, Callable[[], None]], None] | None = None
        self._reader: BodyReader | None = None
        self._decoder = SSEDataDecoder()
        self._failure: ServiceError | None = None
        self._finished = False
        self.waiting = False  # True only while blocked on the upstream socket: the one safe place to interrupt
        self.wakeable = False  # True when the read is our own, which turns a thrown ``WakeUp`` into an empty batch

    def next_batch(self, wait: bool = True) -> list[str] | None:
        """The non-empty text deltas of the next network read, in order (reasoning deltas as ``ReasoningText``,
        before the answer text of the same chunk); an empty list when woken (or, with
        ``wait=False``, when nothing came in with the headers); None at the end. Raises the error the upstream
        sent after the deltas before it have been returned."""
        if self._failure is not None:
            self.close()
            raise self._pop_failure()
        response = self._response
        if self._finished or response is None:
            return None
        reader = self._reader or self._open_reader(response)
        texts: list[str] = []
        try:
            while not texts:
                self.waiting = wait
                try:
                    raw = reader.read(wait)
                finally:
                    self.waiting = False
                if raw is None:
                    self._finished = True
                    self.close()
                    return None
                if not raw:  # ``WakeUp``: an empty batch, the heartbeat's turn
                    return texts
                if self._take_all(raw, texts):
                    # the last event need not wait for the body's end
                    self._finished = True
                    self._end_body(reader, response)
                    break
                if self._failure is not None and not texts:
                    raise self._pop_failure()
                if not wait:
                    break
        except ServiceError:
            self.close()
            raise
        except (httpx2.HTTPError, h11.ProtocolError, OSError, orjson.JSONDecodeError, openai.OpenAIError) as exc:
            self.close()
            raise UpstreamFailed() from exc
        if texts or not self._finished:
            self.deltas += len(texts)
            return texts
        return None

    def batches(self) -> Iterator[list[str]]:
        """``next_batch()`` as an iterator, closing the response however the iteration ends."""
        try:
            while (texts := self.next_batch()) is not None:
                yield texts
        finally:
            self.close()

    def _end_body(self, reader: BodyReader, response: httpx2.Response) -> None:
        """After ``[DONE]``: a body whose end came in the same read is closed now (its connection goes back to
        the pool); else a greenlet drains it, so the last event does not wait for the provider's last bytes."""
        try:
            while rest := reader.read(wait=False):
                pass
        except (httpx2.HTTPError, h11.ProtocolError, OSError):
            rest = None  # a body cut short after [DONE]: closing throws its connection away
        if rest is None:
            self._response = None
            response.close()
            return
        reader.settimeout(DRAIN_SECONDS)  # no watchdog follows the drain: bound its waits
        self._drained = gevent.spawn(_drain, reader, response.close)

    def _pop_failure(self) -> ServiceError:
        failure, self._failure = self._failure, None
        assert failure is not None
        return failure

    def _open_reader(self, response: httpx2.Response) -> BodyReader:
        self._reader = body_reader(response, self.read_timeout if self.timed_reads else None)
        self.wakeable = not isinstance(self._reader, HttpxReader)
        return self._reader

    def _take_all(self, raw: bytes, texts: list[str]) -> bool:
        """Decode one read's events into ``texts``; True at ``[DONE]``. An error event, or data that is not
        JSON, is kept for the next call, so the deltas before it are shown (and saved) first."""
        loads = load_chunk
        for data in self._decoder.feed(raw):
            if data == b"[DONE]":
                return True
            try:
                chunk = loads(data)
            except orjson.JSONDecodeError:
                log.warning("the model service sent an event that is not JSON: %r", data[:200])
                chunk = None
            try:
                failure = self._take(chunk, texts)
            except (AttributeError, TypeError, ValueError, IndexError, KeyError):  # JSON, not a chunk's shape
                log.warning("the model service sent a chunk of an unknown shape: %r", data[:200])
                failure = UpstreamFailed()
            if failure is not None:
                self._failure = failure
                return False
        return False

    def _take(self, chunk: Any, texts: list[str]) -> ServiceError | None:
        """Read one chunk into ``texts``; return the error it carries, if any."""
        if not isinstance(chunk, dict):
            return UpstreamFailed()
        if chunk.get("error"):
            return map_error_payload(chunk["error"])
        usage = chunk.get("usage")
        if usage:
            self.usage = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
            details = usage.get("completion_tokens_details")
            if isinstance(details, dict) and details.get("reasoning_tokens") is not None:
                self.reasoning_tokens = int(details["reasoning_tokens"])
        choices = chunk.get("choices")
        if not choices:  # usage-only, or Azure's prompt-filter chunk
            return None
        choice = choices[0]
        delta = choice.get("delta")
        if delta:
            content = delta.get("content")
            # a delta of text alone (nearly every token) carries no reasoning: only another shape is looked into
            if (content is None or len(delta) > 1) and self._take_reasoning(delta, texts):
                return UpstreamFailed()
            if content:
                if content.__class__ is not str:  # a list or a number where text belongs
                    return UpstreamFailed()
                texts.append(content)
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = reason
            if reason == "content_filter":
                return ContentFiltered()
        return None

    def _take_reasoning(self, delta: dict[str, Any], texts: list[str]) -> bool:
        """Append the delta's reasoning, if any, to ``texts``; True when it is not text."""
        for name in REASONING_FIELDS:
            reasoning = delta.get(name)
            if reasoning:
                if reasoning.__class__ is not str:
                    return True
                texts.append(ReasoningText(reasoning))
                self.reasoning_deltas += 1
                return False
        return False

    def close(self) -> None:
        """Close the response (if the drain will not) and let go of it and its reader: a finished stream stays
        replayable for minutes, and needs neither. Idempotent."""
        response, self._response, self._reader = self._response, None, None
        if response is not None and self._drained is None:
            response.close()


def _drain(reader: BodyReader, close: Callable[[], None]) -> None:
    """Read the body's last bytes after ``[DONE]``, then close the response: a fully read body puts the
    connection back in the pool for reuse, a half-read one throws it away. No timeout here: an exception thrown
    into httpx while it closes would strand the connection in its pool; the socket's own timeout
    (``DRAIN_SECONDS``) bounds a server that leaves its body open."""
    try:
        while reader.read() is not None:
            pass
    except (httpx2.HTTPError, h11.ProtocolError, OSError):
        pass
    finally:
        close()


class StreamingService:
    """Opens upstream streams through the SDK, spreading them over a few clients.

    Each SDK client owns one httpx2 connection pool, and that pool does work proportional to its connections on
    every request start and end; with thousands of open streams one pool costs more CPU than the streams
    themselves, so ``POOLS`` clients (each its own pool) share the load round-robin.
    """

    def __init__(
        self, client: openai.OpenAI, *more_clients: openai.OpenAI, response_timeout: float | None = None
    ) -> None:
        """``response_timeout``: the longest one attempt waits for the response headers once the request is sent
        (the clients' own timeouts otherwise); the body's reads keep the clients' read timeout."""
        self.client = client
        self.clients = (client, *more_clients)
        self._next = itertools.cycle(self.clients).__next__
        configured = httpx2.Timeout(client.timeout)
        self.read_timeout = configured.read
        self._open_options: openai.RequestOptions = {}
        if response_timeout is not None:
            self._open_options["timeout"] = httpx2.Timeout(response_timeout, connect=configured.connect)
        # A plain SDK client caches its platform headers on first use, and computing them runs `uname -p` in a
        # subprocess: warm it now, or a worker's first burst of requests forks once per concurrent request (the
        # clients of ``service.llm.providers`` send none, and this costs them nothing).
        client.platform_headers()

    def open(self, request: CompletionRequest) -> UpstreamStream:
        """Send the request and wait for the response headers; raise ``UpstreamUnavailable`` on failure.

        Connection errors, 429 and 5xx are retried by the SDK before this returns or raises; a provider that does
        not start its reply within the response timeout is not (see ``service.llm.providers``).
        """
        body: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        # ``client.post`` is the SDK's documented way to send a request it builds, authenticates, routes (Azure:
        # the deployment comes from ``model``), retries and maps to errors, while handing back the raw response.
        # ``chat.completions.create`` would add a typed walk of its ~35 parameters first: a tenth of a request's
        # CPU here, to change nothing in plain strings.
        try:
            sent = self._next().post(
                "/chat/completions",
                cast_to=httpx2.Response,
                body=body,
                options=self._options_for(request),
                stream=True,
                stream_cls=openai.Stream[ChatCompletionChunk],
            )
            response = cast(httpx2.Response, sent)  # cast_to=Response: the SDK returns it as is, body unread
        except Exception as exc:
            raise map_open_error(exc) from exc
        if self._open_options:
            # the response timeout bounded the wait for the headers; httpx2's own body reads (the ``HttpxReader``
            # fallback) take theirs from this dict when they start, and must keep the margin past the watchdog
            extensions = response.request.extensions
            extensions["timeout"] = {**extensions.get("timeout", {}), "read": self.read_timeout}
        # The request (its ~15 headers twice over, its URL, its extensions: ~3.6 KB) is sent and not read again;
        # an open stream would hold it to its end. httpx2 reads and closes a response without one.
        response._request = None
        return UpstreamStream(response, self.read_timeout)

    def _options_for(self, request: CompletionRequest) -> openai.RequestOptions:
        options = self._open_options.copy()
        request_id = request.request_id
        options["headers"] = {**UNSENT_HEADERS, "X-Request-ID": request_id} if request_id else UNSENT_HEADERS
        return options

    def moderate(self, text: str) -> bool:
        """True when the provider's moderation endpoint flags ``text``."""
        try:
            result = self.client.moderations.create(input=text)
        except openai.OpenAIError as exc:
            raise map_open_error(exc) from exc
        return any(item.flagged for item in result.results)
