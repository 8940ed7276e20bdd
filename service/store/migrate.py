"""Brings the database's schema to the newest migration (Alembic), safely from many workers and hosts at once.

Every worker upgrades at start. They take turns: PostgreSQL through an advisory lock (held by the connection that
migrates, so every host shares it), SQLite through a lock file beside the database (SQLite lives on one host). The
one that comes first upgrades; the others then find nothing to do. A database made before migrations existed (its
tables there, no ``alembic_version``) is stamped as the first revision, then upgraded.

By hand: ``DATABASE_URL=... .venv/bin/python -m service.store.migrate`` (or ``alembic upgrade head`` with
``alembic.ini``).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
FIRST_REVISION = "0001"
_ADVISORY_KEY = 0x63686174  # "chat": the lock every host's workers take in turn


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Upgrade to the newest revision, one process at a time."""
    with _turn(engine) as connection:
        config = alembic_config(connection)
        if MigrationContext.configure(connection).get_current_revision() is None and _has_tables(connection):
            log.info("stamping a database made before migrations as revision %s", FIRST_REVISION)
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, "head")
        connection.commit()


def _has_tables(connection: Connection) -> bool:
    return inspect(connection).has_table("conversations")


@contextmanager
def _turn(engine: Engine) -> Iterator[Connection]:
    """A connection held while this process migrates and no other one does."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_KEY})
            connection.commit()
            try:
                yield connection
            finally:
                connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_KEY})
                connection.commit()
        return
    database = make_url(str(engine.url)).database or ""
    if database in ("", ":memory:"):
        with engine.connect() as connection:
            yield connection
        return
    with open(database + ".migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with engine.connect() as connection:
                yield connection
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main() -> None:
    from sqlalchemy import create_engine

    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("Set DATABASE_URL to the database to upgrade (as the service is run with).")
    engine = create_engine(url)
    upgrade(engine)
    print(f"{make_url(url).render_as_string(hide_password=True)}: at revision {current_revision(engine)}")


if __name__ == "__main__":
    main()
