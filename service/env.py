"""The one reader of the environment: the service's settings, gunicorn's and the local model's all go through it,
and a bad value stops start-up with a message that names the variable (``Config 'X' must ...``).

Standard library only (plus ``limits`` for rates, imported when one is read): gunicorn's master reads its settings
through it before any worker has monkey-patched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping


class ConfigError(ValueError):
    """A setting is missing or malformed."""


class EnvReader:
    """Reads and checks one environment variable at a time, naming it in every error."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env

    def optional(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.text(name, default).lower()
        if value not in allowed:
            raise ConfigError(f"Config {name!r} must be one of {', '.join(allowed)}, got {value!r}.")
        return value

    def items(self, name: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in self.env.get(name, "").split(",") if item.strip())

    def number(self, name: str, default: float, minimum: float | None = None, maximum: float | None = None) -> float:
        """A finite number: positive, or with ``minimum`` at least that (and with ``maximum`` at most that)."""
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"Config {name!r} must be a number, got {raw!r}.") from None
        if not math.isfinite(value):
            raise ConfigError(f"Config {name!r} must be a finite number, got {raw!r}.")
        if minimum is None and value <= 0:
            raise ConfigError(f"Config {name!r} must be positive, got {raw!r}.")
        self._check_range(name, value, minimum, maximum)
        return value

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.optional_int(name)
        if value is None:
            return default
        self._check_range(name, value, minimum, maximum)
        return value

    @staticmethod
    def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
        if minimum is not None and value < minimum:
            raise ConfigError(f"Config {name!r} must be at least {minimum:g}, got {value:g}.")
        if maximum is not None and value > maximum:
            raise ConfigError(f"Config {name!r} must be at most {maximum:g}, got {value:g}.")

    def optional_int(self, name: str) -> int | None:
        raw = self.optional(name)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"Config {name!r} must be a whole number, got {raw!r}.") from None

    def windows(self, name: str) -> tuple[int | None, tuple[tuple[str, int], ...]]:
        """``8192`` (every model) or ``gpt-4o=128000,my-deployment=32768`` (per model), or both mixed."""
        default: int | None = None
        per_model: list[tuple[str, int]] = []
        for item in self.items(name):
            model, _, size = item.rpartition("=")
            try:
                tokens = int(size)
            except ValueError:
                raise ConfigError(f"Config {name!r} must look like '8192' or 'model=8192,...', got {item!r}.") from None
            if tokens < 256:
                raise ConfigError(f"Config {name!r} must give at least 256 tokens, got {item!r}.")
            if model.strip():
                per_model.append((model.strip(), tokens))
            else:
                default = tokens
        return default, tuple(per_model)

    def switch(self, name: str) -> bool:
        raw = (self.optional(name) or "off").lower()
        if raw in {"on", "true", "1", "yes"}:
            return True
        if raw in {"off", "false", "0", "no"}:
            return False
        raise ConfigError(f"Config {name!r} must be on or off, got {raw!r}.")

    def rate(self, name: str, default: str) -> str:
        """A rate such as ``30/minute`` or ``40000 per hour``, checked with ``limits`` (which applies it)."""
        from limits import parse

        value = self.text(name, default)
        try:
            parse(value)
        except ValueError:
            raise ConfigError(
                f"Config {name!r} must look like '30/minute' or '40000 per hour', got {value!r}."
            ) from None
        return value
