"""The JSON of one upstream SSE event, read with orjson, and with the standard library when orjson refuses it.

orjson refuses lone surrogate escapes (``"\\ud83d"``), which JSON allows and which a provider sends when it cuts
a string between the two halves of a pair (an emoji, say). One such token must not fail the whole reply: the
standard library reads it, and the strings are made well formed (``service.well_formed``) before any of the
service sees them.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from service.well_formed import well_formed


def load_chunk(data: bytes) -> Any:
    """``data`` as JSON; raise ``orjson.JSONDecodeError`` if it is not JSON at all."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as refused:
        try:
            return well_formed(json.loads(data))
        except ValueError:
            raise refused from None
