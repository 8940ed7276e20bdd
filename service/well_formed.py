"""Text that UTF-8 can carry. A ``str`` may hold lone UTF-16 surrogates (JSON's ``"\\ud83d"`` escape makes one),
which no UTF-8 encoder, database driver or SSE stream takes: they become U+FFFD, and a surrogate pair becomes the
character it stands for (docs/protocol.md, "token")."""

from __future__ import annotations

from typing import Any


def well_formed(value: Any) -> Any:
    """``value`` (a string, or a dict or list holding strings) with its strings made well formed."""
    if isinstance(value, str):
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if isinstance(value, dict):
        return {key: well_formed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [well_formed(item) for item in value]
    return value
