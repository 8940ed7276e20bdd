"""The stream endpoint through real gunicorn with the gevent worker (the Flask test client cannot show it)."""

from __future__ import annotations

import re

import httpx

from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer
from tests.sse import read_events, stream

STREAM = "/api/v1/ai/chat/stream"


def test_stream_is_byte_exact_per_wire(server: GunicornServer) -> None:
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", server.url + STREAM, json={"message": "Tell me about baby sleep patterns #tokens=2"}
        ) as response,
    ):
        body = response.read().decode()
        headers = response.headers
    assert response.status_code == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache, no-transform"
    assert headers["x-accel-buffering"] == "no"
    stream_id = re.search(r'"streamId":"([0-9a-f]{32})"', body)
    assert stream_id is not None
    sid = stream_id.group(1)
    pattern = (
        r"retry: 3000\n\n"
        rf'id: {sid}:0\ndata: \{{"type":"metadata","streamId":"{sid}","conversationId":"[0-9a-f-]{{36}}",'
        r'"messageId":"[0-9a-f-]{36}","model":"test-model","requestId":"[0-9a-f]{32}"\}\n\n'
        rf'id: {sid}:1\ndata: \{{"type":"token","content":"Baby"\}}\n\n'
        rf'id: {sid}:2\ndata: \{{"type":"token","content":" sleep"\}}\n\n'
        rf'id: {sid}:3\ndata: \{{"type":"done","finishReason":"stop","usage":\{{"promptTokens":12,'
        r'"completionTokens":2,"totalTokens":14\},"tokensPerSecond":[0-9.]+\}\n\n'
    )
    assert re.fullmatch(pattern, body), body


def test_each_token_arrives_within_50ms_of_leaving_the_upstream(server: GunicornServer, upstream: FakeUpstream) -> None:
    events = stream(server.url, {"message": "timing probe #tokens=5 #delay=0.5"})
    tokens = [event for event in events if event.type == "token"]
    sent = upstream.connection_for("timing probe").sent_at
    assert len(tokens) == len(sent) == 5
    lags = [token.at - left for token, left in zip(tokens, sent, strict=True)]
    assert max(lags) < 0.05, lags
    assert tokens[-1].at - tokens[0].at > 1.9  # they really were spread out, not buffered


def test_one_token_event_per_nonempty_delta_then_done_with_usage(server: GunicornServer) -> None:
    events = stream(server.url, {"message": "azure style #tokens=7 #azure"})
    assert [event.type for event in events] == ["metadata"] + ["token"] * 7 + ["done"]
    done = events[-1].data
    assert done["finishReason"] == "stop"
    assert done["usage"] == {"promptTokens": 12, "completionTokens": 7, "totalTokens": 19}
    assert done["tokensPerSecond"] > 0
    ids = [event.id for event in events]
    assert [int(str(event_id).split(":")[1]) for event_id in ids] == list(range(len(events)))


def test_missing_usage_is_estimated(server: GunicornServer) -> None:
    done = stream(server.url, {"message": "estimate me #tokens=3 #no_usage"})[-1].data
    assert done["usage"]["completionTokens"] == 3
    assert done["usage"]["estimated"] is True
    assert done["usage"]["promptTokens"] > 0


def test_content_filter_ends_with_content_filtered(server: GunicornServer) -> None:
    events = stream(server.url, {"message": "filtered #tokens=5 #filter_after=2"})
    assert events[-1].data["error"]["code"] == "content_filtered"
    assert events[-1].data["error"]["retryable"] is False


def test_upstream_down_before_first_token_is_503_json(server: GunicornServer, upstream: FakeUpstream) -> None:
    message = "always down #status=502"
    response = httpx.post(server.url + STREAM, json={"message": message}, timeout=30)
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert upstream.recorder.attempts[message] == 3


def test_conversation_is_saved_and_continued_with_history(server: GunicornServer, upstream: FakeUpstream) -> None:
    first = stream(server.url, {"message": "first turn #tokens=3"})
    conversation_id = first[0].data["conversationId"]
    second = stream(server.url, {"message": "second turn #tokens=2", "conversationId": conversation_id})
    assert second[0].data["conversationId"] == conversation_id
    sent = [item for item in upstream.recorder.requests if "second turn" in str(item["body"])][-1]["body"]["messages"]
    assert [item["role"] for item in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "first turn #tokens=3"
    assert sent[2]["content"] == "Baby sleep patterns"
    saved = httpx.get(f"{server.url}/api/v1/ai/conversations/{conversation_id}").json()["messages"]
    assert [(item["role"], item["status"]) for item in saved] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert saved[1]["usage"] == {"promptTokens": 12, "completionTokens": 3, "totalTokens": 15}
    assert saved[1]["model"] == "test-model"


def test_events_readable_by_a_plain_line_reader(server: GunicornServer) -> None:
    with httpx.Client(timeout=10) as client, client.stream("POST", server.url + STREAM, json={"message": "plain"}) as r:
        types = [event.type for event in read_events(r)]
    assert types[0] == "metadata"
    assert types[-1] == "done"
