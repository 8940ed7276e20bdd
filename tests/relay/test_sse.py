from __future__ import annotations

import pytest

from service.chat.events import Done, Error, Event, Metadata, Token, Usage
from service.relay.sse import PING, encode_batch, encode_event, event_prefix, retry_field

PREFIX = event_prefix("abc")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (Token("Baby"), b'id: abc:1\ndata: {"type":"token","content":"Baby"}\n\n'),
        (
            Token('say "hi"\nthen\u00e9'),
            b'id: abc:1\ndata: {"type":"token","content":"say \\"hi\\"\\nthen\xc3\xa9"}\n\n',
        ),
        (Token(""), b'id: abc:1\ndata: {"type":"token","content":""}\n\n'),
        (
            Metadata("abc", "c1", "m1", "gpt"),
            b'id: abc:1\ndata: {"type":"metadata","streamId":"abc","conversationId":"c1",'
            b'"messageId":"m1","model":"gpt"}\n\n',
        ),
        (
            Done("stop", Usage(12, 55), 41.3),
            b'id: abc:1\ndata: {"type":"done","finishReason":"stop","usage":{"promptTokens":12,'
            b'"completionTokens":55,"totalTokens":67},"tokensPerSecond":41.3}\n\n',
        ),
        (
            Error("idle_timeout", "The model stopped.", True),
            b'id: abc:1\ndata: {"type":"error","error":{"code":"idle_timeout","message":"The model stopped.",'
            b'"retryable":true}}\n\n',
        ),
    ],
)
def test_encode_event_is_byte_exact(event: Event, expected: bytes) -> None:
    assert encode_event(PREFIX, 1, event) == expected


def test_batch_numbers_events_consecutively_in_one_buffer() -> None:
    assert encode_batch(PREFIX, 7, [Token("a"), Token("b")]) == (
        b'id: abc:7\ndata: {"type":"token","content":"a"}\n\nid: abc:8\ndata: {"type":"token","content":"b"}\n\n'
    )


def test_estimated_usage_says_so() -> None:
    assert Usage(1, 2, estimated=True).payload() == {
        "promptTokens": 1,
        "completionTokens": 2,
        "totalTokens": 3,
        "estimated": True,
    }


def test_retry_and_ping_fields() -> None:
    assert retry_field() == b"retry: 3000\n\n"
    assert PING == b": ping\n\n"
