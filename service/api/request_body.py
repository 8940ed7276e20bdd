"""Reading a JSON body: media type, size, arrival time and syntax are checked before the schema sees it."""

from __future__ import annotations

from typing import Any

import gevent
import orjson
from flask import request

from service.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType


def json_body(max_bytes: int, timeout: float) -> Any:
    """The body as JSON. A body still arriving after ``timeout`` seconds (one byte at a time, or stopped) gets
    ``408 request_timeout`` instead of holding its connection for as long as its client likes."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType()
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"The request body is over {max_bytes} bytes.")
    with gevent.Timeout(timeout, RequestTimeout(f"The request body did not arrive within {timeout:g} s.")):
        raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"The request body is over {max_bytes} bytes.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.", {"_body": ["not valid JSON"]}) from None
