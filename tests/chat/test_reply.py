"""ReplyParts: the reply's tokens kept as UTF-8 and end offsets, read back exactly as they came."""

from __future__ import annotations

import sys

import pytest

from service.chat.reply import ReplyParts

TOKENS = ["Baby", " sleep", "", " naïve", " 睡眠", " 👶🏽", "\n", " end"]


def test_tokens_read_back_one_by_one_and_whole() -> None:
    parts = ReplyParts()
    parts.extend(TOKENS[:3])
    parts.extend(TOKENS[3:])
    assert len(parts) == len(TOKENS)
    assert [parts[index] for index in range(len(parts))] == TOKENS
    assert parts[-1] == " end"
    assert parts.text() == "".join(TOKENS)


def test_an_index_past_either_end_is_an_index_error() -> None:
    parts = ReplyParts(["a", "b"])
    with pytest.raises(IndexError):
        parts[2]
    with pytest.raises(IndexError):
        parts[-3]
    assert ReplyParts().text() == ""


def test_a_long_reply_costs_far_less_than_a_list_of_strings() -> None:
    tokens = [f" w{index % 10}" for index in range(1000)]
    parts = ReplyParts(tokens)
    listed = sys.getsizeof(tokens) + sum(sys.getsizeof(token) for token in tokens)
    compact = sys.getsizeof(parts._text) + sys.getsizeof(parts._ends)
    assert compact * 4 < listed, (compact, listed)
    assert parts.text() == "".join(tokens)
