"""Alembic migrations of the conversation store: ``env.py``, and one module per revision in ``versions/``."""
