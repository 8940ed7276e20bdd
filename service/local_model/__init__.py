"""The embedded local model (one ``llama-server`` per host, owned by gunicorn's master): where its parts are
(``locate``), how to run it (``options``), the supervised child (``supervisor``), its log file and process helpers.
Standard library only: the master uses it before any worker has monkey-patched."""

from __future__ import annotations

from service.local_model.locate import INSTALL_HINT, LocalModelUnavailable, find_default_model, find_server_binary
from service.local_model.options import LocalModelOptions
from service.local_model.supervisor import LocalModelServer, LocalModelStartError

__all__ = [
    "INSTALL_HINT",
    "LocalModelOptions",
    "LocalModelServer",
    "LocalModelStartError",
    "LocalModelUnavailable",
    "find_default_model",
    "find_server_binary",
]
