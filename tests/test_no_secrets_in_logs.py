"""Nothing secret and nothing a user wrote reaches the logs, even at LOG_LEVEL=debug with the SDK's own debug
logging on: the provider key, the JWT secret, users' tokens, their messages and the model's replies are absent
from every line gunicorn, the service, the openai SDK and its HTTP transport write, across a normal stream, a
reply without streaming, failing upstreams, a refused token and saves that fail."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

import httpx
import jwt

from tests.conftest import ServerFactory
from tests.sse import stream

API = "/api/v1/ai"
REPLY_WORDS = "Newborns sleep sixteen hours"  # from the scripted upstream's reply (#tokens beyond 10)


def test_debug_logs_hold_no_key_token_message_or_reply(server_factory: ServerFactory, tmp_path: Path) -> None:
    api_key = f"sk-test-{uuid.uuid4().hex}"
    jwt_secret = f"jwt-secret-{uuid.uuid4().hex}"
    private = f"private-words-{uuid.uuid4().hex}"
    token = jwt.encode({"sub": "log-user", "exp": int(time.time()) + 300}, jwt_secret, algorithm="HS256")
    forged = jwt.encode({"sub": "intruder", "exp": int(time.time()) + 300}, "not-the-secret-" + "x" * 32, "HS256")
    running = server_factory(
        OPENAI_API_KEY=api_key,
        JWT_SECRET=jwt_secret,
        LOG_LEVEL="debug",
        LOG_FORMAT="json",
        OPENAI_LOG="debug",
        UPSTREAM_ATTEMPTS="2",
        SAVE_JOURNAL_DIR=str(tmp_path / "journal"),
    )
    user = {"Authorization": f"Bearer {token}"}

    events = stream(running.url, {"message": f"{private} one #tokens=15"}, user)
    assert events[-1].type == "done"
    conversation = events[0].data["conversationId"]
    answered = httpx.post(f"{running.url}{API}/chat", json={"message": f"{private} two #tokens=15"}, headers=user)
    assert answered.status_code == 200, answered.text
    assert REPLY_WORDS in answered.json()["content"]

    # failing upstreams: refused before the stream, broken and erroring during it
    refused = httpx.post(f"{running.url}{API}/chat/stream", json={"message": f"{private} #status=500"}, headers=user)
    assert refused.status_code == 503
    for failure in ("#fail_after=12", "#error_after=12"):
        failed = stream(running.url, {"message": f"{private} {failure} #tokens=15"}, user)
        assert failed[-1].type == "error"
    # a forged token, and a token sent where a message belongs
    forged_answer = httpx.post(
        f"{running.url}{API}/chat/stream", json={"message": private}, headers={"Authorization": f"Bearer {forged}"}
    )
    assert forged_answer.status_code == 401
    # saves that fail: the database loses its tables under the running service
    with sqlite3.connect(tmp_path / "chat.sqlite3") as database:
        database.execute("DROP TABLE messages")
    unsaved = stream(running.url, {"message": f"{private} three #tokens=15"}, user)
    assert unsaved[-1].type == "done"
    continued = httpx.post(
        f"{running.url}{API}/chat", json={"message": f"{private} four", "conversationId": conversation}, headers=user
    )
    assert continued.status_code == 503
    time.sleep(2)  # the journal's retry (every 1.5 s) meets the broken database and logs it
    running.stop()

    logged = running.log_path.read_text(errors="replace")
    lines = logged.splitlines()
    assert len(lines) > 50, "debug logging is on: the run must have logged plenty"
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(record.get("level") == "DEBUG" for record in records), "the debug level reached the log"
    assert any("journal" in line.lower() for line in lines), "the failing save was logged"
    assert sum(1 for line in lines if line.startswith("{") and json.loads(line).get("logger") == "gunicorn.access") > 5
    for secret, what in [
        (api_key, "the provider key"),
        (jwt_secret, "the JWT secret"),
        (token, "a user's token"),
        (token.split(".")[2], "a user's token signature"),
        (forged, "a refused token"),
        (private, "a user's message"),
        (REPLY_WORDS, "the model's reply"),
    ]:
        found = [line for line in lines if secret in line]
        assert not found, f"{what} was logged:\n" + "\n".join(found[:5])
