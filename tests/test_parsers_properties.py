"""Properties of the two client-side SSE parsers: the Python client (``service/client/``, on httpx-sse) and the
browser page's (``service/static/sse.js``, in Debian's Chromium). However the bytes are split into reads, they
give the events that the WHATWG rules give for the whole body (tests/sse_reference.py).

One known difference, in httpx-sse: it does not drop a byte-order mark before the first line, as the rules say.
The service never sends one, so the Python client's properties leave it out.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.client import ChatClient
from service.client.events import Event, parse_event
from tests.servers import GunicornServer
from tests.sse_reference import VALUE_TEXT, event_streams, parse, splits
from tests.test_browser import browser, page  # noqa: F401 - the fixtures, with their Chromium checks

STREAM_ID = "9a7abb1bf0ac470a8906724cf691ec1d"


class Pieces(httpx.SyncByteStream):
    """A response body that arrives as exactly these reads."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces


def client_events(pieces: list[bytes]) -> list[tuple[str, str, str]]:
    """What the Python client's SSE layer (httpx-sse over httpx's text decoding) reads from these reads."""
    response = httpx.Response(200, headers={"Content-Type": "text/event-stream"}, stream=Pieces(pieces))
    return [(sse.event, sse.data, sse.id) for sse in EventSource(response).iter_sse() if sse.data]


def reference_events(body: bytes) -> list[tuple[str, str, str]]:
    """The reference's events with data; the client skips the others (``retry:`` blocks, empty data)."""
    return [(event.type, event.data, event.last_event_id) for event in parse(body).events if event.data]


@settings(max_examples=300)
@given(data=st.data(), body=event_streams(bom=False))
@example(data=None, body=b"data: a\r\r\ndata: b\r\n\r\n").via("CR, then CRLF split from it")
def test_the_python_clients_sse_layer_reads_the_same_events_from_any_split(
    data: st.DataObject | None, body: bytes
) -> None:
    pieces = [body[:8], body[8:9], body[9:]] if data is None else data.draw(splits(body, allow_empty=False))
    assert client_events(pieces) == reference_events(body)


@st.composite
def protocol_streams(draw: st.DrawFn) -> tuple[bytes, list[dict[str, Any]]]:
    """A whole stream as the service could send it, with any line ends, pings and retry fields: (wire, events)."""
    texts = draw(st.lists(VALUE_TEXT.filter(bool), max_size=6))
    events: list[dict[str, Any]] = [
        {"type": "metadata", "streamId": STREAM_ID, "conversationId": "c", "messageId": "m", "model": "x"},
        *({"type": "token", "content": text} for text in texts),
        {"type": "done", "finishReason": "stop", "usage": {"promptTokens": 1, "completionTokens": 2}},
    ]
    end = draw(st.sampled_from(["\n", "\r", "\r\n"]))
    wire = f"retry: 3000{end}{end}"
    for sequence, event in enumerate(events):
        if draw(st.booleans()):
            wire += f": ping{end}{end}"
        wire += f"id: {STREAM_ID}:{sequence}{end}data: {json.dumps(event, ensure_ascii=False)}{end}{end}"
    return wire.encode(), events


class _Reply(BaseHTTPRequestHandler):
    """Answers any POST with the server's pieces as an event stream, one write (and one TCP segment) each."""

    server: OneReplyServer
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for piece in self.server.pieces:
            self.wfile.write(piece)
            time.sleep(0.001)

    def log_message(self, message: str, *args: Any) -> None:  # quiet: the test says what went wrong
        pass


class OneReplyServer(ThreadingHTTPServer):
    """A real HTTP server on a free port that answers every request with ``pieces``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Reply)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.pieces: list[bytes] = []


@pytest.fixture(scope="module")
def reply_server() -> Iterator[OneReplyServer]:
    server = OneReplyServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), framed=protocol_streams())
def test_the_python_client_yields_the_same_events_however_the_stream_is_split(
    reply_server: OneReplyServer, data: st.DataObject, framed: tuple[bytes, list[dict[str, Any]]]
) -> None:
    wire, events = framed
    reply_server.pieces = data.draw(splits(wire, allow_empty=False))
    expected: list[Event | None] = [parse_event(event) for event in events]
    with ChatClient(reply_server.url, timeout=10, max_retries=0) as client:
        assert list(client.stream("hello")) == expected
        assert client.last_event_id == f"{STREAM_ID}:{len(events) - 1}"


BROWSER_PARSE = """async (pieces) => {
  const { parseChunks } = await import("/static/sse.js");
  return parseChunks(pieces.map((bytes) => new Uint8Array(bytes))).map((e) => [e.event, e.data, e.id]);
}"""


@pytest.mark.browser
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), body=event_streams())
@example(data=None, body=b"data: a\r\ndata: b\r\n\r\n").via("a read that is empty, between CR and LF")
def test_the_browser_pages_parser_reads_the_same_events_from_any_split(
    page: Any,  # noqa: F811 - the fixture imported above
    server: GunicornServer,
    data: st.DataObject | None,
    body: bytes,
) -> None:
    if page.url == "about:blank":
        page.goto(f"{server.url}/")
    pieces = [body[:8], b"", body[8:]] if data is None else data.draw(splits(body))
    got = page.evaluate(BROWSER_PARSE, [list(piece) for piece in pieces])
    assert [tuple(event) for event in got] == [
        (event.type, event.data, event.last_event_id) for event in parse(body).events
    ]
