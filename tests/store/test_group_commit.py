"""Group commit: saves that arrive together share a transaction, and none is lost or mixed up."""

from __future__ import annotations

import dataclasses
import time
import uuid

import gevent
import pytest
from sqlalchemy import select

from service.store.conversations import ConversationStore
from service.store.group_commit import GroupCommit, WriteTimedOut
from service.store.models import Usage
from tests.store.test_database import record, store  # noqa: F401 - the store fixture (SQLite and PostgreSQL)


def test_a_lone_write_goes_at_once_and_a_queue_shares_the_next_commit() -> None:
    batches: list[list[int]] = []
    group: GroupCommit[int] = GroupCommit(lambda items: (gevent.sleep(0.05), batches.append(items)))
    group.submit(-1)
    assert batches == [[-1]]  # alone: written at once, no timer
    writers = [gevent.spawn(group.submit, number) for number in range(20)]
    gevent.joinall(writers, timeout=5, raise_error=True)
    assert all(writer.successful() for writer in writers)
    assert [item for batch in batches[1:] for item in batch] == list(range(20))
    assert len(batches) <= 3  # those that arrive together share commits


def test_one_bad_item_fails_alone_and_the_others_are_written() -> None:
    written: list[int] = []

    def write_many(items: list[int]) -> None:
        gevent.sleep(0.01)
        if 13 in items:
            raise ValueError("bad batch")
        written.extend(items)

    group: GroupCommit[int] = GroupCommit(write_many)  # a lone 13 fails too: in a batch of its own
    writers = [gevent.spawn(group.submit, number) for number in range(20)]
    gevent.joinall(writers, timeout=5)
    failed = [number for number, writer in enumerate(writers) if not writer.successful()]
    assert failed == [13]
    assert isinstance(writers[13].exception, ValueError)
    assert sorted(written) == [number for number in range(20) if number != 13]


def test_a_killed_writer_fails_its_waiters_instead_of_hanging() -> None:
    group: GroupCommit[int] = GroupCommit(lambda items: gevent.sleep(10))
    writers = [gevent.spawn(group.submit, number) for number in range(3)]
    gevent.sleep(0.05)
    assert group.writer is not None
    group.writer.kill()
    gevent.joinall(writers, timeout=2)
    assert all(writer.ready() and isinstance(writer.exception, RuntimeError) for writer in writers)


def test_exchanges_saved_together_keep_their_order_and_owners(store: ConversationStore) -> None:  # noqa: F811
    store.group = GroupCommit(store.save_exchanges)
    user = f"u-{uuid.uuid4()}"
    shared = str(uuid.uuid4())
    store.save_exchange(record(shared, user, "first"))
    fresh = [dataclasses.replace(record(str(uuid.uuid4()), user, f"new {n}"), new_conversation=True) for n in range(10)]
    follow_ups = [record(shared, user, f"then {n}") for n in range(3)]
    writers = [gevent.spawn(store.save_exchange, item) for item in [*fresh, *follow_ups]]
    gevent.joinall(writers, timeout=10, raise_error=True)
    for item in fresh:
        read = store.read(item.conversation_id, user)
        assert read is not None
        assert [m.content for m in read.messages or []] == [item.user_message, item.reply]
    read = store.read(shared, user)
    assert read is not None
    contents = [m.content for m in read.messages or []]
    assert contents[:2] == ["first", "reply to first"]
    assert sorted(contents[2:]) == sorted(text for n in range(3) for text in (f"then {n}", f"reply to then {n}"))
    for index in range(2, len(contents), 2):  # each question is followed by its own reply
        assert contents[index + 1] == f"reply to {contents[index]}"


@pytest.mark.parametrize("count", [1, 40])
def test_a_failed_batch_still_saves_the_good_exchanges(store: ConversationStore, count: int) -> None:  # noqa: F811
    store.group = GroupCommit(store.save_exchanges)
    user = f"u-{uuid.uuid4()}"
    good = [
        dataclasses.replace(record(str(uuid.uuid4()), user, f"ok {n}"), new_conversation=True) for n in range(count)
    ]
    clash = dataclasses.replace(good[0], reply_id=good[0].reply_id, conversation_id=str(uuid.uuid4()))
    writers = [gevent.spawn(store.save_exchange, item) for item in [*good, clash]]  # same reply id twice: refused
    gevent.joinall(writers, timeout=10)
    assert [writer.successful() for writer in writers] == [True] * count + [False]
    for item in good:
        assert store.read(item.conversation_id, user) is not None


def test_a_write_that_takes_too_long_times_out_and_a_queued_one_is_taken_back() -> None:
    written: list[list[int]] = []
    group: GroupCommit[int] = GroupCommit(lambda items: (gevent.sleep(0.3), written.append(items)))
    under_way = gevent.spawn(group.submit, 1, 0.1)
    gevent.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(WriteTimedOut) as queued:
        group.submit(2, 0.1)  # behind a transaction that holds the writer for 0.3 s
    assert time.monotonic() - started < 0.2
    assert queued.value.may_land is False
    under_way.join(1)
    assert isinstance(under_way.exception, WriteTimedOut) and under_way.exception.may_land is True
    gevent.sleep(0.5)
    assert written == [[1]]  # the one under way landed after all; the one taken back never will


def test_an_outage_fails_a_batch_at_once_instead_of_item_by_item() -> None:
    calls: list[list[int]] = []

    def write_many(items: list[int]) -> None:
        calls.append(items)
        gevent.sleep(0.01)
        raise ConnectionError("the database is away")

    group: GroupCommit[int] = GroupCommit(write_many, item_by_item=lambda error: False)
    writers = [gevent.spawn(group.submit, number) for number in range(5)]
    gevent.joinall(writers, timeout=5)
    assert all(isinstance(writer.exception, ConnectionError) for writer in writers)
    assert calls == [[0, 1, 2, 3, 4]]  # one try for the batch, not one more per item


def test_a_database_that_keeps_committing_is_waited_for_behind_a_queue() -> None:
    """A burst: each transaction takes most of the wait allowed, the queue more than all of it. Nothing is stuck,
    so nothing times out (the journal is for a database that does not answer, not for a busy worker)."""
    written: list[list[int]] = []
    group: GroupCommit[int] = GroupCommit(lambda items: (gevent.sleep(0.08), written.append(items)))
    first = gevent.spawn(group.submit, 0, 0.1)
    gevent.sleep(0.001)
    queued = [gevent.spawn(group.submit, number, 0.1) for number in range(1, 10)]
    third = gevent.spawn_later(0.1, group.submit, 10, 0.1)  # waits behind the second transaction
    gevent.joinall([first, *queued, third], timeout=5)
    assert [writer.exception for writer in (first, *queued, third)] == [None] * 11
    assert written == [[0], list(range(1, 10)), [10]]


def test_reasoning_is_saved_apart_in_a_group_commit(store: ConversationStore) -> None:  # noqa: F811
    store.group = GroupCommit(store.save_exchanges)
    user = f"u-{uuid.uuid4()}"
    thinking = [
        dataclasses.replace(
            record(str(uuid.uuid4()), user, f"q {n}"), new_conversation=True, reasoning=f"why {n}", reasoning_tokens=n
        )
        for n in range(1, 6)
    ]
    plain = dataclasses.replace(record(str(uuid.uuid4()), user, "plain"), new_conversation=True)
    writers = [gevent.spawn(store.save_exchange, item) for item in [*thinking, plain]]
    gevent.joinall(writers, timeout=10, raise_error=True)
    for item in [*thinking, plain]:
        read = store.read(item.conversation_id, user)
        assert read is not None and read.messages is not None
        assert [(m.content, m.reasoning) for m in read.messages] == [
            (item.user_message, None),
            (item.reply, item.reasoning),
        ]
        query = select(Usage.reasoning_tokens).where(Usage.message_id == item.reply_id)
        tokens = store.database.statements(lambda connection, query=query: connection.execute(query).scalar_one())
        assert tokens == item.reasoning_tokens
    assert plain.reasoning is None and plain.reasoning_tokens is None
