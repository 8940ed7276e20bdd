"""The only SQL: conversations and their messages, through SQLAlchemy on SQLite or PostgreSQL, with saves that
arrive together sharing one transaction, and saves the database cannot take kept in a local journal until it can.
Knows nothing of the wire."""
