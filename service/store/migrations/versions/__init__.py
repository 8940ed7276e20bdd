"""The revisions, oldest first by ``down_revision``; add one with ``alembic -c alembic.ini revision -m ...``."""
