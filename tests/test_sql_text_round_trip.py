"""Text that looks like SQL is only ever data: a message full of quotes, comments and statements is stored and
read back byte for byte, as the conversation's title too, and the tables are all still there, on SQLite and on
PostgreSQL, through real gunicorn."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerFactory

API = "/api/v1/ai"
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
HOSTILE_SQL = "x'); DROP TABLE messages; -- \" ; DELETE FROM conversations WHERE '1'='1' /* \\ %s %(a)s $1 ? */"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_sql_shaped_text_is_stored_and_read_back_verbatim(server_factory: ServerFactory, database: str) -> None:
    running = server_factory(DATABASE_URL=POSTGRES) if database == "postgresql" else server_factory()
    message = f"{HOSTILE_SQL} #tokens=2"
    with httpx.Client(base_url=running.url, timeout=10) as client:
        first = client.post(f"{API}/chat", json={"message": message})
        assert first.status_code == 200, first.text
        conversation = first.json()["conversationId"]
        again = client.post(f"{API}/chat", json={"message": message, "conversationId": conversation})
        assert again.status_code == 200, again.text
        saved = client.get(f"{API}/conversations/{conversation}").json()
        assert saved["title"].startswith("x'); DROP TABLE")
        assert [item["content"] for item in saved["messages"] if item["role"] == "user"] == [message, message]
        listed = client.get(f"{API}/conversations")
        assert listed.status_code == 200 and conversation in listed.text
