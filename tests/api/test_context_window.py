"""A conversation never dies of its own length: the provider's context-length refusal, in each provider's words,
drops more history and tries once more, then answers ``context_too_long``; other refusals are not outages."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from flask import Flask

from service.config import DEFAULT_SYSTEM_PROMPT
from tests.api.test_chat_api import error_of
from tests.fake_upstream import CONTEXT_ERRORS, FakeUpstream
from tests.servers import GunicornServer
from tests.sse import stream as stream_events

CHAT = "/api/v1/ai/chat"
PROVIDERS = sorted(CONTEXT_ERRORS)


def requests_for(upstream: FakeUpstream, marker: str) -> list[list[dict[str, str]]]:
    with upstream.recorder.lock:
        return [
            item["body"]["messages"]
            for item in upstream.recorder.requests
            if "chat/completions" in item["path"] and marker in item["body"]["messages"][-1]["content"]
        ]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_context_refusal_drops_history_and_the_retry_streams(
    make_app: Callable[..., Flask], upstream: FakeUpstream, provider: str
) -> None:
    client = make_app().test_client()
    first = client.post(CHAT, json={"message": f"first {provider} #tokens=30"}).get_json()
    conversation = first["conversationId"]
    message = f"second {provider} #tokens=3 #context={provider} #window={len(DEFAULT_SYSTEM_PROMPT) + 100}"
    response = client.post(CHAT, json={"message": message, "conversationId": conversation})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["content"] == "Baby sleep patterns"
    sent = requests_for(upstream, f"second {provider} ")
    attempts_refused = 3 if CONTEXT_ERRORS[provider][0] >= 500 else 1  # the SDK retries a 5xx before we see it
    assert len(sent) == attempts_refused + 1
    assert [item["role"] for item in sent[0]] == ["system", "user", "assistant", "user"]
    assert [item["role"] for item in sent[-1]] == ["system", "user"]
    saved = client.get(f"/api/v1/ai/conversations/{conversation}").get_json()
    assert len(saved["messages"]) == 4  # the history left out of the prompt is still the conversation's


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_message_the_provider_refuses_even_alone_is_context_too_long(
    make_app: Callable[..., Flask], upstream: FakeUpstream, provider: str
) -> None:
    client = make_app().test_client()
    response = client.post(CHAT, json={"message": f"alone {provider} #context={provider} #window=10"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "context_too_long"
    assert "new conversation" in str(error["message"])


@pytest.mark.parametrize(("status", "words"), [("400", "refused the request (400)"), ("401", "credentials")])
def test_a_4xx_refusal_is_not_retried_and_not_an_outage(
    make_app: Callable[..., Flask], upstream: FakeUpstream, status: str, words: str
) -> None:
    message = f"refused #status={status}"
    response = make_app().test_client().post(CHAT, json={"message": message})
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "upstream_rejected"
    assert words in str(error["message"])
    assert "try again" not in str(error["message"])
    assert upstream.recorder.attempts[message] == 1


def test_409_is_not_retried(make_app: Callable[..., Flask], upstream: FakeUpstream) -> None:
    response = make_app().test_client().post(CHAT, json={"message": "conflict #status=409"})
    assert (response.status_code, error_of(response)["code"]) == (502, "upstream_rejected")
    assert upstream.recorder.attempts["conflict #status=409"] == 1


def test_408_is_retried_as_passing_trouble(make_app: Callable[..., Flask], upstream: FakeUpstream) -> None:
    response = make_app().test_client().post(CHAT, json={"message": "slow #tokens=2 #status=408x1"})
    assert response.status_code == 200
    assert upstream.recorder.attempts["slow #tokens=2 #status=408x1"] == 2


def test_a_configured_window_trims_before_sending_and_metadata_says_how_much(
    server_factory: Callable[..., GunicornServer], upstream: FakeUpstream
) -> None:
    """Through gunicorn and the stream endpoint: a 400-token window with a 100-token reply cap keeps only the
    newest turns, and the metadata event counts the ones left out; a message too long alone is a 400."""
    running = server_factory(MODEL_CONTEXT_WINDOW="400", MAX_COMPLETION_TOKENS="100")
    conversation = None
    for turn in range(4):
        body = {"message": f"windowed turn {turn} #tokens=60"}
        if conversation:
            body["conversationId"] = conversation
        events = stream_events(running.url, body)
        conversation = events[0].data["conversationId"]
        assert events[-1].type == "done"
    sent = requests_for(upstream, "windowed turn 3 ")[-1]
    assert len(sent) < 8  # system + 6 history + message would not fit
    assert sent[0]["role"] == "system" and sent[1]["role"] == "user"
    assert events[0].data["omittedTurns"] == 8 - len(sent)

    too_long = httpx.post(
        f"{running.url}/api/v1/ai/chat/stream", json={"message": "long " * 400, "conversationId": conversation}
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "context_too_long"
