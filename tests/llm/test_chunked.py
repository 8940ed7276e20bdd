"""ChunkedDecoder against the bytes real servers send: every split point, extensions, trailers, bad framing."""

from __future__ import annotations

import h11
import pytest

from service.llm.chunked import MAX_LINE, ChunkedDecoder

BODY = b'data: {"a":1}\n\n' * 3 + b"data: [DONE]\n\n"
WIRE = (
    b"f\r\n" + BODY[:15] + b"\r\n"
    b"1E;name=value\r\n" + BODY[15:45] + b"\r\n"  # upper-case hex and an extension
    b"0000000E \r\n" + BODY[45:] + b"\r\n"  # leading zeros and trailing whitespace
    b"0\r\nX-Trailer: yes\r\n\r\n"  # a trailer
)


def decode(pieces: list[bytes]) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    body = b"".join(decoder.feed(piece) for piece in pieces)
    return body, decoder


def test_whole_body_at_once() -> None:
    body, decoder = decode([WIRE])
    assert body == BODY
    assert decoder.done
    assert decoder.leftover == b""


@pytest.mark.parametrize("cut", range(1, len(WIRE)))
def test_every_split_point(cut: int) -> None:
    body, decoder = decode([WIRE[:cut], WIRE[cut:]])
    assert (body, decoder.done) == (BODY, True)


def test_one_byte_at_a_time() -> None:
    decoder = ChunkedDecoder()
    out = []
    for index in range(len(WIRE)):
        assert not decoder.done
        out.append(decoder.feed(WIRE[index : index + 1]))
    assert b"".join(out) == BODY
    assert decoder.done


def test_not_done_until_the_blank_line_after_the_last_chunk() -> None:
    _, decoder = decode([WIRE[:-2]])
    assert not decoder.done


def test_bytes_after_the_body_are_kept_aside() -> None:
    body, decoder = decode([WIRE + b"HTTP/1.1 200"])
    assert body == BODY
    assert decoder.leftover == b"HTTP/1.1 200"
    assert decoder.feed(b" OK") == b""
    assert decoder.leftover == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\nabc\r\n",  # not hex
        b"0x3\r\nabc\r\n",  # int() would take it; HTTP does not
        b"+3\r\nabc\r\n",
        b"-3\r\nabc\r\n",
        b"\r\nabc\r\n",  # empty size
        b"3\r\nabcXY",  # no CRLF after the data
        b"12345678901234567\r\n",  # more than 16 hex digits
    ],
)
def test_bad_framing_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(h11.RemoteProtocolError):
        ChunkedDecoder().feed(wire)


def test_an_endless_size_line_is_refused() -> None:
    decoder = ChunkedDecoder()
    with pytest.raises(h11.RemoteProtocolError):
        for _ in range(MAX_LINE // 100 + 2):
            decoder.feed(b"1" * 100)
