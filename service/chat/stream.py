"""ChatStream: one running chat turn, from the open upstream to its last event, saved exactly once.

The exchange is saved in ``finish()``, complete or incomplete, so nothing the user saw is lost. A database that is
away or slow holds the last event back no longer than ``SAVE_TIMEOUT_SECONDS``: the exchange is journaled on local
disk instead and written when the database answers (``service.store.journal``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Protocol

from service.chat.events import Done, Error, Event, Metadata, Reasoning, Token, Usage
from service.chat.reply import ReplyParts
from service.errors import Cancelled, InternalError, ServiceError, StreamError
from service.llm.streaming import ReasoningText, UpstreamStream
from service.store.conversations import ConversationStore, ExchangeRecord, Placement
from service.tracing import RequestTrace

log = logging.getLogger(__name__)


class TokenMeter(Protocol):
    """Counts completion tokens as they stream; raises ``BudgetSpent`` when the budget runs out."""

    def add(self, count: int) -> None: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class ChatRequest:
    user_id: str
    message: str
    conversation_id: str | None = None
    model: str | None = None
    request_id: str | None = None
    received_at: float = field(default_factory=time.monotonic)  # the clock of time to first token and duration
    trace: RequestTrace | None = None  # only when tracing is configured
    regenerate_id: str | None = None  # a new reply beside this assistant message (``message`` is then its question)
    edit_id: str | None = None  # ``message`` replaces this user message, as a new branch beside it


class ChatStream:
    """One running chat turn. ``events()`` yields batches of events; run it once.

    Its transport talks to it through methods: ``interrupt(error)`` asks it to end, ``interruptible`` and
    ``wakeable`` say whether its greenlet may be thrown into now (only while it waits on the upstream socket, never
    while it saves, closes or counts), ``untimed_reads()`` hands the bounding of silences to a watchdog, and
    ``tokens_relayed`` counts what it sent.
    """

    def __init__(
        self,
        metadata: Metadata,
        request: ChatRequest,
        upstream: UpstreamStream,
        store: ConversationStore,
        prompt_tokens_estimate: int,
        meter: TokenMeter | None = None,
        on_end: Callable[[ChatStream], None] | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.metadata = metadata
        self.placement = placement  # where the exchange goes in the conversation's tree; None: after its current
        self.request = request
        self.upstream = upstream
        self.store = store
        self.prompt_tokens_estimate = prompt_tokens_estimate
        self.meter = meter
        self.on_end = on_end
        self._stop: StreamError | None = None
        self.parts = ReplyParts()
        self.finished = False
        self.final_event: Done | Error | None = None
        self.outcome = ""
        self.started = request.received_at
        self.first_token_at = 0.0  # when the provider's first token was read; 0 until then
        self.streamed = True  # False when the non-streaming endpoint runs it to its end

    def events(self) -> Generator[list[Event], None, None]:
        """The metadata with any tokens that came in with the upstream's headers (one write, not two), each
        network read's tokens, and the last event; an empty batch when the heartbeat woke the stream."""
        batch: list[Event] = [self.metadata]
        try:
            try:
                if self._stop is not None:
                    raise self._stop
                next_batch = self.upstream.next_batch
                texts = next_batch(wait=False)  # never waits: the metadata does not wait for the model
                while texts is not None:
                    if texts:
                        if not self.first_token_at:
                            self.first_token_at = time.monotonic()
                        if self.meter is not None:
                            self.meter.add(len(texts))  # before the batch is shown, so saved == seen
                        if self.upstream.reasoning_deltas:  # a reasoning model's reply: look at each piece
                            self.parts.extend_mixed(texts)
                            batch += [_event(text) for text in texts]
                        else:
                            self.parts.extend(texts)
                            batch += [Token(text) for text in texts]
                    yield batch
                    batch, texts = [], None  # neither is kept alive while the stream waits for the model
                    if self._stop is not None:
                        raise self._stop
                    texts = next_batch()
                if self.meter is not None:
                    self.meter.flush()
            except StreamError as exc:
                # its traceback holds this generator's frame, and so this stream: a cycle the stream's end would
                # leave to the garbage collector (``exc`` is kept as ``_stop`` when it came from ``interrupt``)
                exc.__traceback__ = None
                final: Event = self.finish(exc)
            except Exception as exc:
                log.exception("stream %s failed", self.metadata.stream_id)
                exc.__traceback__ = None
                final = self.finish(InternalError())
            else:
                final = self.finish(None)
            batch.append(final)
            yield batch
        finally:
            if not self.finished:
                # cut short at a write: with the reason it was stopped for, if any (a stalled client, a limit)
                self.finish(self._stop or Cancelled("The client disconnected before the reply finished."))

    def finish(self, error: ServiceError | None) -> Done | Error:
        """Close the upstream, save the exchange once, and return the stream's last event."""
        self.upstream.close()
        trace = self.request.trace
        usage = self.usage()
        final: Done | Error
        if error is None:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            final = Done(self.upstream.finish_reason or "stop", usage, round(usage.completion_tokens / elapsed, 1))
        else:
            final = Error(error.code, error.message, error.retryable)
        if not self.finished:
            self.finished = True
            self.final_event = final
            self.outcome = "done" if error is None else error.code
            try:
                if trace is not None:
                    trace.mark("provider_end")
                    trace.mark("save")
                self.save(error is None, usage)
                if trace is not None:
                    trace.mark("save_end")
            finally:
                if self.on_end is not None:
                    self.on_end(self)
        return final

    def interrupt(self, error: StreamError) -> bool:
        """End with ``error`` at the next step (or at once, if its greenlet is thrown ``error`` while it waits);
        False when it has already finished."""
        if self.finished:
            return False
        self._stop = error
        return True

    @property
    def stopping(self) -> bool:
        return self._stop is not None

    @property
    def interruptible(self) -> bool:
        """Blocked on the upstream socket now: the one safe moment to throw into its greenlet."""
        return self.upstream.waiting and not self.finished

    @property
    def wakeable(self) -> bool:
        """Interruptible, in a read of our own that turns a thrown ``WakeUp`` into an empty batch."""
        return self.interruptible and self.upstream.wakeable

    def untimed_reads(self) -> None:
        """A watchdog's one timer bounds this stream's silences: its upstream reads arm no timer of their own."""
        self.upstream.timed_reads = False

    def tokens_per_second(self, count: int, seconds: float) -> float | None:
        """``count`` tokens over the ``seconds`` after the first token (the stream lasted ``seconds`` in all); None
        when no token came or no time passed."""
        ttft = self.ttft_ms
        generating = seconds - ttft / 1000 if ttft is not None else 0.0
        return count / generating if count and generating > 0 else None

    @property
    def ttft_ms(self) -> float | None:
        """Request received to the provider's first token, or None when none came."""
        return round((self.first_token_at - self.started) * 1000, 1) if self.first_token_at else None

    @property
    def tokens_relayed(self) -> int:
        return self.upstream.deltas

    def usage(self) -> Usage:
        """The provider's usage, else the service's count; reasoning tokens are the provider's count when it sent
        one, else the reasoning pieces relayed (part of the completion tokens either way)."""
        upstream = self.upstream
        reasoning = upstream.reasoning_tokens
        if reasoning is None:
            reasoning = upstream.reasoning_deltas
        if upstream.usage is not None:
            return Usage(*upstream.usage, reasoning_tokens=reasoning)
        return Usage(self.prompt_tokens_estimate, upstream.deltas, estimated=True, reasoning_tokens=reasoning)

    def save(self, complete: bool, usage: Usage) -> None:
        seconds = time.monotonic() - self.started
        placement = self.placement
        try:
            self.store.save_exchange(
                ExchangeRecord(
                    conversation_id=self.metadata.conversation_id,
                    user_id=self.request.user_id,
                    user_message=self.request.message,
                    reply=self.parts.text(),
                    reasoning=self.parts.reasoning(),
                    reasoning_tokens=usage.reasoning_tokens or None,
                    reply_id=self.metadata.message_id,
                    status="complete" if complete else "incomplete",
                    model=self.metadata.model,
                    finish_reason=self.upstream.finish_reason,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    new_conversation=self.request.conversation_id is None,
                    streamed=self.streamed,
                    estimated=usage.estimated,
                    ttft_ms=self.ttft_ms,
                    duration_ms=round(seconds * 1000, 1),
                    tokens_per_second=self.tokens_per_second(usage.completion_tokens, seconds),
                    outcome=self.outcome,
                    cached=self.metadata.cached,
                    parent_id=placement.parent_id if placement else None,
                    depth=placement.depth if placement else None,
                    user_message_id=placement.user_message_id if placement else None,
                    regenerate=placement.regenerate if placement else False,
                )
            )
        except Exception:
            log.exception("could not save conversation %s", self.metadata.conversation_id)


def _event(text: str) -> Token | Reasoning:
    return Reasoning(text) if text.__class__ is ReasoningText else Token(text)
