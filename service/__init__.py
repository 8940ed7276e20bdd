"""The chat streaming gateway: ``create_app`` builds the Flask app.

Importing the package is cheap on purpose: the gunicorn master imports ``service.config`` and
``service.local_model`` before any worker has monkey-patched, and ``python -m service.client`` needs none of
the server; so the app's modules load only when ``create_app`` is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from service.config import Settings


def create_app(overrides: Mapping[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """Build the app from the environment; ``overrides`` replace individual settings (tests)."""
    from service.app import build_app

    return build_app(overrides, settings)
