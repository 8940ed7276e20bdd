"""Every error leaves as the one JSON shape of docs/protocol.md; nothing leaks a traceback."""

from __future__ import annotations

import logging

import werkzeug.exceptions
from flask import Blueprint, Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from service.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestError,
    ServiceError,
    UnsupportedMediaType,
)
from service.extensions import services

log = logging.getLogger(__name__)
_HTTP_ERRORS: dict[int, type[RequestError]] = {
    400: InvalidRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def error_response(error: ServiceError) -> Response:
    if isinstance(error, RateLimited):
        services().metrics.refusals.labels(error.limit).inc()
    response = jsonify(error.to_dict())
    response.status_code = error.status
    if isinstance(error, RequestError):
        response.headers.update(error.headers)
    return response


def attach_error_handlers(bp: Blueprint) -> None:
    """The error shape for the errors raised in the gateway's own views, wherever it is mounted (a host app's
    other routes keep their own handlers)."""
    bp.register_error_handler(ServiceError, error_response)
    bp.register_error_handler(HTTPException, _http_error)
    bp.register_error_handler(Exception, _unexpected)


def _http_error(error: HTTPException) -> Response:
    mapped = _HTTP_ERRORS.get(error.code or 500)
    if mapped is None:
        generic = ServiceError(error.description or "Request failed.")
        response = jsonify(
            {"error": {"code": (error.name or "error").lower().replace(" ", "_"), "message": generic.message}}
        )
        response.status_code = error.code or 500
        return response
    response = error_response(mapped())
    if isinstance(error, werkzeug.exceptions.MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)  # RFC 9110: a 405 names what is allowed
    return response


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(ServiceError())


def register_error_handlers(app: Flask) -> None:
    """The same shape for the whole standalone app: unknown routes and wrong methods too."""
    app.register_error_handler(ServiceError, error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
