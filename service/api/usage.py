"""Usage view: the caller's own token totals; an admin (``ADMIN_CLAIM``) may ask for another user or all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, request

from service.api.errors import attach_error_handlers
from service.api.request_id import attach_request_ids
from service.auth import current_identity
from service.errors import Forbidden
from service.extensions import services
from service.schemas import UsageQuerySchema, UsageReportSchema, load
from service.store.usage import UsageTotals

bp = Blueprint("usage", __name__)
attach_error_handlers(bp)
attach_request_ids(bp)
_query = UsageQuerySchema()
_report = UsageReportSchema()
EVERYONE = "*"


@dataclass
class Totals:
    replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated_replies: int = 0
    cached_replies: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, row: UsageTotals | Totals) -> None:
        self.replies += row.replies
        self.prompt_tokens += row.prompt_tokens
        self.completion_tokens += row.completion_tokens
        self.total_tokens += row.total_tokens
        self.estimated_replies += row.estimated_replies
        self.cached_replies += row.cached_replies
        self.cached_tokens += row.cached_tokens
        self.reasoning_tokens += row.reasoning_tokens


@dataclass
class Group:
    group: str
    streaming: Totals = field(default_factory=Totals)
    non_streaming: Totals = field(default_factory=Totals)

    def add(self, row: UsageTotals) -> None:
        (self.streaming if row.streamed else self.non_streaming).add(row)


@bp.get("")
def usage_report() -> dict[str, Any]:
    """Token totals of replies in a range, by UTC day or by model, streamed and non-streamed apart."""
    found = services()
    identity = current_identity(found.auth)
    query = load(_query, request.args.to_dict())
    who = query["user"] or identity.user_id
    if who != identity.user_id and not identity.admin:
        raise Forbidden("Only an admin may read another user's usage.")
    rows = found.usage.totals(None if who == EVERYONE else who, query["start"], query["end"], query["group_by"])
    groups: dict[str, Group] = {}
    total = Group("total")
    for row in rows:
        groups.setdefault(row.group, Group(row.group)).add(row)
        total.add(row)
    report = {**query, "user": who, "groups": list(groups.values()), "total": total}
    dumped: dict[str, Any] = _report.dump(report)
    return dumped
