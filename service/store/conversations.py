"""The only module that runs SQL for conversations. Ownership is part of every query.

A save the database cannot take (it is away, or does not answer within ``save_timeout``) goes to the save journal
(``service.store.journal``), on disk before ``save_exchange`` returns, and is written from there once the database
answers: a reply the user was shown is not lost to an outage, and the stream's end does not wait on one.

Messages form a tree: each has a parent (``parent_id``; the first user message has none) and its depth as its
``position``, so a regenerated reply or an edited message is a sibling of the one it replaces. The conversation's
``current_message_id`` is the newest message of the branch the user is on; the model sees that branch, walked up
from there, as history."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, literal, select, update
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
_TOUCH = (
    update(conversations)
    .where(conversations.c.id == bindparam("b_id"))
    .values(updated_at=bindparam("b_now"), current_message_id=bindparam("b_current"))
)
_CURRENT_ID = select(conversations.c.current_message_id).where(conversations.c.id == bindparam("b_id"))
# the conversation's current message, else its newest: where a record that names no place goes
_CURRENT = (
    select(messages.c.id, messages.c.position)
    .where(messages.c.conversation_id == bindparam("b_id"))
    .order_by((messages.c.id == _CURRENT_ID.scalar_subquery()).desc(), messages.c.position.desc())
    .limit(1)
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
    cached: bool = False  # answered from the response cache: no provider call
    # where the exchange goes in the conversation's tree (``Placement``); ``depth`` None: after the current message
    parent_id: str | None = None  # the user message's parent
    depth: int | None = None  # the user message's position
    user_message_id: str | None = None  # None: a new id
    regenerate: bool = False  # a new reply to the stored user message ``user_message_id``: no user message written
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
            "cached": self.cached,
            "reasoning_tokens": self.reasoning_tokens,
            "created_at": at,
        }


@dataclass(frozen=True)
class Placement:
    """Where a new turn goes in a conversation's tree, and the history its model sees from there.

    ``regenerate``: the turn is a new reply to the stored user message ``user_message_id`` (at ``depth``), whose
    text is ``message``; otherwise a new user message ``user_message_id`` under ``parent_id`` at ``depth``."""

    history: list[tuple[str, str]]  # (role, content) oldest first, at most the limit asked for
    parent_id: str | None
    depth: int
    user_message_id: str
    regenerate: bool = False
    message: str | None = None  # regenerate: the user message answered again

    @classmethod
    def first_turn(cls) -> Placement:
        return cls([], None, 0, str(uuid.uuid4()))


class WrongRole(Exception):
    """A regenerate named a user message, or an edit an assistant's: ``expected`` is the role it must have."""

    def __init__(self, expected: str) -> None:
        super().__init__(f"must name a message of role {expected}")
        self.expected = expected


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
    parent_id: str | None = None
    position: int = 0
    current: bool = False  # on the conversation's current branch
    reasoning: str | None = None

    @classmethod
    def of(cls, message: Message, current: bool = False) -> MessageRow:
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
            message.parent_id,
            message.position,
            current,
            message.reasoning,
        )


@dataclass(frozen=True)
class ConversationRow:
    id: str
    title: str
    created_at: datetime
    updated_at: datetime
    messages: list[MessageRow] | None = None  # read with its messages: the current branch, oldest first
    all_messages: list[MessageRow] | None = None  # every branch's, by depth then time
    current_message_id: str | None = None

    @classmethod
    def of(cls, conversation: Conversation, every: list[MessageRow] | None = None) -> ConversationRow:
        """Listed without messages, or read with ``every`` message (of every branch, by depth then time)."""
        if every is None:
            return cls(conversation.id, conversation.title, conversation.created_at, conversation.updated_at)
        branch = [message for message in every if message.current]
        return cls(
            conversation.id,
            conversation.title,
            conversation.created_at,
            conversation.updated_at,
            branch,
            every,
            branch[-1].id if branch else None,
        )


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
        """The last ``limit`` (role, content) pairs of the current branch oldest first, or None when not the
        user's."""
        placement = self.placement(conversation_id, user_id, limit)
        return None if placement is None else placement.history

    def placement(
        self,
        conversation_id: str,
        user_id: str,
        limit: int,
        regenerate_id: str | None = None,
        edit_id: str | None = None,
    ) -> Placement | None:
        """Where the next turn goes, with the last ``limit`` messages of history it sees: after the current
        branch; a new reply to the user message that assistant message ``regenerate_id`` answered; or a new user
        message beside user message ``edit_id``. None when the conversation is not the user's or the message is not
        in it; ``WrongRole`` when the message is of the other role."""

        def work(session: Session) -> Placement | None:
            conversation = _owned(session, conversation_id, user_id)
            if conversation is None:
                return None
            named = regenerate_id or edit_id
            if named is None:
                start = conversation.current_message_id or _newest(session, conversation_id)
                path = _walk_up(session, conversation_id, start, max(limit, 1))
                depth = path[-1][2] + 1 if path else 0
                return Placement(_pairs(path, limit), start, depth, str(uuid.uuid4()))
            found = session.execute(
                select(Message.role, Message.parent_id, Message.position).where(
                    Message.id == named, Message.conversation_id == conversation_id
                )
            ).one_or_none()
            if found is None:
                return None
            role, parent_id, position = found
            if edit_id is not None:
                if role != "user":
                    raise WrongRole("user")
                history = _pairs(_walk_up(session, conversation_id, parent_id, limit), limit)
                return Placement(history, parent_id, position, str(uuid.uuid4()))
            if role != "assistant" or parent_id is None:
                raise WrongRole("assistant")
            path = _walk_up(session, conversation_id, parent_id, limit + 1)  # its history, then the user message
            if not path:
                return None
            question = path.pop()
            return Placement(_pairs(path, limit), None, question[2], parent_id, regenerate=True, message=question[1])

        return self.database.transaction(work)

    def switch_branch(self, conversation_id: str, user_id: str, message_id: str) -> ConversationRow | None:
        """Make the branch through ``message_id`` current, down to its newest descendant (the branch as it was
        left); the conversation as ``read`` gives it, or None when it or the message is not the user's."""

        def work(session: Session) -> ConversationRow | None:
            conversation = _owned(session, conversation_id, user_id)
            if conversation is None:
                return None
            rows = conversation.messages
            if not any(message.id == message_id for message in rows):
                return None
            conversation.current_message_id = _newest_descendant(rows, message_id)
            return _read_row(conversation)

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
            return _read_row(conversation)

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
    """Each exchange's messages, its conversation touched (created on its first exchange) with its current branch
    moved to the new reply, and its usage."""
    now = utcnow()
    seen: dict[str, tuple[str, int]] = {}  # conversation -> its reply written last in this batch, and its depth
    created: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for record in records:
        conversation_id = record.conversation_id
        at = record.ended_at or now
        after = seen.get(conversation_id)
        if after is None and record.depth is None and not record.new_conversation:
            # a record that names no place (an older version's): after the current message, read before it moves
            current = connection.execute(_CURRENT, {"b_id": conversation_id}).one_or_none()
            after = (current[0], current[1]) if current is not None else None
        touch = {"b_id": conversation_id, "b_now": at, "b_current": record.reply_id}
        if conversation_id in created:
            created[conversation_id]["current_message_id"] = record.reply_id
        elif record.new_conversation or not connection.execute(_TOUCH, touch).rowcount:
            title = " ".join(record.user_message.split())[:TITLE_CHARS] or "New conversation"
            row = {
                "id": conversation_id,
                "user_id": record.user_id,
                "title": title,
                "current_message_id": record.reply_id,
            }
            created[conversation_id] = {**row, "created_at": at, "updated_at": at}
        new_rows = _message_rows(record, after, at)
        rows.extend(new_rows)
        seen[conversation_id] = (record.reply_id, new_rows[-1]["position"])
    if created:
        connection.execute(_CREATE, list(created.values()))
    connection.execute(_ADD_MESSAGES, rows)
    connection.execute(_ADD_USAGE, [record.usage_row(record.ended_at or now) for record in records])


def _message_rows(record: ExchangeRecord, after: tuple[str, int] | None, now: datetime) -> list[dict[str, Any]]:
    """The user message (none for a regenerated reply) and the reply. A record that names no place goes after
    ``after`` (the current message: id and depth), or first."""
    common = {"conversation_id": record.conversation_id, "created_at": now}
    parent_id, depth = record.parent_id, record.depth
    if depth is None:
        parent_id, depth = (after[0], after[1] + 1) if after is not None else (None, 0)
    user_message_id = record.user_message_id or str(uuid.uuid4())
    reply = {
        **common,
        "id": record.reply_id,
        "parent_id": user_message_id,
        "position": depth + 1,
        "role": "assistant",
        "content": record.reply,
        "reasoning": record.reasoning,
        "status": record.status,
        "model": record.model,
        "finish_reason": record.finish_reason,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
    }
    if record.regenerate:
        return [reply]
    question = {
        **common,
        "id": user_message_id,
        "parent_id": parent_id,
        "position": depth,
        "role": "user",
        "content": record.user_message,
        "reasoning": None,
        "status": "complete",
        "model": None,
        "finish_reason": None,
        "prompt_tokens": None,
        "completion_tokens": None,
    }
    return [question, reply]


def _newest(session: Session, conversation_id: str) -> str | None:
    """The newest message, for a conversation whose current message is not recorded."""
    return session.scalars(
        select(Message.id).where(Message.conversation_id == conversation_id).order_by(Message.position.desc()).limit(1)
    ).first()


def _walk_up(session: Session, conversation_id: str, start: str | None, steps: int) -> list[tuple[str, str, int]]:
    """(role, content, position) of ``start`` and its ancestors, at most ``steps`` of them, oldest first: one
    recursive query that reads only the messages it returns."""
    if start is None or steps <= 0:
        return []
    branch = (
        select(
            messages.c.id,
            messages.c.parent_id,
            messages.c.role,
            messages.c.content,
            messages.c.position,
            literal(1).label("step"),
        )
        .where(messages.c.id == start, messages.c.conversation_id == conversation_id)
        .cte("branch", recursive=True)
    )
    parent = messages.alias("parent")
    branch = branch.union_all(
        select(
            parent.c.id, parent.c.parent_id, parent.c.role, parent.c.content, parent.c.position, branch.c.step + 1
        ).where(parent.c.id == branch.c.parent_id, parent.c.conversation_id == conversation_id, branch.c.step < steps)
    )
    rows = session.execute(select(branch.c.role, branch.c.content, branch.c.position).order_by(branch.c.step.desc()))
    return [(role, content, position) for role, content, position in rows]


def _pairs(path: list[tuple[str, str, int]], limit: int) -> list[tuple[str, str]]:
    """The last ``limit`` of a walked path as (role, content)."""
    return [(role, content) for role, content, _ in path[max(len(path) - limit, 0) :]] if limit > 0 else []


def _newest_descendant(rows: list[Message], message_id: str) -> str:
    """The newest message under ``message_id`` (itself included): the end of that branch as it was left. The
    newest is always a leaf (its children would be newer); a reply saved with its question shares its time and is
    deeper."""
    children: dict[str | None, list[Message]] = {}
    for row in rows:
        children.setdefault(row.parent_id, []).append(row)
    newest = next(row for row in rows if row.id == message_id)
    todo = [newest]
    while todo:
        row = todo.pop()
        if (_utc(row.created_at), row.position) > (_utc(newest.created_at), newest.position):
            newest = row
        todo.extend(children.get(row.id, ()))
    return newest.id


def _utc(at: datetime) -> datetime:
    """SQLite gives naive datetimes and PostgreSQL aware ones; both are UTC."""
    return at.replace(tzinfo=None)


def _branch_ids(rows: list[Message], current_id: str | None) -> set[str]:
    """The ids on the branch ending at ``current_id``."""
    parents = {row.id: row.parent_id for row in rows}
    ids: set[str] = set()
    at = current_id if current_id in parents else (rows[-1].id if rows else None)
    while at is not None and at not in ids:
        ids.add(at)
        at = parents.get(at)
    return ids


def _read_row(conversation: Conversation) -> ConversationRow:
    rows = sorted(conversation.messages, key=lambda row: (row.position, _utc(row.created_at)))
    branch = _branch_ids(rows, conversation.current_message_id)
    return ConversationRow.of(conversation, [MessageRow.of(row, row.id in branch) for row in rows])


def _owned(session: Session, conversation_id: str, user_id: str) -> Conversation | None:
    return session.scalars(
        select(Conversation).where(Conversation.id == conversation_id, Conversation.user_id == user_id)
    ).one_or_none()
