"""A small existing Flask app that mounts the gateway under a prefix of its own and names its users its own way
(here, a header its front proxy sets). ``tests/test_gateway_extension.py`` runs it under gunicorn."""

from __future__ import annotations

from flask import Flask, request

from service.gateway import ChatGateway

app = Flask("host")


@app.get("/")
def home() -> str:
    return "the host's own home page"


@app.errorhandler(404)
def host_not_found(error: Exception) -> tuple[str, int]:
    return "the host's own 404", 404


def user_from_the_proxy() -> str | None:
    return request.headers.get("X-Host-User")


ChatGateway(app, url_prefix="/assistant", user_loader=user_from_the_proxy)
