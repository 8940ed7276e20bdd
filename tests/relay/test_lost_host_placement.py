"""A stream whose host dies is saved by another host from the mirror's record of its turn: a regenerated reply is
saved where its own host would have put it, beside the reply it replaces, not after the current message."""

from __future__ import annotations

import uuid
from pathlib import Path

from service.chat.events import Metadata
from service.chat.stream import ChatRequest, ChatStream
from service.llm.streaming import CompletionRequest
from service.relay.leases import _save
from service.relay.mirror import turn_of
from service.store.conversations import ConversationStore
from service.store.database import Database
from tests.fake_upstream import FakeUpstream
from tests.llm.test_streaming import service_for
from tests.store.test_branches import turn


def test_a_lost_regenerate_is_saved_as_a_sibling(upstream: FakeUpstream, tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'lost.sqlite3'}")
    database.create_tables()
    store = ConversationStore(database)
    user, conversation = "u", str(uuid.uuid4())
    turn(store, conversation, user, "one", new=True)
    _, old_reply = turn(store, conversation, user, "two")
    placement = store.placement(conversation, user, 10, regenerate_id=old_reply)
    assert placement is not None
    upstream_stream = service_for(upstream.base_url).open(
        CompletionRequest("m", [{"role": "user", "content": "two #tokens=2"}])
    )
    reply_id = str(uuid.uuid4())
    chat = ChatStream(
        Metadata("0" * 32, conversation, reply_id, "m"),
        ChatRequest(user, "two", conversation, regenerate_id=old_reply),
        upstream_stream,
        store,
        1,
        placement=placement,
    )
    record = turn_of(chat)  # what the mirror keeps in Redis: strings only
    assert all(isinstance(value, str) for value in record.values())
    upstream_stream.close()

    _save(store, record, "Baby", 1, None, 0)

    read = store.read(conversation, user)
    assert read is not None and read.all_messages is not None and read.messages is not None
    by_id = {message.id: message for message in read.all_messages}
    assert len(by_id) == 5  # no second user message
    assert by_id[reply_id].parent_id == by_id[old_reply].parent_id == placement.user_message_id
    assert (by_id[reply_id].position, by_id[reply_id].status) == (3, "incomplete")
    assert read.current_message_id == reply_id
    database.dispose()
