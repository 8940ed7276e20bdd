"""One user cannot reach another's data through real gunicorn: conversations (read, continue, delete), running
streams (resume, cancel) and usage answer exactly as if they did not exist, or 403 for usage."""

from __future__ import annotations

import time

import httpx
import jwt

from tests.conftest import ServerFactory
from tests.sse import open_raw_stream

SECRET = "isolation-test-secret-that-is-long-enough-for-hs256"
API = "/api/v1/ai"


def as_user(sub: str) -> dict[str, str]:
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


def test_another_user_reaches_nothing_of_alices(server_factory: ServerFactory) -> None:
    running = server_factory(JWT_SECRET=SECRET, RESUME_GRACE_SECONDS="5")
    alice, bob = as_user("alice"), as_user("bob")
    with httpx.Client(base_url=running.url, timeout=10) as client:
        first = client.post(f"{API}/chat", json={"message": "alice's first #tokens=3"}, headers=alice)
        assert first.status_code == 200, first.text
        conversation = first.json()["conversationId"]
        missing = "00000000-0000-4000-8000-000000000000"

        def same_as_missing(method: str, path: str, body: dict[str, str] | None = None) -> None:
            answers = []
            for target in (conversation, missing):
                filled = {**body, "conversationId": target} if body else None
                answers.append(client.request(method, path.format(id=target), json=filled, headers=bob))
            theirs, nobodys = answers
            assert (theirs.status_code, theirs.json()) == (nobodys.status_code, nobodys.json())
            assert theirs.status_code == 404, theirs.text

        same_as_missing("GET", API + "/conversations/{id}")
        same_as_missing("DELETE", API + "/conversations/{id}")
        same_as_missing("POST", API + "/chat", {"message": "bob writes"})
        same_as_missing("POST", API + "/chat/stream", {"message": "bob streams"})
        listed = client.get(f"{API}/conversations", headers=bob)
        assert conversation not in listed.text
        assert client.get(f"{API}/usage", params={"user": "alice"}, headers=bob).status_code == 403

        sock, first_bytes = open_raw_stream(running.url, {"message": "alice streams #tokens=50 #delay=0.1"}, alice)
        try:
            while b'"streamId":"' not in first_bytes:
                first_bytes += sock.recv(4096)
            stream_id = first_bytes.split(b'"streamId":"', 1)[1].split(b'"', 1)[0].decode()
            resumed = client.get(f"{API}/chat/stream/{stream_id}", headers=bob)
            assert resumed.status_code == 404, resumed.text
            cancelled = client.delete(f"{API}/chat/stream/{stream_id}", headers=bob)
            assert cancelled.status_code == 404, cancelled.text
            own = client.delete(f"{API}/chat/stream/{stream_id}", headers=alice)
            assert own.status_code == 204, "the owner can: the refusals above were about the user"
        finally:
            sock.close()
        assert client.get(f"{API}/conversations/{conversation}", headers=alice).status_code == 200
