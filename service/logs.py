"""How the service logs: one JSON object a line (``LOG_FORMAT=json``, the default under gunicorn) or plain text for
a terminal (``text``), gunicorn's own lines and access log included, with the id of the request being served on
every line written while serving it.

The id lives in a context variable set when a request arrives; greenlets have contexts of their own, so each
request's lines carry its own id. Message text and tokens are never logged: only ids, counts and timings.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

from gunicorn import glogging
from pythonjsonlogger.orjson import OrjsonFormatter

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
FORMATS = ("json", "text")
TEXT = "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s"
JSON_FIELDS = ["asctime", "levelname", "name", "message"]


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on each record (``-`` outside a request), unless the record names one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get() or "-"
        return True


def formatter(kind: str) -> logging.Formatter:
    """python-json-logger's orjson flavour: its stdlib-json one took twice the CPU (~120 against ~60 µs a line,
    the logging call included), and the access log writes a line for every request."""
    if kind == "json":
        return OrjsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
    return logging.Formatter(TEXT)


def configure_logging(kind: str, level: str) -> None:
    """The service's own loggers write to standard error in ``kind``; idempotent (each worker and test calls it)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_chat_gateway", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._chat_gateway = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter(kind))
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())


class GatewayLogger(glogging.Logger):  # type: ignore[misc]  # gunicorn ships no types
    """gunicorn's logger, writing the same format as the service. In JSON each access line is an object with named
    fields (the request id among them) rather than a formatted string."""

    kind = "text"

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter(self.kind))
                handler.addFilter(RequestIdFilter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if self.kind != "json":
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        request_id = next((value for name, value in resp.headers if name.lower() == "x-request-id"), None)
        fields = {
            "request_id": request_id,
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": resp.status_code,
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 1),
            "user_agent": environ.get("HTTP_USER_AGENT"),
        }
        self.access_log.info("request", extra=fields)
