from __future__ import annotations

import pytest

from service.llm.sse_decoder import SSEDataDecoder


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b'data: {"a":1}\n\n'], [b'{"a":1}']),
        ([b"data: one\n\ndata: two\n\n"], [b"one", b"two"]),
        ([b"data: sp", b"lit\n", b"\n"], [b"split"]),
        ([b"data: crlf\r\n\r\n"], [b"crlf"]),
        ([b"data: a\r", b"\n\r\n"], [b"a"]),
        ([b"data:nospace\n\n"], [b"nospace"]),
        ([b"data: line1\ndata: line2\n\n"], [b"line1\nline2"]),
        ([b": comment\nevent: x\nid: 3\nretry: 1\ndata: kept\n\n"], [b"kept"]),
        ([b"\n\n\n"], []),
        ([b"data: [DONE]\n\n"], [b"[DONE]"]),
        ([b"data: unterminated"], []),
    ],
)
def test_feed_yields_complete_events(chunks: list[bytes], expected: list[bytes]) -> None:
    decoder = SSEDataDecoder()
    got: list[bytes] = []
    for chunk in chunks:
        got.extend(decoder.feed(chunk))
    assert got == expected


def test_byte_by_byte_equals_whole() -> None:
    body = b'data: {"x":"\xc3\xa9"}\r\n\r\n: ping\n\ndata: b\n\n'
    decoder = SSEDataDecoder()
    one_by_one = [event for index in range(len(body)) for event in decoder.feed(body[index : index + 1])]
    assert one_by_one == SSEDataDecoder().feed(body) == [b'{"x":"\xc3\xa9"}', b"b"]


def test_flush_returns_an_event_missing_its_blank_line() -> None:
    decoder = SSEDataDecoder()
    assert decoder.feed(b"data: tail") == []
    assert decoder.flush() == [b"tail"]
