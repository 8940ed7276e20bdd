from __future__ import annotations

import gc
import re
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient

from service.schemas import ChatRequestSchema
from tests.fake_upstream import FakeUpstream
from tests.servers import free_port


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "checks": {"database": "ok", "model": "openai:gpt-4o-mini"}}


def test_not_ready_while_the_local_model_does_not_answer(
    make_app: Callable[..., Flask], upstream: FakeUpstream
) -> None:
    down = make_app(local_model_url=f"http://127.0.0.1:{free_port()}/v1").test_client().get("/readyz")
    assert down.status_code == 503
    assert down.get_json()["status"] == "not_ready"
    assert down.get_json()["checks"]["localModel"] == "unavailable"
    up = make_app(local_model_url=upstream.base_url).test_client().get("/readyz")  # it answers /health
    assert (up.status_code, up.get_json()["checks"]["localModel"]) == (200, "ok")


def test_metrics_are_prometheus_text(client: FlaskClient) -> None:
    answered = client.post("/api/v1/ai/chat", json={"message": "count me #tokens=3"})
    assert answered.status_code == 200, answered.get_data(as_text=True)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'chat_streams_started_total{model="gpt-4o-mini"} 1.0' in text
    assert 'chat_streams_ended_total{model="gpt-4o-mini",outcome="done"} 1.0' in text
    assert 'chat_tokens_relayed_total{model="gpt-4o-mini"} 3.0' in text
    assert 'chat_time_to_first_token_seconds_count{model="gpt-4o-mini"} 1.0' in text


def openapi_path(rule: str) -> str:
    """Flask's ``<conversation_id>`` (or ``<path:filename>``) as OpenAPI's ``{conversationId}``."""

    def camel(match: re.Match[str]) -> str:
        head, *rest = match.group(1).split("_")
        return "{" + head + "".join(part.title() for part in rest) + "}"

    return re.sub(r"<(?:\w+:)?(\w+)>", camel, rule)


def test_every_route_is_in_the_openapi_document_and_back(client: FlaskClient) -> None:
    app = client.application
    routes = {
        (openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    paths = client.get("/openapi.json").get_json()["paths"]
    documented = {(path, method) for path, operations in paths.items() for method in operations}
    assert routes == documented


def test_openapi_agrees_with_the_responses(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    paths = document["paths"]
    stream_responses = paths["/api/v1/ai/chat/stream"]["post"]["responses"]
    assert set(stream_responses) == {"200", "400", "401", "404", "408", "413", "415", "429", "502", "503"}
    assert "text/event-stream" in stream_responses["200"]["content"]
    request = document["components"]["schemas"]["ChatRequest"]
    assert (
        set(request["properties"])
        == set(ChatRequestSchema().fields)
        == {
            "message",
            "conversationId",
            "model",
            "regenerateMessageId",
            "editMessageId",
        }
    )
    assert "required" not in request  # a regenerate takes no message; the schema's own check says when one is due


def test_a_scrape_forces_no_full_garbage_collection(client: FlaskClient) -> None:
    """A full collection walks every object of the worker: a pause for every stream it holds."""
    full: list[dict[str, int]] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(info)

    client.get("/metrics")  # the first scrape builds what later ones reuse
    gc.callbacks.append(record)
    try:
        text = client.get("/metrics").get_data(as_text=True)
    finally:
        gc.callbacks.remove(record)
    assert "chat_process_event_loop_watchers" in text
    assert full == []


def test_responses_carry_exactly_the_documented_fields(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    reply = client.post("/api/v1/ai/chat", json={"message": "documented #tokens=2 #reasoning=1"}).get_json()
    assert set(reply) == set(schemas["ChatResponse"]["properties"])
    conversation = client.get(f"/api/v1/ai/conversations/{reply['conversationId']}").get_json()
    assert set(conversation) == set(schemas["ConversationDetail"]["properties"])
    assert {key for message in conversation["messages"] for key in message} == set(schemas["Message"]["properties"])
    assert conversation["createdAt"].endswith("Z")
    listing = client.get("/api/v1/ai/conversations").get_json()
    assert set(listing) == set(schemas["ConversationList"]["properties"])
    assert set(listing["conversations"][0]) == set(schemas["Conversation"]["properties"])
