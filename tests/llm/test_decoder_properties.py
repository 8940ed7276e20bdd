"""Properties of the upstream readers: however the network splits the bytes, the events (and the body) are the
same, and the SSE decoder's events are the ones the WHATWG rules give (tests/sse_reference.py).

The decoder reads what OpenAI-compatible servers send: LF or CRLF line ends (not a lone CR), and only ``data``.
It also counts a last event that lacks its blank line (``flush``), where a browser would drop it.
"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.llm.chunk_json import load_chunk
from service.llm.chunked import ChunkedDecoder
from service.llm.sse_decoder import SSEDataDecoder
from service.well_formed import well_formed
from tests.sse_reference import event_streams, parse, splits


def decode_pieces(pieces: list[bytes]) -> list[bytes]:
    decoder = SSEDataDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    return events + decoder.flush()


@settings(max_examples=300)
@given(data=st.data(), body=st.one_of(event_streams(), st.binary(max_size=200)))
@example(data=None, body=b"data: a\r\n\r\n").via("a CRLF split between its CR and LF")
def test_any_split_gives_the_same_events(data: st.DataObject | None, body: bytes) -> None:
    pieces = [body[:9], body[9:]] if data is None else data.draw(splits(body))
    assert decode_pieces(pieces) == decode_pieces([body])


@settings(max_examples=300)
@given(body=event_streams(line_ends=("\n", "\r\n")))
@example(body=b"data:\n\n")  # an empty data field: an event with empty data
@example(body=b"data\ndata: x\n\n")  # a bare field name is a data line with an empty value
@example(body=b"\xef\xbb\xbfdata: x\n\n")  # a byte-order mark before the first line
def test_complete_events_are_the_ones_the_whatwg_rules_give(body: bytes) -> None:
    complete = body[: body.rfind(b"\n") + 1]  # what follows the last line end is not a line yet
    decoder = SSEDataDecoder()
    events = decoder.feed(complete)
    expected = [event.data.encode() for event in parse(complete).events]
    assert events == expected


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """(wire, body, leftover): ``body`` in chunks of any size, with the size lines' variants servers use."""
    body = draw(st.binary(max_size=300))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
    wire = b""
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        if start == end:
            continue  # a zero-size chunk is the last one
        size = draw(st.sampled_from(["%x", "%X", "000%x"])) % (end - start)
        extension = draw(st.sampled_from(["", ";name=value", ";x", " "]))
        wire += f"{size}{extension}\r\n".encode() + body[start:end] + b"\r\n"
    trailers = draw(st.sampled_from([b"", b"X-Trailer: yes\r\n", b"A: 1\r\nB: 2\r\n"]))
    leftover = draw(st.binary(max_size=20))
    return wire + b"0\r\n" + trailers + b"\r\n" + leftover, body, leftover


@settings(max_examples=300)
@given(data=st.data(), framed=chunked_bodies())
def test_any_split_of_a_chunked_body_gives_the_same_body(
    data: st.DataObject, framed: tuple[bytes, bytes, bytes]
) -> None:
    wire, body, leftover = framed
    decoder = ChunkedDecoder()
    decoded = b"".join(decoder.feed(piece) for piece in data.draw(splits(wire)))
    assert decoded == body
    assert decoder.done
    assert decoder.leftover == leftover


@settings(max_examples=200)
@given(text=st.text(st.characters(codec=None, exclude_categories=[])))
@example(text="\ud83d")  # half of 😀, as a provider cutting between UTF-16 units sends it
@example(text="\ud83d\ude00")
def test_a_chunks_json_is_read_whatever_its_escapes(text: str) -> None:
    chunk = json.dumps({"choices": [{"delta": {"content": text}}]}).encode()  # ensure_ascii: surrogates escaped
    assert load_chunk(chunk) == {"choices": [{"delta": {"content": well_formed(text)}}]}


def test_a_chunk_that_is_not_json_is_refused_as_orjson_refuses_it() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        load_chunk(b'{"choices": [')
    with pytest.raises(orjson.JSONDecodeError):
        load_chunk(b'"\\ud83d')  # a lone surrogate, but no closing quote either
