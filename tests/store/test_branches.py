"""Conversations as trees on real SQLite and PostgreSQL: regenerated replies and edited messages are siblings, the
current branch is what the model sees, and switching branch follows it down to its newest message."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import DatabaseUnavailable
from service.store.conversations import ConversationStore, ExchangeRecord, Placement, WrongRole
from service.store.database import Database
from service.store.journal import SaveJournal

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConversationStore]:
    url = f"sqlite:///{tmp_path / 'tree.sqlite3'}" if request.param == "sqlite" else POSTGRES_URL
    database = Database(url)
    database.create_tables()
    yield ConversationStore(database)
    database.dispose()


def turn(
    store: ConversationStore,
    conversation: str,
    user: str,
    text: str,
    *,
    new: bool = False,
    regenerate: str | None = None,
    edit: str | None = None,
    status: str = "complete",
) -> tuple[Placement, str]:
    """One exchange saved where the service would put it: its placement and its reply's id."""
    placement = Placement.first_turn() if new else store.placement(conversation, user, 50, regenerate, edit)
    assert placement is not None
    reply_id = str(uuid.uuid4())
    question = placement.message or text
    store.save_exchange(
        ExchangeRecord(
            conversation,
            user,
            question,
            f"reply to {question}" + (" again" if regenerate else ""),
            reply_id,
            status,
            "m",
            "stop",
            3,
            4,
            new_conversation=new,
            parent_id=placement.parent_id,
            depth=placement.depth,
            user_message_id=placement.user_message_id,
            regenerate=placement.regenerate,
        )
    )
    return placement, reply_id


def shape(store: ConversationStore, conversation: str, user: str) -> list[tuple[str, str, int, bool]]:
    read = store.read(conversation, user)
    assert read is not None and read.all_messages is not None
    return [(m.role, m.content, m.position, m.current) for m in read.all_messages]


def test_regenerate_makes_a_sibling_reply_and_the_model_sees_only_the_current_branch(store: ConversationStore) -> None:
    user, conversation = f"u-{uuid.uuid4()}", str(uuid.uuid4())
    _, first_reply = turn(store, conversation, user, "one", new=True)
    second, second_reply = turn(store, conversation, user, "two")
    assert (second.parent_id, second.depth) == (first_reply, 2)
    again, again_reply = turn(store, conversation, user, "", regenerate=second_reply, status="incomplete")
    assert again.regenerate and again.message == "two"
    assert again.history == [("user", "one"), ("assistant", "reply to one")]  # not the reply it replaces
    read = store.read(conversation, user)
    assert read is not None and read.messages is not None and read.all_messages is not None
    assert read.current_message_id == again_reply
    by_id = {m.id: m for m in read.all_messages}
    assert by_id[again_reply].parent_id == by_id[second_reply].parent_id == second.user_message_id
    assert by_id[again_reply].position == by_id[second_reply].position == 3
    assert by_id[again_reply].status == "incomplete"
    assert [m.content for m in read.messages] == ["one", "reply to one", "two", "reply to two again"]
    assert all(m.current for m in read.messages)
    assert not by_id[second_reply].current
    assert len(read.all_messages) == 5  # one user message "two", two replies to it
    assert store.history(conversation, user, 10) == [
        ("user", "one"),
        ("assistant", "reply to one"),
        ("user", "two"),
        ("assistant", "reply to two again"),
    ]
    assert store.history(conversation, user, 2) == [("user", "two"), ("assistant", "reply to two again")]
    assert store.history(conversation, user, 0) == []


def test_edit_makes_a_sibling_user_turn_even_of_the_first_message(store: ConversationStore) -> None:
    user, conversation = f"u-{uuid.uuid4()}", str(uuid.uuid4())
    first, _ = turn(store, conversation, user, "one", new=True)
    second, _ = turn(store, conversation, user, "two")
    edited, _ = turn(store, conversation, user, "two, better", edit=second.user_message_id)
    assert (edited.parent_id, edited.depth) == (second.parent_id, 2)
    assert edited.history == [("user", "one"), ("assistant", "reply to one")]
    root, _ = turn(store, conversation, user, "zero", edit=first.user_message_id)
    assert (root.parent_id, root.depth, root.history) == (None, 0, [])
    assert store.history(conversation, user, 10) == [("user", "zero"), ("assistant", "reply to zero")]
    assert [(role, content, current) for role, content, _, current in shape(store, conversation, user)] == [
        ("user", "one", False),
        ("user", "zero", True),
        ("assistant", "reply to one", False),
        ("assistant", "reply to zero", True),
        ("user", "two", False),
        ("user", "two, better", False),
        ("assistant", "reply to two", False),
        ("assistant", "reply to two, better", False),
    ]


def test_switching_branch_follows_the_newest_descendant(store: ConversationStore) -> None:
    user, conversation = f"u-{uuid.uuid4()}", str(uuid.uuid4())
    turn(store, conversation, user, "one", new=True)
    second, old_reply = turn(store, conversation, user, "two")
    _, deeper_reply = turn(store, conversation, user, "three")  # under the old reply
    _, new_reply = turn(store, conversation, user, "", regenerate=old_reply)
    assert store.history(conversation, user, 10)[-1] == ("assistant", "reply to two again")
    switched = store.switch_branch(conversation, user, old_reply)
    assert switched is not None and switched.messages is not None
    assert switched.current_message_id == deeper_reply  # the old branch as it was left, not just its reply
    assert [m.content for m in switched.messages][-2:] == ["three", "reply to three"]
    placement = store.placement(conversation, user, 10)
    assert placement is not None and (placement.parent_id, placement.depth) == (deeper_reply, 6)
    back = store.switch_branch(conversation, user, second.user_message_id)  # a common ancestor: its newest
    assert back is not None and back.current_message_id == new_reply
    assert store.switch_branch(conversation, f"other-{uuid.uuid4()}", old_reply) is None
    assert store.switch_branch(conversation, user, str(uuid.uuid4())) is None


def test_message_ids_are_checked_against_the_conversation_and_their_role(store: ConversationStore) -> None:
    user, conversation, elsewhere = f"u-{uuid.uuid4()}", str(uuid.uuid4()), str(uuid.uuid4())
    first, reply = turn(store, conversation, user, "one", new=True)
    other_first, other_reply = turn(store, elsewhere, user, "elsewhere", new=True)
    with pytest.raises(WrongRole) as wrong:
        store.placement(conversation, user, 10, regenerate_id=first.user_message_id)
    assert wrong.value.expected == "assistant"
    with pytest.raises(WrongRole) as wrong:
        store.placement(conversation, user, 10, edit_id=reply)
    assert wrong.value.expected == "user"
    assert store.placement(conversation, user, 10, regenerate_id=other_reply) is None  # another conversation's
    assert store.placement(conversation, user, 10, edit_id=other_first.user_message_id) is None
    assert store.placement(conversation, f"o-{uuid.uuid4()}", 10, regenerate_id=reply) is None  # another user's
    assert store.placement(conversation, user, 10, regenerate_id=str(uuid.uuid4())) is None


def test_records_that_name_no_place_go_after_the_current_message(store: ConversationStore) -> None:
    """Saves journaled by an older version carry no placement: they continue the current branch, in order."""
    user, conversation = f"u-{uuid.uuid4()}", str(uuid.uuid4())
    _, first_reply = turn(store, conversation, user, "one", new=True)
    _, old_reply = turn(store, conversation, user, "two")
    _, current = turn(store, conversation, user, "", regenerate=old_reply)
    store.save_exchanges(
        [
            ExchangeRecord(conversation, user, text, f"reply to {text}", str(uuid.uuid4()), "complete", "m", None, 1, 1)
            for text in ("three", "four")
        ]
    )
    read = store.read(conversation, user)
    assert read is not None and read.messages is not None
    assert [(m.content, m.position) for m in read.messages] == [
        ("one", 0),
        ("reply to one", 1),
        ("two", 2),
        ("reply to two again", 3),
        ("three", 4),
        ("reply to three", 5),
        ("four", 6),
        ("reply to four", 7),
    ]
    assert read.messages[4].parent_id == current
    assert read.messages[1].id == first_reply


def test_a_journaled_branch_is_replayed_in_its_place(store: ConversationStore, tmp_path: Path) -> None:
    """A regenerated reply saved while the database was away keeps its place through the journal's file."""
    user, conversation = f"u-{uuid.uuid4()}", str(uuid.uuid4())
    turn(store, conversation, user, "one", new=True)
    _, old_reply = turn(store, conversation, user, "two")
    placement = store.placement(conversation, user, 10, regenerate_id=old_reply)
    assert placement is not None
    reply_id = str(uuid.uuid4())
    item = ExchangeRecord(
        conversation,
        user,
        "two",
        "journaled",
        reply_id,
        "incomplete",
        "m",
        None,
        1,
        1,
        parent_id=placement.parent_id,
        depth=placement.depth,
        user_message_id=placement.user_message_id,
        regenerate=placement.regenerate,
    )
    folder = tmp_path / "journal"
    dying = SaveJournal(folder, store.database.url)
    dying.append(item, DatabaseUnavailable())
    dying.close()  # its worker is gone; the file stays for another to adopt
    adopter = SaveJournal(folder, store.database.url)
    try:
        assert [count for _, count in adopter.adopt()] == [1]
        assert adopter.replay(store).written == 1
    finally:
        adopter.close()
    read = store.read(conversation, user)
    assert read is not None and read.all_messages is not None
    by_id = {message.id: message for message in read.all_messages}
    assert len(by_id) == 5
    assert by_id[reply_id].parent_id == by_id[old_reply].parent_id and by_id[reply_id].position == 3
    assert read.current_message_id == reply_id
