"""The save journal against a real SQLite database that goes away (its file is moved aside) and comes back."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from service.errors import DatabaseUnavailable
from service.store.conversations import ConversationStore, ExchangeRecord
from service.store.database import Database
from service.store.journal import SaveJournal, Tally, main
from service.store.models import Usage, utcnow
from tests.store.test_database import record

AWAY = DatabaseUnavailable()


class Outage:
    """A SQLite database that can be moved aside, a folder in its place (no connection can open it), and back."""

    def __init__(self, tmp_path: Path) -> None:
        self.file = tmp_path / "db" / "chat.sqlite3"
        self.aside = tmp_path / "aside"
        self.url = f"sqlite:///{self.file}"
        self.database = Database(self.url)
        self.database.create_tables()

    def begin(self) -> None:
        self.database.dispose()  # the kept connection would still reach the moved file
        self.aside.mkdir()
        for path in self.file.parent.glob(self.file.name + "*"):
            path.rename(self.aside / path.name)
        self.file.mkdir()

    def end(self) -> None:
        self.file.rmdir()
        for path in self.aside.iterdir():
            path.rename(self.file.parent / path.name)
        self.aside.rmdir()


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[Outage]:
    found = Outage(tmp_path)
    yield found
    found.database.dispose()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "journal"


@pytest.fixture
def journal(outage: Outage, folder: Path) -> Iterator[SaveJournal]:
    kept = SaveJournal(folder, outage.url)
    yield kept
    kept.close()


def fresh(user: str, text: str) -> ExchangeRecord:
    return dataclasses.replace(record(str(uuid.uuid4()), user, text), new_conversation=True)


def journal_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("saves-*.jsonl"))


def contents(store: ConversationStore, item: ExchangeRecord) -> list[tuple[str, str, str]]:
    found = store.read(item.conversation_id, item.user_id)
    assert found is not None and found.messages is not None
    return [(message.id, message.role, message.content) for message in found.messages]


def test_a_save_the_database_cannot_take_is_on_disk_at_once_and_written_when_it_is_back(
    outage: Outage, journal: SaveJournal, folder: Path
) -> None:
    store = ConversationStore(outage.database, journal)
    item = fresh(f"u-{uuid.uuid4()}", "saved during an outage")
    outage.begin()
    store.save_exchange(item)  # returns: the record is journaled, not lost
    [path] = journal_files(folder)
    [line] = path.read_bytes().splitlines()
    assert orjson.loads(line)["reply_id"] == item.reply_id
    with pytest.raises(DatabaseUnavailable) as refused:
        store.read(item.conversation_id, item.user_id)
    assert (refused.value.status, refused.value.code, refused.value.retryable) == (503, "database_unavailable", True)
    assert refused.value.headers["Retry-After"]

    assert journal.replay(store) == Tally()  # still away: nothing written, nothing dropped
    assert journal.pending and path.exists()
    outage.end()
    time.sleep(0.05)
    back = utcnow()
    assert journal.replay(store) == Tally(written=1)
    assert [row[1:] for row in contents(store, item)] == [("user", item.user_message), ("assistant", item.reply)]
    conversation = store.read(item.conversation_id, item.user_id)
    assert conversation is not None and conversation.messages is not None
    assert conversation.messages[1].created_at.replace(tzinfo=None) < back.replace(tzinfo=None)  # when it ended
    assert journal_files(folder) == [] and journal.pending == []


def test_replay_writes_each_reply_once(outage: Outage, journal: SaveJournal) -> None:
    store = ConversationStore(outage.database, journal)
    user = f"u-{uuid.uuid4()}"
    landed, missing = fresh(user, "its slow write landed"), fresh(user, "never written")
    store.save_exchanges([landed])
    for item in (landed, missing, missing):
        journal.append(item, AWAY)
    assert journal.replay(store) == Tally(written=1, stored=2)
    assert len(contents(store, landed)) == 2
    assert [row[0] for row in contents(store, missing)][1] == missing.reply_id
    journal.append(missing, AWAY)
    assert journal.replay(store) == Tally(stored=1)
    assert len(contents(store, missing)) == 2


def test_a_record_the_database_refuses_is_set_aside_and_holds_back_no_other(
    outage: Outage, journal: SaveJournal, folder: Path
) -> None:
    store = ConversationStore(outage.database, journal)
    user = f"u-{uuid.uuid4()}"
    taken = fresh(user, "first")
    store.save_exchanges([taken])
    clash = dataclasses.replace(fresh(user, "clash"), conversation_id=taken.conversation_id)  # created twice
    before, after = fresh(user, "before"), fresh(user, "after")
    for item in (before, clash, after):
        journal.append(item, AWAY)
    assert journal.replay(store) == Tally(written=2, refused=1)
    assert len(contents(store, before)) == len(contents(store, after)) == 2
    [line] = (folder / f"rejected-{journal.key}.jsonl").read_bytes().splitlines()
    assert orjson.loads(line)["reply_id"] == clash.reply_id
    assert journal_files(folder) == []


def test_a_gone_workers_file_is_adopted_and_a_living_ones_is_left(outage: Outage, folder: Path) -> None:
    store = ConversationStore(outage.database, SaveJournal(folder, outage.url))
    user = f"u-{uuid.uuid4()}"
    first, second = fresh(user, "one"), fresh(user, "two")
    worker = SaveJournal(folder, outage.url)
    worker.append(first, AWAY)
    worker.append(second, AWAY)
    other_database = folder / "saves-00000000-elsewhere-1-0.jsonl"
    other_database.write_bytes(orjson.dumps(fresh(user, "not ours")) + b"\n")
    adopter = SaveJournal(folder, outage.url)
    try:
        assert adopter.adopt() == []  # its worker holds it
        path = worker.path
        assert path is not None
        worker.close()  # the worker is gone; its records are not stored yet, so its file stays
        with path.open("ab") as torn:
            torn.write(b'{"conversation_id": "cut sh')  # it died in the middle of a write
        assert adopter.adopt() == [(path, 2)]
        assert not path.exists() and other_database.exists()
        assert [item.reply_id for item in adopter.pending] == [first.reply_id, second.reply_id]
        assert adopter.replay(store) == Tally(written=2)
        assert contents(store, first)[1][2] == first.reply
        assert journal_files(folder) == [other_database]
    finally:
        adopter.close()


def test_the_command_writes_what_no_worker_holds(
    outage: Outage, folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", outage.url)
    store = ConversationStore(outage.database, SaveJournal(folder, outage.url))
    assert main(["--dir", str(folder)]) == 0
    assert "nothing to write" in capsys.readouterr().out

    user = f"u-{uuid.uuid4()}"
    items = [fresh(user, f"journaled {n}") for n in range(3)]
    gone = SaveJournal(folder, outage.url)
    for item in items:
        gone.append(item, AWAY)
    gone.close()
    living = SaveJournal(folder, outage.url)
    living.append(fresh(user, "a running worker's"), AWAY)
    try:
        outage.begin()
        assert main(["--dir", str(folder)]) == 1
        out = capsys.readouterr().out
        assert "database unavailable" in out and "3 saves stay journaled" in out
        assert "held by running workers, which write them themselves: 1" in out
        outage.end()
        assert main(["--dir", str(folder)]) == 0
        assert "3 written, 0 already stored" in capsys.readouterr().out
        for item in items:
            assert len(contents(store, item)) == 2
        assert journal_files(folder) == [living.path]

        clash = dataclasses.replace(fresh(user, "clash"), conversation_id=items[0].conversation_id)
        refused = SaveJournal(folder, outage.url)
        refused.append(clash, AWAY)
        refused.close()
        assert main(["--dir", str(folder)]) == 3
        assert "1 refused and set aside" in capsys.readouterr().out
    finally:
        living.close()


def test_a_journaled_reply_keeps_its_reasoning_and_reasoning_tokens(outage: Outage, journal: SaveJournal) -> None:
    store = ConversationStore(outage.database, journal)
    item = dataclasses.replace(
        fresh(f"u-{uuid.uuid4()}", "a reasoning reply saved during an outage"),
        reasoning="Let me think\n😀 about it",
        reasoning_tokens=7,
    )
    outage.begin()
    store.save_exchange(item)  # on disk, reasoning and all
    outage.end()
    assert journal.replay(store) == Tally(written=1)
    found = store.read(item.conversation_id, item.user_id)
    assert found is not None and found.messages is not None
    assert [(message.content, message.reasoning) for message in found.messages] == [
        (item.user_message, None),
        (item.reply, "Let me think\n😀 about it"),
    ]
    query = select(Usage.reasoning_tokens).where(Usage.message_id == item.reply_id)
    assert store.database.statements(lambda connection: connection.execute(query).scalar_one()) == 7
