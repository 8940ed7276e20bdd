"""Marshmallow schemas for requests and responses. The OpenAPI document is built from them, and the views'
JSON responses are dumped through them (from the store's rows and the chat's results), so the two cannot drift."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import RAISE, Schema, fields, post_dump, validate


class UtcDateTime(fields.DateTime):
    """ISO 8601 in UTC with a ``Z``: the stored times are UTC, naive on SQLite and aware on PostgreSQL."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return value.replace(tzinfo=None).isoformat() + "Z"


class ChatRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    message = fields.String(required=True, metadata={"description": "The user's message."})
    conversationId = fields.UUID(  # noqa: N815 - the wire name
        load_default=None, allow_none=True, metadata={"description": "Continue a conversation you own."}
    )
    model = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=200))


class UsageSchema(Schema):
    prompt_tokens = fields.Integer(data_key="promptTokens")
    completion_tokens = fields.Integer(data_key="completionTokens")
    total_tokens = fields.Integer(data_key="totalTokens")
    estimated = fields.Boolean(metadata={"description": "Present (true) only when the provider sent no usage."})

    @post_dump
    def _only_when_estimated(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if not data.get("estimated"):
            data.pop("estimated", None)
        return data


class ChatResponseSchema(Schema):
    conversation_id = fields.String(data_key="conversationId")
    message_id = fields.String(data_key="messageId")
    content = fields.String()
    model = fields.String()
    finish_reason = fields.String(data_key="finishReason")
    usage = fields.Nested(UsageSchema)


class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class MessageSchema(Schema):
    id = fields.String()
    role = fields.String(validate=validate.OneOf(["user", "assistant"]))
    content = fields.String()
    status = fields.String(validate=validate.OneOf(["complete", "incomplete"]))
    model = fields.String(allow_none=True)
    finish_reason = fields.String(allow_none=True, data_key="finishReason")
    usage = fields.Nested(UsageSchema, allow_none=True)
    created_at = UtcDateTime(data_key="createdAt")


class ConversationSchema(Schema):
    id = fields.String()
    title = fields.String()
    created_at = UtcDateTime(data_key="createdAt")
    updated_at = UtcDateTime(data_key="updatedAt")


class ConversationDetailSchema(ConversationSchema):
    messages = fields.List(fields.Nested(MessageSchema))


class ConversationListSchema(Schema):
    conversations = fields.List(fields.Nested(ConversationSchema))


class PageQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


def load(schema: Schema, data: Any) -> dict[str, Any]:
    """Load with ``schema`` or raise ``InvalidRequest`` naming the fields."""
    from marshmallow import ValidationError

    from service.errors import InvalidRequest

    try:
        result: dict[str, Any] = schema.load(data)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise InvalidRequest("The request is not valid.", messages) from None
    return result
