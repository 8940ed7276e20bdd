"""The save journal: exchanges the database could not take, kept on local disk until it can.

Why: a reply the user was shown must not be lost because the database was away, or slow, when its stream ended,
and the stream's ``done`` must not wait for the database to come back. ``ConversationStore.save_exchange`` appends
such a record here; it is on disk (fsynced, on a native thread so the hub keeps serving) before the call returns,
so before ``done`` is sent.

Each worker appends JSON lines to a file of its own, ``saves-<database>-<host>-<pid>-<random>.jsonl``, which it
holds locked (``flock``) while it lives; ``<database>`` is a digest of where the database is, so a folder shared by
services on different databases never replays into the wrong one. A file nobody holds belongs to a worker that is
gone: any worker adopts it (its records join the adopter's file, then it is removed), as does the command below.

Writing a record twice is harmless: the assistant message's primary key is the record's reply id, so a record
whose reply is already stored (its slow write landed after all, or another replayer was first) is dropped. A
record the database refuses for good (a constraint, a value too long) is set aside in ``rejected-<database>.jsonl``
and logged, so it cannot hold back the ones behind it.

A journal that cannot be written (its disk is full too: by default it sits beside the SQLite file, on the same
disk) does not lose the record either: it is kept in the worker's memory, with an error logged, and written to the
database with the others once it answers. Only those records die with their worker; ``SAVE_JOURNAL_DIR`` on another
disk keeps them on disk.

Each worker's replayer greenlet retries its own records every ``RETRY_SECONDS`` while it has some, in order, and
removes its file once all are stored; it looks for the files of dead workers when it starts and every
``SCAN_SECONDS``. With nothing journaled it neither queries the database nor lists the folder more often than that.

By hand, with the service's ``DATABASE_URL`` (prints what it wrote; exit 0 when everything is written, 1 while the
database is still away, 3 when some records were refused and set aside)::

    DATABASE_URL=... .venv/bin/python -m service.store.journal [--dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import gevent
import orjson
from gevent.event import Event
from sqlalchemy import make_url
from sqlalchemy.exc import DataError, IntegrityError

from service.errors import DatabaseUnavailable
from service.store.conversations import ConversationStore, ExchangeRecord
from service.store.models import utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_SECONDS = 1.5
SCAN_SECONDS = 30.0
BATCH = 200  # records per replay transaction
INSTANCE = Path(__file__).resolve().parents[2] / "instance"  # the standalone app's instance folder
_FIELDS = frozenset(field.name for field in dataclasses.fields(ExchangeRecord))
_REFUSED = (IntegrityError, DataError)  # this record, not the database: retrying cannot help


def default_folder(database_url: str, instance: Path = INSTANCE) -> Path:
    """``journal`` beside a SQLite file (the default database lives in the instance folder), else in the
    instance folder."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(url.database or "").resolve().parent / "journal"
    return instance / "journal"


def database_key(database_url: str) -> str:
    """Where the database is (never its password), as 8 hex digits for file names."""
    url = make_url(database_url)
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        database = str(Path(database).resolve())
    where = f"{url.get_backend_name()}://{url.host or ''}:{url.port or ''}/{database}"
    return hashlib.sha256(where.encode()).hexdigest()[:8]


@dataclass
class Tally:
    """What a replay did with the records it was given."""

    written: int = 0
    stored: int = 0  # their reply was already in the database: dropped
    refused: int = 0  # set aside in the rejected file

    def add(self, other: Tally) -> None:
        self.written += other.written
        self.stored += other.stored
        self.refused += other.refused

    def __str__(self) -> str:
        text = f"{self.written} written, {self.stored} already stored"
        return text + (f", {self.refused} refused and set aside" if self.refused else "")


def write_once(store: ConversationStore, records: list[ExchangeRecord]) -> tuple[Tally, list[ExchangeRecord]]:
    """Write, in order, the records whose reply is not stored yet: the tally, and the records the database refused.
    Raises ``DatabaseUnavailable`` while it is away (what was written by then is found stored next time) and any
    error that is not about one record (a missing table), so the records stay journaled."""
    tally = Tally()
    refused: list[ExchangeRecord] = []
    seen = store.stored_replies([record.reply_id for record in records])
    todo: list[ExchangeRecord] = []
    for record in records:
        if record.reply_id in seen:
            tally.stored += 1
        else:
            seen.add(record.reply_id)  # the same record twice in a journal is written once
            todo.append(record)
    if not todo:
        return tally, refused
    try:
        store.save_exchanges(todo)
    except _REFUSED:  # one record refused, or landed meanwhile: the others must not wait on it
        for record in todo:
            try:
                store.save_exchanges([record])
            except _REFUSED as error:
                if store.stored_replies([record.reply_id]):
                    tally.stored += 1
                else:
                    log.error("the database refused journaled reply %s: %s", record.reply_id, _first_line(error))
                    refused.append(record)
            else:
                tally.written += 1
    else:
        tally.written += len(todo)
    tally.refused = len(refused)
    return tally, refused


class SaveJournal:
    """This process's journal file and the records in it not yet stored (``pending``, oldest first)."""

    def __init__(self, folder: Path, database_url: str, cooperative: bool = False) -> None:
        self.folder = folder
        self.key = database_key(database_url)
        self.prefix = f"saves-{self.key}-"
        self.cooperative = cooperative  # under gevent: disk flushes go to a native thread
        self.pending: list[ExchangeRecord] = []
        self.path: Path | None = None
        self._fd: int | None = None
        self._writing = 0  # appends between their write and their fsync: the file must stay until they are done
        self._folder_synced = False
        self._appended: Event | None = None  # the replayer's wake-up, once it runs
        self.away = False  # journaling since the last replay that emptied the journal
        self.replayed = Tally()  # since then
        self.problem: str | None = None  # why the last replay stopped short (an unexpected one is logged once)
        self.in_memory = 0  # records its disk refused, held in ``pending`` only, since the last emptying replay

    def append(self, record: ExchangeRecord, reason: BaseException) -> None:
        """Keep ``record`` on disk (fsynced before this returns), or in memory when the disk refuses it, until
        ``replay`` writes it; ``reason`` is why the database did not take it."""
        if record.ended_at is None:
            record = dataclasses.replace(record, ended_at=utcnow())
        try:
            self._write([record])
        except OSError as error:  # the journal's own disk is full (or gone): memory is what is left
            self._keep_in_memory(record, error)
        if not self.away:
            self.away = True
            why = _first_line(reason.__cause__ or reason)
            log.warning("database unavailable (%s): journaling saves in %s", why, self.path or self.folder)
        if self._appended is not None:
            self._appended.set()

    def _keep_in_memory(self, record: ExchangeRecord, error: OSError) -> None:
        if not any(item is record for item in self.pending):  # a failed fsync leaves it there already
            self.pending.append(record)
        self.in_memory += 1
        if self.in_memory == 1:
            log.error(
                "the save journal cannot be written in %s (%s): saves are kept in this worker's memory until the "
                "database takes them",
                self.folder,
                _first_line(error),
            )

    def replay(self, store: ConversationStore) -> Tally:
        """Write the pending records, oldest first, until none is left or the database stops answering; the file
        is removed once all are stored."""
        tally = Tally()
        while self.pending:
            batch = self.pending[:BATCH]
            try:
                done, refused = write_once(store, batch)
            except DatabaseUnavailable as error:
                self.problem = f"database unavailable: {_first_line(error.__cause__ or error)}"
                return tally
            except Exception as error:
                if self.problem != (problem := _first_line(error)):
                    log.exception("journaled saves cannot be written; they stay in %s", self.path)
                self.problem = problem
                return tally
            self.problem = None
            del self.pending[: len(batch)]  # only this removes records, and only from the front
            tally.add(done)
            self.replayed.add(done)
            if refused:
                self._set_aside(refused)
        if self.away or self.replayed.written or self.replayed.refused:
            log.warning("%sjournaled saves replayed: %s", "database back: " if self.away else "", self.replayed)
        self.away, self.replayed, self.in_memory = False, Tally(), 0
        self._release()
        return tally

    def adopt(self) -> list[tuple[Path, int]]:
        """Take the records of every journal file of this database that no living process holds into this
        journal (on disk before their file is removed): each file taken, with its record count."""
        taken: list[tuple[Path, int]] = []
        if not self.folder.is_dir():
            return taken
        for path in sorted(self.folder.glob(self.prefix + "*.jsonl")):
            if path != self.path:
                count = self._adopt(path)
                if count is not None:
                    taken.append((path, count))
        if taken:
            log.warning("adopted %d journaled saves from %d files of workers that are gone", _sum(taken), len(taken))
        return taken

    def held_files(self) -> list[Path]:
        """Journal files of this database that a living process holds (it replays them itself)."""
        if not self.folder.is_dir():
            return []
        return [path for path in sorted(self.folder.glob(self.prefix + "*.jsonl")) if path != self.path]

    def start(self, store: ConversationStore) -> None:
        """Replay in a greenlet of this worker (under gevent only)."""
        self._appended = Event()
        gevent.spawn(self._run, store, self._appended)

    def close(self) -> None:
        """Let go of this process's file: removed when everything in it is stored, else left to be adopted."""
        if self._fd is not None:
            if self.path is not None and not self.pending and not self._writing:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = self.path = None

    def _run(self, store: ConversationStore, appended: Event) -> None:
        next_scan = 0.0
        while True:
            try:
                if time.monotonic() >= next_scan:
                    self.adopt()
                    self._release()
                    next_scan = time.monotonic() + SCAN_SECONDS
                if self.pending:
                    self.replay(store)
            except Exception:  # the disk: this greenlet must outlive it
                log.exception("the save journal's replayer failed; retrying")
            if not self.pending:
                appended.clear()
                appended.wait(max(0.0, next_scan - time.monotonic()))
            gevent.sleep(RETRY_SECONDS)  # the database just failed a save: no use asking again at once

    def _write(self, records: list[ExchangeRecord]) -> None:
        data = b"".join(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE) for record in records)
        self._writing += 1
        try:
            fd = self._file()
            _append(fd, data)
            self.pending.extend(records)  # in the file's order
            self._off_hub(os.fsync, fd)
            if not self._folder_synced:  # the new file's name must survive a crash as well as its bytes
                self._off_hub(_fsync_folder, self.folder)
                self._folder_synced = True
        finally:
            self._writing -= 1

    def _file(self) -> int:
        if self._fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{self.prefix}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
            path = self.folder / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
            self._fd, self.path, self._folder_synced = fd, path, False
        return self._fd

    def _release(self) -> None:
        """Remove this process's file once everything in it is stored; the next append makes a new one."""
        if self._fd is not None and not self.pending and not self._writing:
            self.close()

    def _adopt(self, path: Path) -> int | None:
        """Adopt one file, if nobody holds it: its record count, or None."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # its worker is alive
            try:
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    return None
            except FileNotFoundError:
                return None  # adopted and removed by another process while this one waited for the lock
            records = _read(path)
            if records:
                self._write(records)
            path.unlink()
            return len(records)
        finally:
            os.close(fd)

    def _set_aside(self, records: list[ExchangeRecord]) -> None:
        path = self.folder / f"rejected-{self.key}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # shared by every process: one appends at a time
            _append(fd, b"".join(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE) for record in records))
            self._off_hub(os.fsync, fd)
        finally:
            os.close(fd)
        log.error("%d journaled saves refused by the database are set aside in %s", len(records), path)

    def _off_hub(self, work: Callable[[T], None], argument: T) -> None:
        """A disk flush waits on the device: under gevent it waits on a native thread while the hub serves."""
        if self.cooperative:
            gevent.get_hub().threadpool.apply(work, (argument,))
        else:
            work(argument)


def _append(fd: int, data: bytes) -> None:
    """All of ``data`` or none of it: a line cut short (a full disk) would spoil the next one too."""
    size = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        os.ftruncate(fd, size)
        raise


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> list[ExchangeRecord]:
    """A journal file's records; a line its writer did not finish (it died mid-write) is skipped."""
    records: list[ExchangeRecord] = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            records.append(_record(orjson.loads(line)))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            log.warning("%s: skipped a line that is not a whole record", path.name)
    return records


def _record(fields: dict[str, Any]) -> ExchangeRecord:
    known = {name: value for name, value in fields.items() if name in _FIELDS}
    if isinstance(known.get("ended_at"), str):
        known["ended_at"] = datetime.fromisoformat(known["ended_at"])
    return ExchangeRecord(**known)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _sum(taken: list[tuple[Path, int]]) -> int:
    return sum(count for _, count in taken)


def main(argv: list[str] | None = None) -> int:
    from service.config import Settings
    from service.store.database import Database

    parser = argparse.ArgumentParser(
        prog="python -m service.store.journal",
        description="Write the journaled saves that no running worker holds (run it with the service's DATABASE_URL).",
    )
    parser.add_argument("--dir", type=Path, help="the journal folder (default: SAVE_JOURNAL_DIR, as the service)")
    args = parser.parse_args(argv)
    url = os.environ.get("DATABASE_URL")
    if not url:
        parser.error("set DATABASE_URL to the database the service saves to")
    configured = Settings.from_env().save_journal_dir
    folder = args.dir or (Path(configured) if configured else default_folder(url))
    journal = SaveJournal(folder, url)
    database = Database(url)
    try:
        taken = journal.adopt()
        for path, count in taken:
            print(f"{path.name}: {count} journaled saves")
        held = journal.held_files()
        if held:
            print(f"journal files held by running workers, which write them themselves: {len(held)}")
        if not journal.pending:
            print(f"nothing to write in {folder}")
            return 0
        tally = journal.replay(ConversationStore(database, journal))
        print(tally)
        if journal.pending:
            print(f"{journal.problem}: {len(journal.pending)} saves stay journaled in {journal.path}")
            return 1
        return 3 if tally.refused else 0
    finally:
        journal.close()
        database.dispose()


if __name__ == "__main__":
    sys.exit(main())
