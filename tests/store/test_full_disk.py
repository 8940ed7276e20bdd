"""SQLite on a disk that is really full: a small tmpfs of the test's own holds the database, and a file fills it.

Through real gunicorn (gevent worker): a reply that ends while the disk is full still ends with ``done``, the
database refuses its save (``database or disk is full``, logged), the save goes to the journal (or, when the
journal sits on that same full disk, the worker's memory), a write asked for meanwhile gets a retryable 503, the
database file stays sound, and once space is freed the reply is stored, once.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import _server_env
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer
from tests.sse import Received, stream

CONVERSATIONS = "/api/v1/ai/conversations"
BIG_REPLY = "#big=300000 #tokens=3"  # far more than any slack left in the database's files


class SmallDisk:
    """A 4 MB tmpfs mounted on ``folder``; ``fill()`` takes every byte left, ``free()`` gives them back."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.filler = folder / "filler"

    def mount(self) -> bool:
        self.folder.mkdir(parents=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.folder)], capture_output=True)
        self.mount_error = done.stderr.decode(errors="replace").strip()
        return done.returncode == 0

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 1):
                block = b"\0" * size
                try:
                    while True:
                        os.write(fd, block)
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
        finally:
            os.close(fd)
        assert shutil.disk_usage(self.folder).free == 0

    def free(self) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        """Unmount; a file still held open there (a leak) fails the test, after a lazy unmount cleans up."""
        done = subprocess.run(["umount", str(self.folder)], capture_output=True)
        if done.returncode != 0:
            subprocess.run(["umount", "--lazy", str(self.folder)], check=True)
            raise AssertionError(f"the small disk was still in use: {done.stderr.decode(errors='replace')}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk")
    if not disk.mount():
        pytest.skip(f"a full disk needs a small filesystem of the test's own, and mount failed: {disk.mount_error}")
    try:
        yield disk
    finally:
        disk.unmount()


def integrity(database: Path) -> list[tuple[Any, ...]]:
    """``PRAGMA integrity_check`` through a read-only connection of another process's (the service holds the file)."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        return connection.execute("PRAGMA integrity_check").fetchall()


def conversation(server: GunicornServer, events: list[Received]) -> httpx.Response:
    return httpx.get(f"{server.url}{CONVERSATIONS}/{events[0].data['conversationId']}", timeout=10)


def reply_text(events: list[Received]) -> str:
    return "".join(event.data["content"] for event in events if event.type == "token")


def eventually(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def full_log(server: GunicornServer) -> str:
    return server.log_path.read_text(errors="replace")


def journaled_replies(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {
        orjson.loads(line)["reply_id"]
        for path in folder.glob("saves-*.jsonl")
        for line in path.read_bytes().splitlines()
        if line.strip()
    }


@pytest.mark.parametrize("journal_on", ["another_disk", "the_full_disk"])
def test_replies_ending_on_a_full_disk_are_kept_and_stored_once_space_is_freed(
    small_disk: SmallDisk, upstream: FakeUpstream, tmp_path: Path, journal_on: str
) -> None:
    """``another_disk``: ``SAVE_JOURNAL_DIR`` elsewhere, the saves are on disk in the journal meanwhile.
    ``the_full_disk``: the default journal folder, beside the database, is full too; the saves wait in the
    worker's memory, and the log says so."""
    database = small_disk.folder / "chat.sqlite3"
    journal = tmp_path / "journal" if journal_on == "another_disk" else small_disk.folder / "journal"
    env = _server_env(upstream, f"sqlite:///{database}")
    if journal_on == "another_disk":
        env["SAVE_JOURNAL_DIR"] = str(journal)
    server = GunicornServer(env, tmp_path / "gunicorn.log").start()
    try:
        before = stream(server.url, {"message": f"before the disk fills ({journal_on}) #tokens=3"})
        assert conversation(server, before).status_code == 200
        small_disk.fill()

        first_message = f"a new one on a full disk ({journal_on}) {BIG_REPLY}"
        new = stream(server.url, {"message": first_message})
        follow_up = {"message": f"a follow-up on a full disk ({journal_on}) {BIG_REPLY}"}
        continued = stream(server.url, {**follow_up, "conversationId": before[0].data["conversationId"]})
        for events in (new, continued):
            assert events[-1].type == "done"
            assert len(reply_text(events)) > 300_000
        assert conversation(server, new).status_code == 404  # really not stored while the disk is full
        refused = httpx.delete(f"{server.url}{CONVERSATIONS}/{before[0].data['conversationId']}", timeout=10)
        assert refused.status_code == 503, refused.text  # a write asked for now: a clear, retryable refusal
        assert refused.json()["error"]["code"] == "database_unavailable"
        assert int(refused.headers["Retry-After"]) >= 1
        assert "database or disk is full" in full_log(server)
        reply_ids = {new[0].data["messageId"], continued[0].data["messageId"]}
        if journal_on == "another_disk":
            assert journaled_replies(journal) == reply_ids
        else:
            assert journaled_replies(journal) == set()
        assert integrity(database) == [("ok",)]

        small_disk.free()
        assert eventually(lambda: conversation(server, new).status_code == 200, 10), server.log()
        assert eventually(lambda: len(conversation(server, before).json()["messages"]) == 4, 10)
        assert [(item["role"], item["content"]) for item in conversation(server, new).json()["messages"]] == [
            ("user", first_message),
            ("assistant", reply_text(new)),
        ]
        followed = conversation(server, before).json()["messages"]
        assert [item["content"] for item in followed[2:]] == [follow_up["message"], reply_text(continued)]
        assert eventually(lambda: journaled_replies(journal) == set(), 5)
        if journal_on == "the_full_disk":
            assert "the save journal cannot be written" in full_log(server)
            assert "kept in this worker's memory" in full_log(server)
        assert integrity(database) == [("ok",)]
    finally:
        server.stop()
