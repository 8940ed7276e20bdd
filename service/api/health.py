"""Liveness and readiness: no auth, no limits."""

from __future__ import annotations

from typing import Any

import httpx2
from flask import Blueprint, Response

from service.api.errors import attach_error_handlers
from service.extensions import services
from service.llm.providers import server_root
from service.openapi import build_spec

bp = Blueprint("health", __name__)
attach_error_handlers(bp)


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
    """Ready when the database answers and a model is configured."""
    found = services()
    checks: dict[str, str] = {}
    try:
        found.database.ping()
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unavailable"
    checks["model"] = f"{found.settings.provider}:{found.settings.chat_model}"
    if found.settings.local_model_url:
        checks["localModel"] = "ok" if _local_model_healthy(found.settings.local_model_url) else "unavailable"
    ready = all(value != "unavailable" for value in checks.values())
    return {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format, for this worker."""
    return Response(services().metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/openapi.json")
def openapi() -> dict[str, Any]:
    """The OpenAPI document: every route, built from the schemas the responses are dumped through."""
    return build_spec()
