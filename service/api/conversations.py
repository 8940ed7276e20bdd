"""Conversation views: list, read, delete, and which branch is current. Only the owner sees a conversation; others
get 404."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, request

from service.api.errors import attach_error_handlers
from service.api.request_body import json_body
from service.api.request_id import attach_request_ids
from service.auth import current_user
from service.errors import NotFound
from service.extensions import services
from service.schemas import (
    ConversationDetailSchema,
    ConversationListSchema,
    CurrentBranchSchema,
    PageQuerySchema,
    load,
)

bp = Blueprint("conversations", __name__, url_prefix="/api/v1/ai/conversations")
attach_error_handlers(bp)
attach_request_ids(bp)
_page = PageQuerySchema()
_listing = ConversationListSchema()
_detail = ConversationDetailSchema()
_current = CurrentBranchSchema()


def _conversation_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise NotFound("No such conversation.") from None


@bp.get("")
def list_conversations() -> dict[str, Any]:
    """The caller's conversations, most recently updated first."""
    found = services()
    user_id = current_user(found.auth)
    page = load(_page, request.args.to_dict())
    rows = found.conversations.list_for(user_id, page["limit"], page["offset"])
    listing: dict[str, Any] = _listing.dump({"conversations": rows})
    return listing


@bp.get("/<conversation_id>")
def read_conversation(conversation_id: str) -> dict[str, Any]:
    """One conversation with its messages, oldest first."""
    found = services()
    user_id = current_user(found.auth)
    conversation = found.conversations.read(_conversation_id(conversation_id), user_id)
    if conversation is None:
        raise NotFound("No such conversation.")
    detail: dict[str, Any] = _detail.dump(conversation)
    return detail


@bp.put("/<conversation_id>/current")
def switch_branch(conversation_id: str) -> dict[str, Any]:
    """Make the branch through ``messageId`` current (down to its newest descendant): what the model sees next."""
    found = services()
    user_id = current_user(found.auth)
    body = load(_current, json_body(found.settings.max_body_bytes, found.settings.request_read_timeout_seconds))
    conversation = found.conversations.switch_branch(
        _conversation_id(conversation_id), user_id, str(body["message_id"])
    )
    if conversation is None:
        raise NotFound("No such message.")
    detail: dict[str, Any] = _detail.dump(conversation)
    return detail


@bp.delete("/<conversation_id>")
def delete_conversation(conversation_id: str) -> tuple[str, int]:
    found = services()
    user_id = current_user(found.auth)
    if not found.conversations.delete(_conversation_id(conversation_id), user_id):
        raise NotFound("No such conversation.")
    return "", 204
