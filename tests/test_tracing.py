"""Traces: with an exporter, each chat request is a trace of the view, the safety checks, the provider call (the
first token an event in it) and the save; without one, no trace is made."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing

STREAM = "/api/v1/ai/chat/stream"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    tracing.start_tracing(memory)
    yield memory
    tracing.stop_tracing()


def test_a_stream_is_one_trace_of_its_steps(make_app: Callable[..., Flask], exporter: InMemorySpanExporter) -> None:
    client = make_app().test_client()
    response = client.post(STREAM, json={"message": "traced #tokens=3 #first_delay=0.05"})
    assert response.status_code == 200
    response.get_data()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {f"POST {STREAM}", "safety checks", "provider call", "save"}
    root = spans[f"POST {STREAM}"]
    assert root.attributes is not None and root.attributes["chat.outcome"] == "done"
    assert root.attributes["http.request_id"] == response.headers["X-Request-ID"]
    assert root.attributes["chat.tokens"] == 3
    for name in ("safety checks", "provider call", "save"):
        child = spans[name]
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
    provider = spans["provider call"]
    events = [event.name for event in provider.events]
    assert events == ["first token"]
    first_token = provider.events[0].timestamp
    assert provider.start_time + 40_000_000 <= first_token <= provider.end_time  # after the upstream's 50 ms
    assert spans["save"].start_time >= provider.end_time


def test_a_refused_request_is_traced_as_refused(make_app: Callable[..., Flask], exporter: InMemorySpanExporter) -> None:
    client = make_app(blocked_terms=("forbidden",)).test_client()
    assert client.post(STREAM, json={"message": "a forbidden word"}).status_code == 400
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {f"POST {STREAM}", "safety checks"}  # the step that refused it, and no provider call
    root = spans[f"POST {STREAM}"]
    assert root.attributes is not None and root.attributes["chat.outcome"] == "unsafe_input"


def test_without_an_exporter_nothing_is_traced(make_app: Callable[..., Flask]) -> None:
    assert tracing.tracer() is None
    client = make_app().test_client()
    response = client.post(STREAM, json={"message": "untraced #tokens=2"})
    response.get_data()
    assert response.status_code == 200 and tracing.tracer() is None
