"""Alembic owns the schema: a fresh database, an old one made before migrations, and many workers upgrading at
once, on SQLite and PostgreSQL; the migrations and the models agree."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, Table, create_engine, text

from service.store.migrate import current_revision, head_revision, upgrade
from service.store.models import Base
from tests.servers import ROOT

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a new SQLite file, or a new PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
        return
    schema = f"migrations_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def test_many_workers_upgrade_a_fresh_database_at_once(fresh: str) -> None:
    engines = [create_engine(fresh) for _ in range(4)]
    failures: list[BaseException] = []

    def run(engine: Engine) -> None:
        try:
            upgrade(engine)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert current_revision(engines[0]) == head_revision()
    assert differences(engines[0]) == []  # the migrations build exactly what the models say
    for engine in engines:
        engine.dispose()


def _tables_as_they_were_before_migrations() -> MetaData:
    """The conversations and messages tables as the first release made them, without the later columns."""
    later = {"current_message_id", "parent_id", "reasoning"}
    old = MetaData()
    for name in ("conversations", "messages"):
        table = Base.metadata.tables[name]
        Table(name, old, *[column.copy() for column in table.columns if column.name not in later])
    return old


def test_a_database_made_before_migrations_is_adopted_with_its_rows(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    _tables_as_they_were_before_migrations().create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO conversations VALUES ('c1', 'u1', 'old', '2026-01-01 00:00:00', '2026-01-01 00:00:00')")
        )
        for position, (message_id, role) in enumerate([("m0", "user"), ("m1", "assistant"), ("m2", "user")]):
            connection.execute(
                text(
                    "INSERT INTO messages (id, conversation_id, position, role, content, status, created_at)"
                    " VALUES (:id, 'c1', :position, :role, 'text', 'complete', '2026-01-01 00:00:00')"
                ),
                {"id": message_id, "position": position, "role": role},
            )
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT title, current_message_id FROM conversations")).one() == ("old", "m2")
        parents = dict(connection.execute(text("SELECT id, parent_id FROM messages")).tuples().all())
    assert parents == {"m0": None, "m1": "m0", "m2": "m1"}  # the old conversation became one branch


def test_the_upgrade_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'by-hand.sqlite3'}"
    done = subprocess.run(
        [sys.executable, "-m", "service.store.migrate"],
        cwd=ROOT,
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"at revision {head_revision()}")
