"""Marshmallow schemas for requests and responses. The OpenAPI document is built from them, and the views'
JSON responses are dumped through them (from the store's rows and the chat's results), so the two cannot drift."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_dump,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

DEFAULT_USAGE_DAYS = 30
MAX_USAGE_DAYS = 400
MAX_PAGE_SIZE = 200
MAX_OFFSET = 2**63 - 1  # the largest integer SQLite and PostgreSQL (bigint) take
OUT_OF_RANGE = "The date is out of range."


class UtcDateTime(fields.DateTime):
    """ISO 8601 in UTC with a ``Z``: the stored times are UTC, naive on SQLite and aware on PostgreSQL."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return value.replace(tzinfo=None).isoformat() + "Z"


class ChatRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    message = fields.String(
        load_default=None, metadata={"description": "The user's message (required unless `regenerateMessageId`)."}
    )
    conversationId = fields.UUID(  # noqa: N815 - the wire name
        load_default=None, allow_none=True, metadata={"description": "Continue a conversation you own."}
    )
    model = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Length(min=1, max=200),
        metadata={"description": "One of `GET /api/v1/ai/models`; any turn may change it. Default: the default."},
    )
    regenerateMessageId = fields.UUID(  # noqa: N815 - the wire name
        load_default=None,
        allow_none=True,
        metadata={
            "description": "An assistant message of `conversationId`: answer its question again, as a new reply "
            "beside it (no `message`)."
        },
    )
    editMessageId = fields.UUID(  # noqa: N815 - the wire name
        load_default=None,
        allow_none=True,
        metadata={
            "description": "A user message of `conversationId`: `message` replaces it as a new branch beside it, "
            "and is answered."
        },
    )

    @validates_schema
    def _one_turn(self, data: dict[str, Any], **kwargs: Any) -> None:
        """A plain turn needs a message; a regenerate takes none; either branch needs its conversation."""
        regenerate, edit = data.get("regenerateMessageId"), data.get("editMessageId")
        errors: dict[str, list[str]] = {}
        if regenerate and edit:
            errors["editMessageId"] = ["Give regenerateMessageId or editMessageId, not both."]
        if (regenerate or edit) and not data.get("conversationId"):
            errors["conversationId"] = ["Required with regenerateMessageId or editMessageId."]
        if regenerate and data.get("message") is not None:
            errors["message"] = ["Not taken with regenerateMessageId: the question is the stored one."]
        if not regenerate and data.get("message") is None:
            errors["message"] = ["Missing data for required field."]
        if errors:
            raise ValidationError(errors)


class UsageSchema(Schema):
    prompt_tokens = fields.Integer(data_key="promptTokens")
    completion_tokens = fields.Integer(data_key="completionTokens")
    total_tokens = fields.Integer(data_key="totalTokens")
    reasoning_tokens = fields.Integer(
        data_key="reasoningTokens",
        metadata={"description": "Of the completion tokens, those the model spent reasoning; present when > 0."},
    )
    estimated = fields.Boolean(metadata={"description": "Present (true) only when the provider sent no usage."})

    @post_dump
    def _only_when_estimated(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if not data.get("estimated"):
            data.pop("estimated", None)
        if not data.get("reasoningTokens"):
            data.pop("reasoningTokens", None)
        return data


class _ReasoningWhenPresent(Schema):
    """A reply's ``reasoning`` is left out when the model did not reason."""

    @post_dump
    def _only_with_reasoning(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if data.get("reasoning") is None:
            data.pop("reasoning", None)
        return data


_REASONING = {"description": "The model's reasoning (its thinking before the answer), apart from the answer."}


class ChatResponseSchema(_ReasoningWhenPresent):
    conversation_id = fields.String(data_key="conversationId")
    message_id = fields.String(data_key="messageId")
    content = fields.String()
    reasoning = fields.String(metadata=_REASONING)
    model = fields.String()
    finish_reason = fields.String(data_key="finishReason")
    usage = fields.Nested(UsageSchema)
    cached = fields.Boolean(
        metadata={"description": "True when the reply came from the response cache, with no call to the model."}
    )


class ErrorBodySchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)


class MessageSchema(_ReasoningWhenPresent):
    id = fields.String()
    parent_id = fields.String(
        allow_none=True, data_key="parentId", metadata={"description": "The message it follows; null: the first."}
    )
    current = fields.Boolean(metadata={"description": "On the conversation's current branch."})
    role = fields.String(validate=validate.OneOf(["user", "assistant"]))
    content = fields.String()
    reasoning = fields.String(metadata=_REASONING)
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
    messages = fields.List(
        fields.Nested(MessageSchema), metadata={"description": "The current branch, oldest first: what the model sees."}
    )
    all_messages = fields.List(
        fields.Nested(MessageSchema),
        data_key="allMessages",
        metadata={
            "description": "Every message of every branch, by depth then time; siblings (regenerated replies, "
            "edited messages) share a `parentId`."
        },
    )
    current_message_id = fields.String(
        allow_none=True,
        data_key="currentMessageId",
        metadata={"description": "The newest message of the current branch."},
    )


class CurrentBranchSchema(Schema):
    class Meta:
        unknown = RAISE

    message_id = fields.UUID(
        required=True,
        data_key="messageId",
        metadata={"description": "A message of the conversation: its branch, down to its newest descendant."},
    )


class ModelSchema(Schema):
    id = fields.String()
    default = fields.Boolean(metadata={"description": "Used when a request names no model."})


class ModelListSchema(Schema):
    models = fields.List(fields.Nested(ModelSchema))


class ConversationListSchema(Schema):
    conversations = fields.List(fields.Nested(ConversationSchema))


class PageQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_OFFSET))


class Instant(fields.Field[datetime]):
    """An ISO 8601 date or date-time; a date is midnight UTC, a time without an offset is UTC. Loads an aware
    datetime, and remembers whether only a date was given (``.date_only``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        if not isinstance(value, str):
            raise ValidationError("Not a date or date-time.")
        try:
            if len(value) == 10:
                return datetime.fromisoformat(value).replace(tzinfo=UTC)
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError("Not an ISO 8601 date (2026-12-06) or date-time (2026-12-06T10:00:00Z).") from None
        try:
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        except OverflowError:  # an offset that moves it past year 1 or 9999
            raise ValidationError(OUT_OF_RANGE) from None


class UsageQuerySchema(Schema):
    """``from`` (inclusive) and ``to`` (exclusive; a date alone means to the end of that day), by default the last
    30 days; ``groupBy`` day or model; ``user``: another user's id, or ``*`` for everyone (admins only)."""

    class Meta:
        unknown = RAISE

    start = Instant(data_key="from", load_default=None)
    end = Instant(data_key="to", load_default=None)
    group_by = fields.String(data_key="groupBy", load_default="day", validate=validate.OneOf(["day", "model"]))
    user = fields.String(load_default=None, validate=validate.Length(min=1, max=255))

    @pre_load
    def _whole_last_day(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """``to=2026-12-06`` includes the 6th: it is read as the 7th at midnight."""
        end = data.get("to")
        if isinstance(end, str) and len(end) == 10:
            try:
                return {**data, "to": (date.fromisoformat(end) + timedelta(days=1)).isoformat()}
            except ValueError:
                pass  # the field names the mistake
            except OverflowError:  # 9999-12-31: there is no next day
                raise ValidationError(OUT_OF_RANGE, "to") from None
        return data

    @post_load
    def _range(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        end = data["end"] or datetime.now(UTC)
        try:
            start = data["start"] or end - timedelta(days=DEFAULT_USAGE_DAYS)
        except OverflowError:  # a `to` in the first days of year 1
            raise ValidationError(OUT_OF_RANGE, "to") from None
        if start >= end:
            raise ValidationError("Must be before `to`.", "from")
        if end - start > timedelta(days=MAX_USAGE_DAYS):
            raise ValidationError(f"The range may span at most {MAX_USAGE_DAYS} days.", "to")
        return {**data, "start": start, "end": end}


class TokenTotalsSchema(Schema):
    replies = fields.Integer()
    prompt_tokens = fields.Integer(data_key="promptTokens")
    completion_tokens = fields.Integer(data_key="completionTokens")
    total_tokens = fields.Integer(data_key="totalTokens")
    estimated_replies = fields.Integer(
        data_key="estimatedReplies", metadata={"description": "Replies counted by the service: no provider usage."}
    )
    cached_replies = fields.Integer(
        data_key="cachedReplies",
        metadata={"description": "Replies answered from the response cache, with no provider call (in `replies`)."},
    )
    cached_tokens = fields.Integer(
        data_key="cachedTokens",
        metadata={"description": "The total tokens of the cached replies (in `totalTokens`): no provider was paid."},
    )
    reasoning_tokens = fields.Integer(
        data_key="reasoningTokens",
        metadata={"description": "Completion tokens a reasoning model spent thinking (in `completionTokens`)."},
    )


class UsageGroupSchema(Schema):
    group = fields.String(metadata={"description": "The UTC day (YYYY-MM-DD) or the model."})
    streaming = fields.Nested(TokenTotalsSchema)
    non_streaming = fields.Nested(TokenTotalsSchema, data_key="nonStreaming")


class UsageReportSchema(Schema):
    start = UtcDateTime(data_key="from")
    end = UtcDateTime(data_key="to")
    group_by = fields.String(data_key="groupBy")
    user = fields.String(metadata={"description": "The user whose usage this is, or * for every user."})
    groups = fields.List(fields.Nested(UsageGroupSchema))
    total = fields.Nested(UsageGroupSchema)


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
