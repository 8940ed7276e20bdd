"""Marshmallow schemas for requests and responses; the OpenAPI document is built from them."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, fields, validate


class ChatRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    message = fields.String(required=True, metadata={"description": "The user's message."})
    conversationId = fields.UUID(  # noqa: N815 - the wire name
        load_default=None, allow_none=True, metadata={"description": "Continue a conversation you own."}
    )
    model = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=200))


class UsageSchema(Schema):
    promptTokens = fields.Integer()  # noqa: N815
    completionTokens = fields.Integer()  # noqa: N815
    totalTokens = fields.Integer()  # noqa: N815
    estimated = fields.Boolean()


class ChatResponseSchema(Schema):
    conversationId = fields.String()  # noqa: N815
    messageId = fields.String()  # noqa: N815
    content = fields.String()
    model = fields.String()
    finishReason = fields.String()  # noqa: N815
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
    finishReason = fields.String(allow_none=True)  # noqa: N815
    usage = fields.Nested(UsageSchema, allow_none=True)
    createdAt = fields.String()  # noqa: N815


class ConversationSchema(Schema):
    id = fields.String()
    title = fields.String()
    createdAt = fields.String()  # noqa: N815
    updatedAt = fields.String()  # noqa: N815


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
