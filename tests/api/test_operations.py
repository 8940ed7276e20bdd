from __future__ import annotations

import gc

from flask.testing import FlaskClient

from service.schemas import ChatRequestSchema


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"]["database"] == "ok"


def test_metrics_are_prometheus_text(client: FlaskClient) -> None:
    client.post("/api/v1/ai/chat", json={"message": "count me #tokens=3"})
    text = client.get("/metrics").get_data(as_text=True)
    assert "chat_streams_started_total 1.0" in text
    assert 'chat_streams_ended_total{outcome="done"} 1.0' in text
    assert "chat_tokens_relayed_total 3.0" in text


def test_openapi_agrees_with_the_wire(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    paths = document["paths"]
    assert set(paths) >= {
        "/api/v1/ai/chat/stream",
        "/api/v1/ai/chat/stream/{streamId}",
        "/api/v1/ai/chat",
        "/api/v1/ai/conversations",
        "/api/v1/ai/conversations/{conversationId}",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert set(paths["/api/v1/ai/chat/stream/{streamId}"]) == {"get", "delete"}
    stream_responses = paths["/api/v1/ai/chat/stream"]["post"]["responses"]
    assert set(stream_responses) == {"200", "400", "401", "404", "413", "415", "429", "502", "503"}
    assert "text/event-stream" in stream_responses["200"]["content"]
    request = document["components"]["schemas"]["ChatRequest"]
    assert set(request["properties"]) == set(ChatRequestSchema().fields) == {"message", "conversationId", "model"}
    assert request["required"] == ["message"]


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
