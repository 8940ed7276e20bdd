"""Models view: the models a request may pick (``CHAT_MODELS``), and which one it gets when it names none."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from service.api.errors import attach_error_handlers
from service.api.request_id import attach_request_ids
from service.auth import current_user
from service.config import Settings
from service.extensions import services
from service.schemas import ModelListSchema

bp = Blueprint("models", __name__)
attach_error_handlers(bp)
attach_request_ids(bp)
_listing = ModelListSchema()


def model_list(settings: Settings) -> list[dict[str, Any]]:
    """The allowed models in their configured order; the default (``CHAT_MODEL``) is marked."""
    return [{"id": model, "default": model == settings.chat_model} for model in settings.allowed_models]


@bp.get("")
def list_models() -> dict[str, Any]:
    """What the page's model picker offers."""
    found = services()
    current_user(found.auth)
    listing: dict[str, Any] = _listing.dump({"models": model_list(found.settings)})
    return listing
