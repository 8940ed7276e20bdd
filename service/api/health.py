"""Liveness and readiness: no auth, no limits."""

from __future__ import annotations

from typing import Any

import httpx2
from flask import Blueprint, Response

from service.api.errors import attach_error_handlers
from service.api.request_id import attach_request_ids
from service.extensions import services
from service.llm.providers import server_root
from service.openapi import build_spec

bp = Blueprint("health", __name__)
attach_error_handlers(bp)
attach_request_ids(bp)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _local_model_healthy(base_url: str) -> bool:
    """llama-server's own ``/health`` (at the root, not under ``/v1``)."""
    try:
        return httpx2.get(server_root(base_url) + "/health", timeout=2).status_code == 200
    except httpx2.HTTPError:
        return False


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int]:
    """Ready when the database answers and a model is configured. Redis is reported; it decides readiness only
    under ``REDIS_OUTAGE_POLICY=refuse`` (by default a host without Redis still serves, with per-host limits)."""
    found = services()
    settings = found.settings
    checks: dict[str, str] = {}
    try:
        found.database.ping()
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unavailable"
    checks["model"] = f"{settings.provider}:{settings.chat_model}"
    if settings.local_model_url:
        checks["localModel"] = "ok" if _local_model_healthy(settings.local_model_url) else "unavailable"
    if found.redis_health.url:
        checks["redis"] = "ok" if found.redis_health.probe() else "unavailable"
    optional = () if settings.redis_outage_policy == "refuse" else ("redis",)
    ready = all(value != "unavailable" for name, value in checks.items() if name not in optional)
    return {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format, for this worker."""
    return Response(services().metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/openapi.json")
def openapi() -> dict[str, Any]:
    """The OpenAPI document: every route, built from the schemas the responses are dumped through."""
    return build_spec()
