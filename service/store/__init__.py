"""The only SQL: conversations and their messages, through SQLAlchemy on SQLite or PostgreSQL, with saves that
arrive together sharing one transaction. Knows nothing of the wire."""
