"""``X-Request-ID``: taken from the request when it is a sane token, else made; returned on the response, put in
every log line written while serving the request (``service.logs``), in the stream's ``metadata`` event, and sent
on to the model provider."""

from __future__ import annotations

import re
import uuid

from flask import Blueprint, Response, g, request

from service.logs import REQUEST_ID

HEADER = "X-Request-ID"
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}")  # nothing that could forge a log field or a header


def attach_request_ids(bp: Blueprint) -> None:
    bp.before_request(_take)
    bp.after_request(_give)


def request_id() -> str:
    return str(g.request_id)


def _take() -> None:
    given = request.headers.get(HEADER, "")
    g.request_id = given if _SANE.fullmatch(given) else uuid.uuid4().hex
    REQUEST_ID.set(g.request_id)


def _give(response: Response) -> Response:
    response.headers[HEADER] = g.request_id
    return response
