"""Builds the standalone Flask app: settings, the gateway with its views, the page, the error shape, the security
headers and CORS (docs/security.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from service.config import Settings
from service.cors import install_cors
from service.gateway import ChatGateway
from service.security_headers import install_security_headers


def build_app(overrides: Mapping[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """Build the app from the environment; ``overrides`` replace individual settings (tests)."""
    app = Flask("service", instance_relative_config=True)
    settings = (settings or Settings.from_env()).with_overrides(overrides or {})
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    ChatGateway().init_app(app, settings=settings, standalone=True)
    install_security_headers(app)
    install_cors(app, settings.cors_origins)
    return app
