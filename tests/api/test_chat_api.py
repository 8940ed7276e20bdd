"""Request handling that needs no streaming: validation, errors, the non-streaming fallback."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fake_upstream import FakeUpstream

CHAT = "/api/v1/ai/chat"


def error_of(response: object) -> dict[str, object]:
    body = response.get_json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert {"code", "message"} <= set(body["error"])
    return body["error"]  # type: ignore[no-any-return]


def test_fallback_returns_the_whole_reply_and_saves_it(client: FlaskClient) -> None:
    response = client.post(CHAT, json={"message": "whole please #tokens=4"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["content"] == "Baby sleep patterns change"
    assert body["finishReason"] == "stop"
    assert body["usage"] == {"promptTokens": 12, "completionTokens": 4, "totalTokens": 16}
    assert set(body) == {"conversationId", "messageId", "content", "model", "finishReason", "usage", "cached"}
    assert body["cached"] is False
    saved = client.get(f"/api/v1/ai/conversations/{body['conversationId']}").get_json()
    assert [message["content"] for message in saved["messages"]] == ["whole please #tokens=4", body["content"]]


def test_fallback_upstream_down_is_503(client: FlaskClient) -> None:
    response = client.post(CHAT, json={"message": "fallback down #status=500"})
    assert response.status_code == 503
    assert error_of(response)["code"] == "upstream_unavailable"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": "not json", "content_type": "application/json"}, 400, "validation_error"),
        ({"data": "message=hi", "content_type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        ({"data": '{"message": "hi"}', "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"json": {}}, 400, "validation_error"),
        ({"json": ["hi"]}, 400, "validation_error"),
        ({"json": {"message": 5}}, 400, "validation_error"),
        ({"json": {"message": ""}}, 400, "validation_error"),
        ({"json": {"message": "  \n\t "}}, 400, "validation_error"),
        ({"json": {"message": "x" * 8001}}, 400, "validation_error"),
        ({"json": {"message": "hi", "extra": 1}}, 400, "validation_error"),
        ({"json": {"message": "hi", "conversationId": "not-a-uuid"}}, 400, "validation_error"),
        ({"json": {"message": "hi", "conversationId": 12}}, 400, "validation_error"),
        ({"json": {"message": "hi", "model": "not-configured"}}, 400, "validation_error"),
        ({"json": {"message": "hi", "conversationId": str(uuid.uuid4())}}, 404, "not_found"),
        ({"data": '{"message": "' + "x" * 70000 + '"}', "content_type": "application/json"}, 413, "payload_too_large"),
    ],
)
@pytest.mark.parametrize("path", [CHAT, CHAT + "/stream"])
def test_bad_input_gets_its_json_error_and_never_reaches_the_model(
    client: FlaskClient, upstream: FakeUpstream, path: str, kwargs: dict[str, object], status: int, code: str
) -> None:
    before = len(upstream.recorder.requests)
    response = client.post(path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.get_data(as_text=True)
    assert error_of(response)["code"] == code
    assert len(upstream.recorder.requests) == before


def test_validation_error_names_the_fields(client: FlaskClient) -> None:
    details = error_of(client.post(CHAT, json={"message": 5, "conversationId": "x"}))["details"]
    assert set(details) == {"message", "conversationId"}  # type: ignore[arg-type]


def test_message_is_sanitised_before_it_reaches_the_model(client: FlaskClient, upstream: FakeUpstream) -> None:
    client.post(CHAT, json={"message": "cafe\u0301 ok\x00\x07 tab\there\nline #tokens=1"})
    sent = upstream.recorder.requests[-1]["body"]["messages"][-1]["content"]
    assert sent == "caf\u00e9 ok tab\there\nline #tokens=1"


def test_blocked_term_is_unsafe_input(make_app: Callable[..., Flask], upstream: FakeUpstream) -> None:
    client = make_app(blocked_terms=("forbidden thing",)).test_client()
    before = len(upstream.recorder.requests)
    response = client.post(CHAT, json={"message": "tell me the Forbidden Thing now"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "unsafe_input"
    assert len(upstream.recorder.requests) == before
    assert client.post(CHAT, json={"message": "forbidden things are fine #tokens=1"}).status_code == 200


def test_moderation_on_calls_the_provider_and_refuses_flagged(make_app: Callable[..., Flask]) -> None:
    client = make_app(moderation=True).test_client()
    assert client.post(CHAT, json={"message": "nice #tokens=1"}).status_code == 200
    response = client.post(CHAT, json={"message": "nasty #flag"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "unsafe_input"


def test_model_may_be_picked_from_chat_models(make_app: Callable[..., Flask], upstream: FakeUpstream) -> None:
    client = make_app(chat_models=("small", "large")).test_client()
    response = client.post(CHAT, json={"message": "pick #tokens=1", "model": "large"})
    assert response.status_code == 200
    assert response.get_json()["model"] == "large"
    assert upstream.recorder.requests[-1]["body"]["model"] == "large"


def test_history_is_trimmed_to_history_messages(make_app: Callable[..., Flask], upstream: FakeUpstream) -> None:
    client = make_app(history_messages=2, system_prompt="Be brief.").test_client()
    conversation = client.post(CHAT, json={"message": "one #tokens=1"}).get_json()["conversationId"]
    client.post(CHAT, json={"message": "two #tokens=1", "conversationId": conversation})
    client.post(CHAT, json={"message": "three #tokens=1", "conversationId": conversation})
    sent = upstream.recorder.requests[-1]["body"]["messages"]
    assert sent == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "two #tokens=1"},
        {"role": "assistant", "content": "Baby"},
        {"role": "user", "content": "three #tokens=1"},
    ]


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    assert error_of(client.get("/nowhere"))["code"] == "not_found"
    response = client.get(CHAT)
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
