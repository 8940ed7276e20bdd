"""ContextBuilder: the prompt fits the model's window, the oldest history goes first, a message too long alone is
refused before anything is sent."""

from __future__ import annotations

import pytest

from service.chat.context import ContextBuilder
from service.errors import ContextTooLong
from service.llm.tokens import MESSAGE_FRAMING, REPLY_PRIMER, TokenCounter, estimate, upper_bound
from service.llm.windows import FALLBACK_WINDOW, ContextWindows, known_window


def words(count: int) -> str:
    """``count`` tokens under ``one_token_a_word``."""
    return " ".join(["word"] * count)


def one_token_a_word(text: str) -> int:
    return len(text.split())


def builder(window: int, max_tokens: int | None = 100, system: str = "sys") -> ContextBuilder:
    return ContextBuilder(system, max_tokens, ContextWindows({"m": window}), TokenCounter(one_token_a_word))


HISTORY = [("user", words(100)), ("assistant", words(100)), ("user", words(100)), ("assistant", words(100))]


def test_a_short_conversation_is_sent_whole_without_counting() -> None:
    counted: list[str] = []

    def tokenize(text: str) -> int:
        counted.append(text)
        return 1

    context = ContextBuilder("sys", 100, ContextWindows({"m": 8192}), TokenCounter(tokenize)).build(
        "m", [("user", "hi"), ("assistant", "hello")], "again"
    )
    assert [item["content"] for item in context.messages] == ["sys", "hi", "hello", "again"]
    assert context.omitted == 0
    assert counted == []  # under the byte bound: no tokenizer call


def test_the_oldest_turns_go_first_and_the_system_prompt_and_message_stay() -> None:
    # budget: 600 - 100 (reply) - 8 (primer) = 492; system + message = 1 + 50 + 2 framings = 67; each history
    # message 108: three fit (391), the oldest does not; the kept history then starts with an assistant turn,
    # which goes too.
    context = builder(600).build("m", HISTORY, words(50))
    assert [item["role"] for item in context.messages] == ["system", "user", "assistant", "user"]
    assert context.messages[0]["content"] == "sys"
    assert context.messages[-1]["content"] == words(50)
    assert context.omitted == 2
    assert context.prompt_tokens == 1 + 50 + 100 + 100 + 4 * MESSAGE_FRAMING


def test_the_reserve_is_the_reply_cap_or_a_quarter_of_the_window() -> None:
    assert builder(8000, max_tokens=512).reserve(8000) == 512
    assert builder(8000, max_tokens=None).reserve(8000) == 2000
    assert builder(128_000, max_tokens=None).reserve(128_000) == 4096


def test_a_message_that_cannot_fit_alone_is_context_too_long() -> None:
    with pytest.raises(ContextTooLong) as refused:
        builder(600).build("m", HISTORY, words(500))
    assert refused.value.status == 400
    assert refused.value.code == "context_too_long"
    assert "Shorten the message" in refused.value.message


def test_a_message_that_just_fits_alone_is_sent_with_no_history() -> None:
    budget = 600 - 100 - REPLY_PRIMER - 2 * MESSAGE_FRAMING - 1  # the system prompt is one token
    context = builder(600).build("m", HISTORY, words(budget))
    assert [item["role"] for item in context.messages] == ["system", "user"]
    assert context.omitted == 4


def test_keep_at_most_caps_the_history_for_a_retry() -> None:
    context = builder(100_000).build("m", HISTORY, "hi", keep_at_most=2)
    assert [item["content"] for item in context.messages] == ["sys", words(100), words(100), "hi"]
    assert context.omitted == 2


def test_empty_replies_are_left_out_and_not_counted_as_omitted() -> None:
    context = builder(8192).build("m", [("user", "a"), ("assistant", ""), ("user", "b")], "c")
    assert [item["content"] for item in context.messages] == ["sys", "a", "b", "c"]
    assert context.omitted == 0


def test_a_tokenizer_that_does_not_answer_counts_every_byte() -> None:
    counter = TokenCounter(lambda text: None)
    assert counter.count("héllo") == upper_bound("héllo") == 6


def test_counts_are_remembered_by_text() -> None:
    calls: list[str] = []

    def tokenize(text: str) -> int:
        calls.append(text)
        return 7

    counter = TokenCounter(tokenize)
    assert [counter.count("same"), counter.count("same"), counter.count("other")] == [7, 7, 7]
    assert calls == ["same", "other"]


def test_without_a_tokenizer_the_estimate_errs_high() -> None:
    english = "Baby sleep patterns change a lot in the first year."
    assert estimate(english) >= len(english) // 4  # English runs ~4 characters a token
    assert TokenCounter().count(english) == estimate(english)


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o-mini", 128_000),
        ("gpt-4o-2024-08-06", 128_000),
        ("gpt-4", 8_192),
        ("gpt-4-turbo", 128_000),
        ("gpt-4.1-mini", 1_047_576),
        ("gpt-3.5-turbo", 16_385),
        ("my-deployment", FALLBACK_WINDOW),
    ],
)
def test_known_windows_match_the_longest_prefix(model: str, window: int) -> None:
    assert known_window(model) == window


def test_the_setting_wins_over_what_is_learned_and_known() -> None:
    windows = ContextWindows({"gpt-4o": 4096}, default=None)
    windows.learn("gpt-4o", 2048)
    assert windows.size("gpt-4o") == 4096
    windows.learn("gpt-4", 4000)
    assert windows.size("gpt-4") == 4000
    assert ContextWindows(default=16_000).size("gpt-4o") == 16_000
