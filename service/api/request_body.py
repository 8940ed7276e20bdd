"""Reading a JSON body: media type, size and syntax are checked before the schema sees it."""

from __future__ import annotations

from typing import Any

import orjson
from flask import request

from service.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType


def json_body(max_bytes: int) -> Any:
    if request.mimetype != "application/json":
        raise UnsupportedMediaType()
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"The request body is over {max_bytes} bytes.")
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"The request body is over {max_bytes} bytes.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.", {"_body": ["not valid JSON"]}) from None
