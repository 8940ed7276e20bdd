"""``CORS_ORIGINS``: the exact origins whose pages may call the API (read by the settings, used by service.cors)."""

from __future__ import annotations

from urllib.parse import urlsplit

from service.env import ConfigError


def parse_origins(name: str, items: tuple[str, ...]) -> tuple[str, ...]:
    """Each item must be one exact origin (``https://app.example.com``, ``http://127.0.0.1:3000``): a scheme and
    a host, no path, no wildcard. Anything else is refused at start, naming the variable."""
    found: list[str] = []
    for item in items:
        parts = urlsplit(item)
        exact = (
            parts.scheme in {"http", "https"}
            and parts.hostname
            and not (parts.path or parts.query or parts.fragment or parts.username or parts.password)
            and "*" not in item
        )
        if not exact:
            raise ConfigError(
                f"Config {name!r} takes comma-separated origins like https://app.example.com (scheme and host, "
                f"optional port, no path or wildcard); got {item!r}."
            )
        found.append(item.lower())
    return tuple(found)
