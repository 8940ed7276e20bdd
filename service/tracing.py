"""Traces with OpenTelemetry, when an exporter is configured by the standard variables
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_SERVICE_NAME``...).

Each chat request is a trace: the view's span, and within it the safety checks, the provider call (with the first
token as an event) and the save. Nothing is traced per token: the request notes a few monotonic times as it goes,
and its spans are written when it ends, with those times. Without an endpoint nothing here is imported or run on
the stream path: the view finds no tracer and passes no trace along.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_tracer: Tracer | None = None


def configured(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in ENDPOINTS)


def start_tracing(exporter: SpanExporter | None = None) -> Tracer | None:
    """Set up the SDK once per process: the OTLP exporter the environment names, or ``exporter`` (tests pass an
    in-memory one). None when neither is there."""
    global _tracer
    if _tracer is not None:
        return _tracer
    if exporter is None and not configured():
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "chat-gateway")})
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("chat-gateway")
    return _tracer


def stop_tracing() -> None:
    """Forget the tracer (tests that traced leave the next ones untraced)."""
    global _tracer
    _tracer = None


def tracer() -> Tracer | None:
    return _tracer


class RequestTrace:
    """One request's trace. ``mark(name)`` notes a moment (a monotonic clock read); ``end`` writes the spans."""

    def __init__(self, tracer: Tracer, name: str, attributes: dict[str, Any]) -> None:
        self.tracer = tracer
        self.name = name
        self.attributes = attributes
        self.wall_ns = time.time_ns()  # the anchor that turns monotonic marks into span times
        self.started = time.monotonic()
        self.marks: dict[str, float] = {}
        self.ended = False

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    def at(self, moment: float) -> int:
        return self.wall_ns + int((moment - self.started) * 1e9)

    def end(self, outcome: str, first_token_at: float = 0.0, **attributes: Any) -> None:
        """Write the view's span and its children from the marks; once."""
        if self.ended:
            return
        self.ended = True
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        now = time.monotonic()
        root = self.tracer.start_span(
            self.name, kind=trace.SpanKind.SERVER, start_time=self.wall_ns, attributes=self.attributes
        )
        root.set_attributes({"chat.outcome": outcome, **attributes})
        if outcome not in ("done", "ok"):
            root.set_status(Status(StatusCode.ERROR, outcome))
        context = trace.set_span_in_context(root)
        marks = self.marks
        for child, start, finish in (
            ("safety checks", "safety", "safety_end"),
            ("provider call", "provider", "provider_end"),
            ("save", "save", "save_end"),
        ):
            if start not in marks:
                continue
            span = self.tracer.start_span(child, context=context, start_time=self.at(marks[start]))
            if child == "provider call" and first_token_at:
                span.add_event("first token", timestamp=self.at(first_token_at))
            span.end(end_time=self.at(marks.get(finish, now)))
        root.end(end_time=self.at(now))
