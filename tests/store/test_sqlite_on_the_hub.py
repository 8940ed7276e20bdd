"""SQLite under gevent: units of work run on the hub while the file is free, on the database thread when another
connection holds its lock (never stalling the hub meanwhile), and the WAL is checkpointed on the thread.

Each test runs a small script under gevent's monkey patching in a process of its own, as a gunicorn worker is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

COMMON = """
from gevent import monkey
monkey.patch_all()
import json, sqlite3, sys, time
import gevent
from sqlalchemy import text
from service.store.database import CHECKPOINT_EVERY, Database

real_thread_id = monkey.get_original("threading", "get_ident")
path = sys.argv[1]
database = Database(f"sqlite:///{path}")
database.create_tables()
database.statements(lambda c: c.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")))

def write(body):
    def work(connection):
        connection.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
        return real_thread_id()
    return database.statements(work)
"""

LOCKED = (
    COMMON
    + """
hub = real_thread_id()
free = write("while free")
locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
locker.execute("BEGIN EXCLUSIVE")
ticks = []
def tick():
    while True:
        ticks.append(time.monotonic())
        gevent.sleep(0.01)
ticker = gevent.spawn(tick)
gevent.spawn_later(0.5, locker.execute, "COMMIT")
started = time.monotonic()
locked = write("while locked")
waited = time.monotonic() - started
ticker.kill()
gaps = [b - a for a, b in zip(ticks, ticks[1:])]
count = database.statements(lambda c: c.execute(text("SELECT count(*) FROM notes")).scalar())
print(json.dumps({"free_on_hub": free == hub, "locked_on_hub": locked == hub, "waited": waited,
                  "longest_gap": max(gaps), "count": count}))
"""
)

CHECKPOINTS = (
    COMMON
    + """
body = "x" * 8000  # two pages and more a commit
commits = CHECKPOINT_EVERY * 5
for _ in range(commits):
    write(body)
    gevent.sleep(0.001)  # a request's other work between two saves
gevent.sleep(0.5)  # the last checkpoint, on the thread
print(json.dumps({"wal_bytes": __import__("os").path.getsize(path + "-wal"), "written": commits * len(body)}))
"""
)


def run(script: str, tmp_path: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "hub.sqlite3")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_free_database_is_written_on_the_hub_and_a_locked_one_on_the_thread(tmp_path: Path) -> None:
    result = run(LOCKED, tmp_path)
    assert result["free_on_hub"] is True
    assert result["locked_on_hub"] is False  # the hub's try failed at once; the thread waited for the lock
    assert result["waited"] >= 0.4  # it really waited, until the other connection committed
    assert result["longest_gap"] < 0.1  # and the hub went on meanwhile (a 10 ms ticker)
    assert result["count"] == 2  # the failed try left nothing behind


def test_the_wal_is_checkpointed_while_the_hub_writes(tmp_path: Path) -> None:
    """The hub's connection never checkpoints (that is what syncs the disk); the thread does, every
    ``CHECKPOINT_EVERY`` commits, so the WAL is reused rather than growing with every write."""
    result = run(CHECKPOINTS, tmp_path)
    assert result["wal_bytes"] < result["written"] / 2, result
