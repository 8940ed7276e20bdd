"""ChatService: the orchestration of one chat turn, and nothing else.

checks → context fitted to the model's window → upstream stream (or, for a first turn seen before, the response
cache's copy) → a ``ChatStream`` that yields events and saves the exchange once.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from service.chat.cache import CachedReply, ReplayedUpstream, ReplyCache, reply_key
from service.chat.context import Context, ContextBuilder
from service.chat.events import Done, Error, Event, Metadata, Usage
from service.chat.safety import checked_message
from service.chat.stream import ChatRequest, ChatStream, TokenMeter
from service.config import Settings
from service.errors import ContentFiltered, ContextTooLong, InvalidRequest, NotFound, RateLimited, UpstreamUnavailable
from service.llm.streaming import CompletionRequest, StreamingService, UpstreamStream
from service.store.conversations import ConversationStore, Placement, WrongRole

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatResult:
    """A whole reply, for the non-streaming endpoint."""

    conversation_id: str
    message_id: str
    content: str
    model: str
    finish_reason: str
    usage: Usage
    cached: bool = False  # answered from the response cache
    reasoning: str | None = None  # a reasoning model's thinking, apart from ``content``


class ChatService:
    def __init__(
        self,
        settings: Settings,
        streaming: StreamingService,
        store: ConversationStore,
        context: ContextBuilder,
        cache: ReplyCache | None = None,  # RESPONSE_CACHE: None when off
    ) -> None:
        self.settings = settings
        self.streaming = streaming
        self.store = store
        self.context = context
        self.cache = cache

    def open_stream(
        self,
        request: ChatRequest,
        meter: TokenMeter | None = None,
        on_end: Callable[[ChatStream], None] | None = None,
    ) -> ChatStream:
        """Check, build context and open the upstream; every refusal is raised before any byte is sent."""
        settings = self.settings
        moderators = [self.streaming.moderate] if settings.moderation else []
        trace = request.trace
        placement: Placement | None = None
        if request.regenerate_id and request.conversation_id:  # the question asked again is the stored one
            placement = self._placement(request, request.conversation_id)
            request = dataclasses.replace(request, message=placement.message or "")
        if trace is not None:
            trace.mark("safety")
        message = checked_message(request.message, settings.max_message_chars, settings.blocked_terms, moderators)
        if trace is not None:
            trace.mark("safety_end")
        request = dataclasses.replace(request, message=message)
        conversation_id = request.conversation_id
        if conversation_id is None:
            conversation_id = str(uuid.uuid4())
            placement = Placement.first_turn()
        elif placement is None:
            placement = self._placement(request, conversation_id)
        history = placement.history
        model = request.model or settings.chat_model
        if trace is not None:
            trace.mark("provider")
        cache = self.cache
        if cache is not None and request.conversation_id is None:  # a first turn: its input may have been seen
            first_turn = self.context.build(model, history, message).messages
            key = reply_key(self._completion(model, first_turn))
            cached = cache.lookup(key)
            if cached is not None:
                return self._replay(cached, request, conversation_id, model, meter, on_end, placement)
            on_end = cache.keeper(key, on_end)
        context, upstream = self._open_upstream(model, history, message, request.request_id)
        metadata = Metadata(
            uuid.uuid4().hex, conversation_id, str(uuid.uuid4()), model, context.omitted, request.request_id
        )
        return ChatStream(metadata, request, upstream, self.store, context.prompt_tokens, meter, on_end, placement)

    def _placement(self, request: ChatRequest, conversation_id: str) -> Placement:
        """Where the turn goes in the conversation's tree; a message id not in the user's conversation is not found
        (whether it exists elsewhere is not told)."""
        try:
            found = self.store.placement(
                conversation_id, request.user_id, self.settings.history_messages, request.regenerate_id, request.edit_id
            )
        except WrongRole as wrong:
            field = "regenerateMessageId" if request.regenerate_id else "editMessageId"
            raise InvalidRequest(
                f"That message cannot be {'regenerated' if request.regenerate_id else 'edited'}.",
                {field: [f"must name a message of role {wrong.expected}"]},
            ) from None
        if found is None:
            raise NotFound("No such message." if request.regenerate_id or request.edit_id else "No such conversation.")
        return found

    def _replay(
        self,
        cached: CachedReply,
        request: ChatRequest,
        conversation_id: str,
        model: str,
        meter: TokenMeter | None,
        on_end: Callable[[ChatStream], None] | None,
        placement: Placement,
    ) -> ChatStream:
        """A stream of a cached reply: the same events as a provider's, ``cached`` in its metadata; saved and
        counted as any other."""
        metadata = Metadata(
            uuid.uuid4().hex, conversation_id, str(uuid.uuid4()), model, 0, request.request_id, cached=True
        )
        upstream = ReplayedUpstream(cached)
        return ChatStream(metadata, request, upstream, self.store, cached.prompt_tokens, meter, on_end, placement)

    def _open_upstream(
        self, model: str, history: list[tuple[str, str]], message: str, request_id: str | None
    ) -> tuple[Context, UpstreamStream]:
        """Fit the context to the model's window and open the stream. A provider that still finds it too long
        (it counts with its own tokenizer) gets one more try with half the history kept, then the user is told."""
        context = self.context.build(model, history, message)
        try:
            return context, self.streaming.open(self._completion(model, context.messages, request_id))
        except ContextTooLong as refused:
            if refused.window:
                self.context.learn(model, refused.window)
            if context.kept == 0 and not refused.window:
                raise ContextTooLong() from None
            log.info("model %s refused %d history messages as too long; retrying with fewer", model, context.kept)
        context = self.context.build(model, history, message, keep_at_most=context.kept // 2)
        return context, self.streaming.open(self._completion(model, context.messages, request_id))

    def _completion(
        self, model: str, messages: list[dict[str, str]], request_id: str | None = None
    ) -> CompletionRequest:
        """What the provider is sent: the one place it is put together, so the response cache's key (its hash, the
        id aside) covers every part of it."""
        return CompletionRequest(model, messages, self.settings.max_tokens, request_id)

    def chat(self, stream: ChatStream) -> ChatResult:
        """Run a stream to its end and answer as one whole reply (the non-streaming fallback)."""
        final: Event | None = None
        stream.streamed = False
        for events in stream.events():
            if events:
                final = events[-1]
        metadata = stream.metadata
        if isinstance(final, Error) and final.code != ContentFiltered.code:
            raise RateLimited(final.message) if final.code == RateLimited.code else UpstreamUnavailable(final.message)
        finish_reason = (stream.upstream.finish_reason or "stop") if isinstance(final, Done) else "content_filter"
        return ChatResult(
            metadata.conversation_id,
            metadata.message_id,
            stream.parts.text(),
            metadata.model,
            finish_reason,
            stream.usage(),
            metadata.cached,
            stream.parts.reasoning(),
        )
