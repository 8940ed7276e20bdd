"""The soak's end check, read from the database itself: every stream that started is saved, with exactly the
text its client received.

- ``done`` (completed, resumed, bursts): saved ``complete``, text equal to what the client received, which is
  the whole reply the model sent.
- cut by ``DELETE``, the idle timeout or the token budget: saved ``incomplete``, text equal to what the client
  received (the service saves the reply as far as it was sent, before the final event).
- abandoned (the client left and never came back): saved ``incomplete``; the client received a prefix of it and
  the rest was generated during the resume grace, so the saved text starts with what the client received, equals
  what a replay after the grace shows, and is a prefix of the model's whole reply.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from bench.soak.traffic import Attempt
from bench.soak.upstream import reply_text
from service.store.models import Conversation, Message

CHUNK = 500


@dataclass(frozen=True)
class Saved:
    id: str
    role: str
    content: str
    status: str


def write_attempts(path: Path, attempts: Sequence[Attempt]) -> None:
    """Every started stream, one JSON object a line (``read_attempts`` loads them): to check the database again."""
    with path.open("w") as out:
        for attempt in attempts:
            out.write(json.dumps(dataclasses.asdict(attempt)) + "\n")


def read_attempts(path: Path) -> list[Attempt]:
    with path.open() as lines:
        return [Attempt(**json.loads(line)) for line in lines]


def _chunks(items: Sequence[Attempt]) -> Iterator[Sequence[Attempt]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def load_saved(database_url: str, attempts: Sequence[Attempt]) -> tuple[set[str], dict[str, list[Saved]]]:
    """The conversations that exist, and each one's messages (oldest first), for the attempts' conversations."""
    engine = create_engine(database_url)
    conversations: set[str] = set()
    messages: dict[str, list[Saved]] = {}
    try:
        with Session(engine) as session:
            for chunk in _chunks(attempts):
                ids = [attempt.conversation_id for attempt in chunk]
                conversations.update(session.scalars(select(Conversation.id).where(Conversation.id.in_(ids))))
                rows = session.execute(
                    select(Message.conversation_id, Message.id, Message.role, Message.content, Message.status)
                    .where(Message.conversation_id.in_(ids))
                    .order_by(Message.conversation_id, Message.position)
                )
                for conversation_id, message_id, role, content, status in rows:
                    messages.setdefault(conversation_id, []).append(Saved(message_id, role, content, status))
    finally:
        engine.dispose()
    return conversations, messages


def check_saved(database_url: str, attempts: Sequence[Attempt]) -> list[str]:
    """Every difference between what the clients received and what the database holds (empty: none)."""
    conversations, messages = load_saved(database_url, attempts)
    problems: list[str] = []
    for attempt in attempts:
        label = f"{attempt.kind} stream {attempt.stream_id} (conversation {attempt.conversation_id})"
        if attempt.conversation_id not in conversations:
            problems.append(f"{label}: no conversation in the database")
            continue
        found = messages.get(attempt.conversation_id, [])
        if len(found) != 2 or found[0].role != "user" or found[1].role != "assistant":
            problems.append(f"{label}: saved messages {[item.role for item in found]}, not user then assistant")
            continue
        question, answer = found
        if answer.id != attempt.message_id:
            problems.append(f"{label}: the reply is saved as {answer.id}, the metadata said {attempt.message_id}")
        if question.content != attempt.message:
            problems.append(f"{label}: the user message saved is {question.content!r}, not {attempt.message!r}")
        if answer.status != attempt.expected_status:
            problems.append(f"{label}: saved {answer.status}, not {attempt.expected_status}")
        problems.extend(f"{label}: {text}" for text in _text_problems(attempt, answer.content))
    return problems


def _text_problems(attempt: Attempt, saved: str) -> list[str]:
    received = attempt.received
    if not attempt.saved_is_prefix:
        if saved != received:
            return [f"saved {len(saved)} characters {_around(saved, received)}, the client received {len(received)}"]
        return []
    problems = []
    if not saved.startswith(received):
        problems.append(f"the saved reply does not start with the {len(received)} characters the client received")
    if saved != reply_text(attempt.tokens)[: len(saved)]:
        problems.append("the saved reply is not a prefix of what the model sent")
    if attempt.replay is not None and saved != attempt.replay:
        problems.append(f"saved {len(saved)} characters, the replay after the grace gave {len(attempt.replay)}")
    return problems


def _around(saved: str, received: str) -> str:
    """Where two texts first differ, for the report."""
    at = next((index for index, (a, b) in enumerate(zip(saved, received, strict=False)) if a != b), None)
    if at is None:
        return "(one is a prefix of the other)"
    return f"(first difference at {at}: {saved[at : at + 20]!r} vs {received[at : at + 20]!r})"
