"""Alembic's environment for the conversation store: the models' metadata, and a connection handed in by
``service.store.migrate`` (or, for the ``alembic`` command, one made from ``DATABASE_URL``)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from service.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("Set DATABASE_URL to the database to migrate.")
    with create_engine(url).connect() as made:
        context.configure(connection=made, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
