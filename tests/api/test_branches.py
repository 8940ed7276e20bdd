"""Model switching, regenerate, edit and branch switching through real gunicorn and the scripted upstream: what
the upstream is sent is the current branch's history, nothing of the others, and bad message ids answer as if
they did not exist."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import ServerFactory
from tests.fake_upstream import FakeUpstream
from tests.sse import stream

SECRET = "branches-test-secret-that-is-long-enough-for-hs256"
API = "/api/v1/ai"


def as_user(sub: str) -> dict[str, str]:
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(server_factory: ServerFactory) -> Iterator[httpx.Client]:
    running = server_factory(JWT_SECRET=SECRET, CHAT_MODELS="test-model,other-model")
    with httpx.Client(base_url=running.url, timeout=10, headers=as_user("alice")) as client:
        yield client


def sent_for(upstream: FakeUpstream, marker: str) -> dict[str, Any]:
    """The body of the upstream request whose newest message holds ``marker``."""
    with upstream.recorder.lock:
        chats = [item["body"] for item in upstream.recorder.requests if "messages" in item["body"]]  # not moderations
        found = [body for body in chats if marker in str(body["messages"][-1])]
    assert found, f"the upstream saw no request for {marker!r}"
    return found[-1]


def dialogue(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(item["role"], item["content"]) for item in body["messages"] if item["role"] != "system"]


def chat(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"{API}/chat", json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def conversation_of(client: httpx.Client, conversation: str) -> dict[str, Any]:
    response = client.get(f"{API}/conversations/{conversation}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_models_are_listed_with_the_default(client: httpx.Client) -> None:
    assert client.get(f"{API}/models").json() == {
        "models": [{"id": "test-model", "default": True}, {"id": "other-model", "default": False}]
    }
    unsigned = httpx.get(f"{client.base_url}{API}/models")
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "unauthorized"


def test_a_conversation_changes_model_and_the_new_model_gets_the_same_history(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    first = chat(client, {"message": f"one {marker} #tokens=2"})
    conversation = first["conversationId"]
    chat(client, {"message": f"two {marker} #tokens=3", "conversationId": conversation})
    as_a = sent_for(upstream, f"two {marker}")
    events = stream(
        str(client.base_url),
        {"message": f"three {marker} #tokens=4", "conversationId": conversation, "model": "other-model"},
        headers=as_user("alice"),
    )
    assert events[0].data["model"] == "other-model"
    as_b = sent_for(upstream, f"three {marker}")
    assert (as_a["model"], as_b["model"]) == ("test-model", "other-model")
    saved = conversation_of(client, conversation)["messages"]
    history = [(m["role"], m["content"]) for m in saved[:4]]
    assert dialogue(as_b) == [*history, ("user", f"three {marker} #tokens=4")]
    assert dialogue(as_a) == [*history[:3]]  # the second turn saw the same messages, before its own reply
    assert [m["model"] for m in saved if m["role"] == "assistant"] == ["test-model", "test-model", "other-model"]


def test_regenerate_and_edit_branch_and_each_branch_sees_only_its_own_history(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    marker = uuid.uuid4().hex[:8]
    first = chat(client, {"message": f"one {marker} #tokens=2"})
    conversation = first["conversationId"]
    second = chat(client, {"message": f"two {marker} #tokens=3", "conversationId": conversation})
    one = [("user", f"one {marker} #tokens=2"), ("assistant", "Baby sleep")]

    # regenerate over SSE: the same question again, without the reply it replaces; no new user message
    events = stream(
        str(client.base_url),
        {"conversationId": conversation, "regenerateMessageId": second["messageId"]},
        headers=as_user("alice"),
    )
    assert [event.type for event in events][-1] == "done"
    regenerated = events[0].data["messageId"]
    with upstream.recorder.lock:
        last = upstream.recorder.requests[-1]["body"]
    assert dialogue(last) == [*one, ("user", f"two {marker} #tokens=3")]
    detail = conversation_of(client, conversation)
    assert detail["currentMessageId"] == regenerated
    by_id = {m["id"]: m for m in detail["allMessages"]}
    assert len(by_id) == 5
    assert by_id[regenerated]["parentId"] == by_id[second["messageId"]]["parentId"]
    assert by_id[regenerated]["current"] and not by_id[second["messageId"]]["current"]
    assert [m["id"] for m in detail["messages"]][-1] == regenerated
    assert all(m["current"] for m in detail["messages"])
    question = by_id[regenerated]["parentId"]

    # edit over the non-streaming endpoint: a new user turn beside the old one, answered with the history before it
    edited = chat(
        client, {"conversationId": conversation, "editMessageId": question, "message": f"two edited {marker}"}
    )
    assert dialogue(sent_for(upstream, f"two edited {marker}")) == [*one, ("user", f"two edited {marker}")]
    chat(client, {"conversationId": conversation, "message": f"after edit {marker}"})
    assert dialogue(sent_for(upstream, f"after edit {marker}")) == [
        *one,
        ("user", f"two edited {marker}"),
        ("assistant", edited["content"]),
        ("user", f"after edit {marker}"),
    ]

    # back to the first reply's branch: the next turn sees it, and nothing of the edit
    switched = client.put(f"{API}/conversations/{conversation}/current", json={"messageId": second["messageId"]})
    assert switched.status_code == 200, switched.text
    assert switched.json()["currentMessageId"] == second["messageId"]
    assert [m["content"] for m in switched.json()["messages"]][2] == f"two {marker} #tokens=3"
    chat(client, {"conversationId": conversation, "message": f"on the old branch {marker}"})
    assert dialogue(sent_for(upstream, f"on the old branch {marker}")) == [
        *one,
        ("user", f"two {marker} #tokens=3"),
        ("assistant", second["content"]),
        ("user", f"on the old branch {marker}"),
    ]


def test_bad_message_ids_and_roles_are_refused(client: httpx.Client) -> None:
    first = chat(client, {"message": "alice asks #tokens=2"})
    conversation, reply = first["conversationId"], first["messageId"]
    question = conversation_of(client, conversation)["messages"][0]["id"]
    bob = as_user("bob")
    bobs = client.post(f"{API}/chat", json={"message": "bob asks #tokens=2"}, headers=bob).json()

    def refused(body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        answers = []
        for path in ("/chat", "/chat/stream"):
            response = client.post(f"{API}{path}", json=body, headers=headers or {})
            answers.append((response.status_code, response.json()["error"]))
        assert answers[0] == answers[1]  # the streaming and the whole-reply endpoints answer alike
        return answers[0]

    status, error = refused({"conversationId": conversation, "regenerateMessageId": question})
    assert (status, error["code"]) == (400, "validation_error") and "regenerateMessageId" in error["details"]
    status, error = refused({"conversationId": conversation, "editMessageId": reply, "message": "new text"})
    assert (status, error["code"]) == (400, "validation_error") and "editMessageId" in error["details"]
    both = {"conversationId": conversation, "regenerateMessageId": reply, "editMessageId": question, "message": "x"}
    status, error = refused(both)
    assert (status, error["code"]) == (400, "validation_error") and "editMessageId" in error["details"]
    status, error = refused({"regenerateMessageId": reply})
    assert (status, error["code"]) == (400, "validation_error") and "conversationId" in error["details"]
    status, error = refused({"editMessageId": question, "message": "x"})
    assert (status, error["code"]) == (400, "validation_error") and "conversationId" in error["details"]
    status, error = refused({"conversationId": conversation, "regenerateMessageId": reply, "message": "x"})
    assert (status, error["code"]) == (400, "validation_error") and "message" in error["details"]
    status, error = refused({"conversationId": conversation, "editMessageId": question})
    assert (status, error["code"]) == (400, "validation_error") and "message" in error["details"]

    missing = str(uuid.uuid4())
    nobodys = refused({"conversationId": conversation, "regenerateMessageId": missing})
    assert nobodys[0] == 404 and nobodys[1]["code"] == "not_found"
    # another user's message in the caller's own conversation, and another user's conversation: as if missing
    assert refused({"conversationId": bobs["conversationId"], "regenerateMessageId": reply}, bob) == nobodys
    assert refused({"conversationId": conversation, "regenerateMessageId": reply}, bob) == refused(
        {"conversationId": str(uuid.uuid4()), "regenerateMessageId": reply}, bob
    )
    edit_elsewhere = refused({"conversationId": bobs["conversationId"], "editMessageId": question, "message": "x"}, bob)
    assert edit_elsewhere == (404, nobodys[1])

    current = f"{API}/conversations/{conversation}/current"
    for body, headers, status in (
        ({"messageId": missing}, {}, 404),
        ({"messageId": bobs["messageId"]}, {}, 404),
        ({"messageId": reply}, bob, 404),
        ({"messageId": "not-a-uuid"}, {}, 400),
        ({}, {}, 400),
        ({"messageId": reply, "extra": 1}, {}, 400),
    ):
        response = client.put(current, json=body, headers=headers)
        assert response.status_code == status, (body, response.text)
    assert conversation_of(client, conversation)["currentMessageId"] == reply  # nothing moved it
