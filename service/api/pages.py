"""The browser chat page, served at ``/`` (its modules, styles and icon are under ``/static/``)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> Response:
    return current_app.send_static_file("index.html")


@bp.get("/favicon.ico")
def favicon() -> Response:
    """The page names its icon; this answers browsers that ask the conventional path (e.g. on /openapi.json)."""
    return current_app.send_static_file("favicon.svg")
