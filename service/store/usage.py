"""Usage totals: the only module that reads the ``usage`` table (its rows are written with each reply, in the
same transaction, by ``service.store.conversations``).

Totals are summed by the database, grouped by UTC day or by model, and split between streamed and non-streamed
replies, so a query over a year of replies returns a few hundred rows, not the replies themselves. Replies answered
from the response cache count in the totals (they were served) and are also counted apart (no provider was paid).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Case, ColumnElement, Table, case, func, select

from service.store.database import Database
from service.store.models import Usage

usage = cast(Table, Usage.__table__)
GROUPINGS = ("day", "model")


@dataclass(frozen=True)
class UsageTotals:
    group: str  # the UTC day (YYYY-MM-DD) or the model
    streamed: bool
    replies: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated_replies: int  # replies whose counts are the service's estimate (the provider sent none)
    cached_replies: int = 0  # replies answered from the response cache: no provider call
    cached_tokens: int = 0  # the total tokens of those replies (counted in ``total_tokens`` too)
    reasoning_tokens: int = 0  # completion tokens a reasoning model spent thinking (in ``completion_tokens`` too)


class UsageStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def totals(self, user_id: str | None, start: datetime, end: datetime, group_by: str) -> list[UsageTotals]:
        """Totals of replies in ``[start, end)``, of ``user_id`` or of every user (None), by ``group_by``."""
        key = self._day() if group_by == "day" else usage.c.model
        estimated: Case[Any] = case((usage.c.estimated, 1), else_=0)
        cached: Case[Any] = case((usage.c.cached, 1), else_=0)
        cached_tokens: Case[Any] = case((usage.c.cached, usage.c.total_tokens), else_=0)
        query = (
            select(
                key.label("group"),
                usage.c.streamed,
                func.count(),
                func.sum(usage.c.prompt_tokens),
                func.sum(usage.c.completion_tokens),
                func.sum(usage.c.total_tokens),
                func.sum(estimated),
                func.sum(cached),
                func.sum(cached_tokens),
                func.sum(func.coalesce(usage.c.reasoning_tokens, 0)),
            )
            .where(usage.c.created_at >= start, usage.c.created_at < end)
            .group_by(key, usage.c.streamed)
            .order_by(key, usage.c.streamed.desc())
        )
        if user_id is not None:
            query = query.where(usage.c.user_id == user_id)
        rows = self.database.statements(lambda connection: connection.execute(query).all())
        return [
            UsageTotals(
                str(group),
                bool(streamed),
                int(count),
                int(prompt),
                int(completion),
                int(total),
                int(guessed),
                int(hits or 0),
                int(hit_tokens or 0),
                int(thoughts or 0),
            )
            for group, streamed, count, prompt, completion, total, guessed, hits, hit_tokens, thoughts in rows
        ]

    def _day(self) -> ColumnElement[str]:
        """The UTC day of a row: PostgreSQL keeps an instant, SQLite the UTC text the service wrote."""
        if self.database.is_sqlite:
            return func.substr(usage.c.created_at, 1, 10)
        return func.to_char(func.timezone("UTC", usage.c.created_at), "YYYY-MM-DD")
