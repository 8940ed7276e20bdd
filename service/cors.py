"""Cross-origin access to the API, off unless ``CORS_ORIGINS`` names the sites whose pages may call it.

The chat page is served by the service itself and needs none. With origins listed, flask-cors answers their
preflights (the chat POST's ``Authorization``, ``Content-Type``, ``Last-Event-ID`` and ``X-Request-ID``) and adds
``Access-Control-Allow-Origin`` for exactly those origins; every response then says ``Vary: Origin`` so a cache
never hands one site's answer to another. Tokens travel in ``Authorization``, never in cookies, so no credentials
mode is offered.
"""

from __future__ import annotations

import re

from flask import Flask, Response
from flask_cors import CORS

ALLOWED_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID")
EXPOSED_HEADERS = ("X-Request-ID", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
ALLOWED_METHODS = ("GET", "POST", "DELETE")
PREFLIGHT_MAX_AGE = 600  # seconds a browser may reuse a preflight's answer


def install_cors(app: Flask, origins: tuple[str, ...]) -> None:
    """Allow the listed origins; with none, install nothing (no response carries any CORS header)."""
    if not origins:
        return
    exact = [re.compile(re.escape(origin) + r"\Z", re.IGNORECASE) for origin in origins]
    CORS(
        app,
        origins=exact,
        allow_headers=list(ALLOWED_HEADERS),
        expose_headers=list(EXPOSED_HEADERS),
        methods=list(ALLOWED_METHODS),
        max_age=PREFLIGHT_MAX_AGE,
        supports_credentials=False,
        vary_header=True,
    )
    app.after_request(_vary_on_origin)


def _vary_on_origin(response: Response) -> Response:
    """Refused origins get no CORS header, allowed ones do: the answer depends on ``Origin`` either way."""
    response.vary.add("Origin")
    return response
