"""The only module that runs SQL for conversations. Ownership is part of every query.

A save the database cannot take (it is away, or does not answer within ``save_timeout``) goes to the save journal
(``service.store.journal``), on disk before ``save_exchange`` returns, and is written from there once the database
answers: a reply the user was shown is not lost to an outage, and the stream's end does not wait on one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from service.errors import DatabaseUnavailable
from service.store.database import Database
from service.store.group_commit import GroupCommit, WriteTimedOut
from service.store.models import Conversation, Message, Usage, utcnow

if TYPE_CHECKING:
    from service.store.journal import SaveJournal

TITLE_CHARS = 80
SAVE_TIMEOUT_SECONDS = 2.0  # as the setting's default
conversations = cast(Table, Conversation.__table__)
messages = cast(Table, Message.__table__)
_TOUCH = update(conversations).where(conversations.c.id == bindparam("b_id")).values(updated_at=bindparam("b_now"))
_LAST_POSITION = select(func.coalesce(func.max(messages.c.position), -1)).where(
    messages.c.conversation_id == bindparam("b_id")
)
_CREATE = insert(conversations)
_ADD_MESSAGES = insert(messages)
_ADD_USAGE = insert(cast(Table, Usage.__table__))


@dataclass(frozen=True)
class ExchangeRecord:
    """A user message and the assistant's reply to it, saved together."""

    conversation_id: str
    user_id: str
    user_message: str
    reply: str
    reply_id: str
    status: str
    model: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    new_conversation: bool = False  # its id was made for this exchange: nothing to look up first
    ended_at: datetime | None = None  # None: now; a save written late (from the journal) keeps its own time
    # the usage record written with it (``usage`` table)
    streamed: bool = True
    estimated: bool = False  # the token counts are the service's, the provider sent none
    ttft_ms: float | None = None  # request received to first token; None when no token came
    duration_ms: float = 0.0
    tokens_per_second: float | None = None  # completion tokens a second after the first token
    outcome: str = "done"  # or the error code the reply ended with
    reasoning: str | None = None  # a reasoning model's thinking, saved apart from the reply
    reasoning_tokens: int | None = None  # of the completion tokens, those spent reasoning

    def usage_row(self, at: datetime) -> dict[str, Any]:
        prompt, completion = self.prompt_tokens or 0, self.completion_tokens or 0
        return {
            "message_id": self.reply_id,
            "user_id": self.user_id,
            "conversation_id": self.conversation_id,
            "model": self.model,
            "streamed": self.streamed,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "estimated": self.estimated,
            "ttft_ms": self.ttft_ms,
            "duration_ms": self.duration_ms,
            "tokens_per_second": None if self.tokens_per_second is None else round(self.tokens_per_second, 2),
            "outcome": self.outcome,
            "reasoning_tokens": self.reasoning_tokens,
            "created_at": at,
        }


@dataclass(frozen=True)
class TokenCounts:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class MessageRow:
    id: str
    role: str
    content: str
    status: str
    model: str | None
    finish_reason: str | None
    usage: TokenCounts | None
    created_at: datetime
    reasoning: str | None = None

    @classmethod
    def of(cls, message: Message) -> MessageRow:
        usage = None
        if message.prompt_tokens is not None or message.completion_tokens is not None:
            usage = TokenCounts(message.prompt_tokens or 0, message.completion_tokens or 0)
        return cls(
            message.id,
            message.role,
            message.content,
            message.status,
            message.model,
            message.finish_reason,
            usage,
            message.created_at,
            message.reasoning,
        )


@dataclass(frozen=True)
class ConversationRow:
    id: str
    title: str
    created_at: datetime
    updated_at: datetime
    messages: list[MessageRow] | None = None  # read with its messages, or listed without

    @classmethod
    def of(cls, conversation: Conversation, messages: list[MessageRow] | None = None) -> ConversationRow:
        return cls(conversation.id, conversation.title, conversation.created_at, conversation.updated_at, messages)


class ConversationStore:
    def __init__(
        self, database: Database, journal: SaveJournal | None = None, save_timeout: float = SAVE_TIMEOUT_SECONDS
    ) -> None:
        """The service passes its settings' journal and timeout (``SAVE_JOURNAL_DIR``, ``SAVE_TIMEOUT_SECONDS``);
        without them, the default folder beside the database. Under gevent the journal's replayer starts here."""
        from service.store.journal import SaveJournal, default_folder  # which imports this module for its records

        self.database = database
        if journal is None:
            journal = SaveJournal(default_folder(database.url), database.url, database.cooperative)
        self.journal = journal
        self.save_timeout = save_timeout
        self.group: GroupCommit[ExchangeRecord] | None = None
        if database.cooperative:
            self.group = GroupCommit(self.save_exchanges, item_by_item=_not_outage, stuck_for=database.busy_for)
            journal.start(self)

    def history(self, conversation_id: str, user_id: str, limit: int) -> list[tuple[str, str]] | None:
        """The last ``limit`` (role, content) pairs oldest first, or None when not the user's."""

        def work(session: Session) -> list[tuple[str, str]] | None:
            if _owned(session, conversation_id, user_id) is None:
                return None
            if limit == 0:
                return []
            rows = session.execute(
                select(Message.role, Message.content)
                .where(Message.conversation_id == conversation_id)
                .order_by(Message.position.desc())
                .limit(limit)
            ).all()
            return [(role, content) for role, content in reversed(rows)]

        return self.database.transaction(work)

    def save_exchange(self, record: ExchangeRecord) -> None:
        """Both messages in one transaction; creates the conversation on its first exchange. Returns once saved,
        or once journaled: when the database is away, or (under gevent) has not committed it within
        ``save_timeout``.

        Under gevent, saves that arrive together share one transaction (``GroupCommit``). Core statements built
        once at import (so SQLAlchemy's compiled cache always hits), not ORM objects: this runs once per stream,
        and the unit of work cost more CPU than relaying a short reply."""
        try:
            if self.group is not None:
                self.group.submit(record, self.save_timeout)
            else:
                self.save_exchanges([record])
        except (DatabaseUnavailable, WriteTimedOut) as error:
            self.journal.append(record, error)

    def save_exchanges(self, records: list[ExchangeRecord]) -> None:
        """Several exchanges in one transaction."""
        self.database.statements(lambda connection: _write_exchanges(connection, records))

    def stored_replies(self, reply_ids: list[str]) -> set[str]:
        """Which of these replies are stored: a journaled save is written only if its reply is not."""
        if not reply_ids:
            return set()
        query = select(messages.c.id).where(messages.c.id.in_(reply_ids))
        return self.database.statements(lambda connection: set(connection.execute(query).scalars()))

    def list_for(self, user_id: str, limit: int, offset: int) -> list[ConversationRow]:
        def work(session: Session) -> list[ConversationRow]:
            rows = session.scalars(
                select(Conversation)
                .where(Conversation.user_id == user_id)
                .order_by(Conversation.updated_at.desc(), Conversation.id)
                .limit(limit)
                .offset(offset)
            ).all()
            return [ConversationRow.of(row) for row in rows]

        return self.database.transaction(work)

    def read(self, conversation_id: str, user_id: str) -> ConversationRow | None:
        """The conversation with its messages, oldest first; None when it is not the user's."""

        def work(session: Session) -> ConversationRow | None:
            conversation = _owned(session, conversation_id, user_id)
            if conversation is None:
                return None
            return ConversationRow.of(conversation, [MessageRow.of(message) for message in conversation.messages])

        return self.database.transaction(work)

    def delete(self, conversation_id: str, user_id: str) -> bool:
        def work(session: Session) -> bool:
            if _owned(session, conversation_id, user_id) is None:
                return False
            session.execute(delete(Message).where(Message.conversation_id == conversation_id))
            session.execute(delete(Conversation).where(Conversation.id == conversation_id))
            return True

        return self.database.transaction(work)


def _not_outage(error: Exception) -> bool:
    return not isinstance(error, DatabaseUnavailable)


def _write_exchanges(connection: Connection, records: list[ExchangeRecord]) -> None:
    now = utcnow()
    last_positions: dict[str, int] = {}  # two exchanges of one conversation in a batch: number them in order
    created: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for record in records:
        conversation_id = record.conversation_id
        at = record.ended_at or now
        position = last_positions.get(conversation_id)
        if position is None:
            position = -1
            touched = 0
            if not record.new_conversation:
                touched = connection.execute(_TOUCH, {"b_id": conversation_id, "b_now": at}).rowcount
                if touched:
                    position = connection.execute(_LAST_POSITION, {"b_id": conversation_id}).scalar_one()
            if not touched:
                title = " ".join(record.user_message.split())[:TITLE_CHARS] or "New conversation"
                row = {"id": conversation_id, "user_id": record.user_id, "title": title}
                created.append({**row, "created_at": at, "updated_at": at})
        last_positions[conversation_id] = position + 2
        rows.extend(_message_rows(record, position, at))
    if created:
        connection.execute(_CREATE, created)
    connection.execute(_ADD_MESSAGES, rows)
    connection.execute(_ADD_USAGE, [record.usage_row(record.ended_at or now) for record in records])


def _message_rows(record: ExchangeRecord, position: int, now: datetime) -> list[dict[str, Any]]:
    common = {"conversation_id": record.conversation_id, "created_at": now}
    return [
        {
            **common,
            "id": str(uuid.uuid4()),
            "position": position + 1,
            "role": "user",
            "content": record.user_message,
            "reasoning": None,
            "status": "complete",
            "model": None,
            "finish_reason": None,
            "prompt_tokens": None,
            "completion_tokens": None,
        },
        {
            **common,
            "id": record.reply_id,
            "position": position + 2,
            "role": "assistant",
            "content": record.reply,
            "reasoning": record.reasoning,
            "status": record.status,
            "model": record.model,
            "finish_reason": record.finish_reason,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
        },
    ]


def _owned(session: Session, conversation_id: str, user_id: str) -> Conversation | None:
    return session.scalars(
        select(Conversation).where(Conversation.id == conversation_id, Conversation.user_id == user_id)
    ).one_or_none()
