"""A reasoning model's thinking, through real gunicorn and the scripted upstream: streamed as ``reasoning`` events
in the token sequence, saved apart from the answer, counted in the usage, replayed on resume and returned by the
conversation and the non-streaming endpoint."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.fake_upstream import REASONING_WORDS
from tests.servers import GunicornServer
from tests.sse import stream

STREAM = "/api/v1/ai/chat/stream"


def test_reasoning_then_answer_is_byte_exact(server: GunicornServer) -> None:
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", server.url + STREAM, json={"message": "think first #reasoning=2 #tokens=2"}) as response,
    ):
        body = response.read().decode()
    sid = re.search(r'"streamId":"([0-9a-f]{32})"', body)
    assert sid is not None
    pattern = (
        r"retry: 3000\n\n"
        rf'id: {sid[1]}:0\ndata: \{{"type":"metadata",[^\n]*\}}\n\n'
        rf'id: {sid[1]}:1\ndata: \{{"type":"reasoning","content":"Let"\}}\n\n'
        rf'id: {sid[1]}:2\ndata: \{{"type":"reasoning","content":" me"\}}\n\n'
        rf'id: {sid[1]}:3\ndata: \{{"type":"token","content":"Baby"\}}\n\n'
        rf'id: {sid[1]}:4\ndata: \{{"type":"token","content":" sleep"\}}\n\n'
        rf'id: {sid[1]}:5\ndata: \{{"type":"done","finishReason":"stop","usage":\{{"promptTokens":12,'
        r'"completionTokens":4,"totalTokens":16,"reasoningTokens":2\},"tokensPerSecond":[0-9.]+\}\n\n'
    )
    assert re.fullmatch(pattern, body), body


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_both_field_names_stream_as_reasoning(server: GunicornServer, field: str) -> None:
    events = stream(server.url, {"message": f"field {field} #reasoning=3 #tokens=2 #reasoning_field={field}"})
    kinds = ["metadata", "reasoning", "reasoning", "reasoning", "token", "token", "done"]
    assert [event.type for event in events] == kinds
    assert "".join(event.data["content"] for event in events if event.type == "reasoning") == " ".join(
        REASONING_WORDS[:3]
    )


def test_reasoning_and_answer_in_one_chunk_keep_their_order(server: GunicornServer) -> None:
    events = stream(server.url, {"message": "boundary #reasoning=2 #tokens=3 #reasoning_both"})
    assert [(event.type, event.data.get("content")) for event in events[1:-1]] == [
        ("reasoning", "Let"),
        ("reasoning", " me"),
        ("token", "Baby"),
        ("token", " sleep"),
        ("token", " patterns"),
    ]


def test_without_provider_count_the_pieces_are_counted(server: GunicornServer) -> None:
    usage = stream(server.url, {"message": "count me #reasoning=4 #tokens=2 #no_reasoning_usage"})[-1].data["usage"]
    assert usage == {"promptTokens": 12, "completionTokens": 6, "totalTokens": 18, "reasoningTokens": 4}
    estimated = stream(server.url, {"message": "estimate me #reasoning=4 #tokens=2 #no_usage"})[-1].data["usage"]
    assert estimated["completionTokens"] == 6  # reasoning pieces are completion tokens
    assert estimated["reasoningTokens"] == 4
    assert estimated["estimated"] is True


def test_resume_replays_reasoning_as_reasoning(server: GunicornServer) -> None:
    events = stream(server.url, {"message": "replay me #reasoning=2 #tokens=2"})
    stream_id = events[0].data["streamId"]
    with httpx.Client(timeout=10) as client:
        response = client.get(f"{server.url}{STREAM}/{stream_id}", headers={"Last-Event-ID": f"{stream_id}:1"})
    replayed = re.findall(r'"type":"(\w+)"', response.text)
    assert replayed == ["reasoning", "token", "token", "done"]
    assert f"id: {stream_id}:2\ndata: " + '{"type":"reasoning","content":" me"}' in response.text


def test_reasoning_is_saved_apart_and_returned(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory()
    events = stream(server.url, {"message": "save my thoughts #reasoning=3 #tokens=2"})
    conversation_id, message_id = events[0].data["conversationId"], events[0].data["messageId"]
    reply = httpx.get(f"{server.url}/api/v1/ai/conversations/{conversation_id}", timeout=10).json()
    user, assistant = reply["messages"]
    assert "reasoning" not in user
    assert assistant["content"] == "Baby sleep"
    assert assistant["reasoning"] == "Let me think"

    plain = httpx.post(f"{server.url}/api/v1/ai/chat", json={"message": "whole #reasoning=2 #tokens=3"}, timeout=10)
    assert plain.status_code == 200
    body = plain.json()
    assert body["content"] == "Baby sleep patterns"
    assert body["reasoning"] == "Let me"
    assert body["usage"] == {"promptTokens": 12, "completionTokens": 5, "totalTokens": 17, "reasoningTokens": 2}
    no_thoughts = httpx.post(f"{server.url}/api/v1/ai/chat", json={"message": "plain #tokens=2"}, timeout=10).json()
    assert "reasoning" not in no_thoughts
    assert "reasoningTokens" not in no_thoughts["usage"]

    with sqlite3.connect(tmp_path / "chat.sqlite3") as database:
        saved = database.execute("SELECT content, reasoning FROM messages WHERE id = ?", (message_id,)).fetchone()
        usage = database.execute(
            "SELECT completion_tokens, reasoning_tokens FROM usage WHERE message_id = ?", (message_id,)
        ).fetchone()
        plain_usage = database.execute(
            "SELECT reasoning_tokens FROM usage WHERE message_id = ?", (no_thoughts["messageId"],)
        ).fetchone()
    assert saved == ("Baby sleep", "Let me think")
    assert usage == (5, 3)
    assert plain_usage == (None,)


def test_reasoning_spends_the_token_budget(server_factory: ServerFactory) -> None:
    server = server_factory(TOKEN_BUDGET="40/hour")
    events = stream(server.url, {"message": "deep thinker #reasoning=200 #tokens=5 #delay=0.005"})
    assert events[-1].type == "error"
    assert events[-1].data["error"]["code"] == "rate_limited"
    thoughts = [event for event in events if event.type == "reasoning"]
    assert 40 <= len(thoughts) <= 56
    assert not any(event.type == "token" for event in events)
    conversation = events[0].data["conversationId"]
    reply = httpx.get(f"{server.url}/api/v1/ai/conversations/{conversation}", timeout=10).json()["messages"][-1]
    assert reply["status"] == "incomplete"
    assert reply["content"] == ""
    assert reply["reasoning"] == "".join(event.data["content"] for event in thoughts)
