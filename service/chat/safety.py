"""Input sanitising and checks: each check is a small function returning a verdict.

Order matters: sanitise first, so that the checks see exactly the text that would reach the model.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from service.errors import InvalidRequest, UnsafeInput

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""

    @classmethod
    def ok(cls) -> Verdict:
        return cls(True)


def sanitise(text: str) -> str:
    """NFC-normalise and drop control characters other than newline and tab (CR is dropped too)."""
    return _CONTROL.sub("", unicodedata.normalize("NFC", text))


def check_not_blank(text: str) -> Verdict:
    return Verdict.ok() if text.strip() else Verdict(False, "must not be empty")


def check_length(text: str, max_chars: int) -> Verdict:
    if len(text) <= max_chars:
        return Verdict.ok()
    return Verdict(False, f"must be at most {max_chars} characters")


@lru_cache(maxsize=8)
def _blocked_pattern(terms: tuple[str, ...]) -> re.Pattern[str] | None:
    if not terms:
        return None
    alternatives = "|".join(re.escape(term) for term in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def check_blocked_terms(text: str, terms: tuple[str, ...]) -> Verdict:
    pattern = _blocked_pattern(terms)
    if pattern is None or not pattern.search(text):
        return Verdict.ok()
    return Verdict(False, "contains a blocked term")


def checked_message(
    raw: str,
    max_chars: int,
    blocked_terms: tuple[str, ...],
    moderators: Sequence[Callable[[str], bool]] = (),
) -> str:
    """The sanitised message, or raise ``InvalidRequest`` / ``UnsafeInput``."""
    text = sanitise(raw)
    for verdict in (check_not_blank(text), check_length(text, max_chars)):
        if not verdict.allowed:
            raise InvalidRequest("The message is not valid.", {"message": [verdict.reason]})
    verdict = check_blocked_terms(text, blocked_terms)
    if not verdict.allowed:
        raise UnsafeInput("The message was refused: it contains a blocked term.")
    for flagged in moderators:
        if flagged(text):
            raise UnsafeInput("The message was refused by the moderation check.")
    return text
