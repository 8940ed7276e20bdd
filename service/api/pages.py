"""The browser chat page, served at ``/``."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> Response:
    return current_app.send_static_file("index.html")
