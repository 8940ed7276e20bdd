"""The body readers on a real (gevent) socket: a thrown ``WakeUp`` yields an empty batch and loses no byte, and
h11 ends in a state that lets the connection be reused. Both readers: our chunked decoder and h11's own."""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import h11
import pytest
from gevent import socket

from service.interrupts import WakeUp
from service.llm.body_reader import FIRST_READ_BYTES, ChunkedBodyReader, H11BodyReader


def _client_state(head: bytes) -> h11.Connection:
    """An h11 client that has sent a request and read ``head`` (the response's status line and headers)."""
    state = h11.Connection(h11.CLIENT)
    headers = [("Host", "x"), ("Content-Length", "0")]
    state.send(h11.Request(method="POST", target="/v1/chat/completions", headers=headers))
    state.send(h11.EndOfMessage())
    state.receive_data(head)
    assert isinstance(state.next_event(), h11.Response)
    return state


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
SIZED = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "early", "later", "reader"),
    [
        (CHUNKED, b"5\r\nhel", b"lo\r\n5\r\nworld\r\n0\r\n\r\n", ChunkedBodyReader),
        (SIZED, b"hel", b"loworld", H11BodyReader),
    ],
)
def test_wake_up_yields_an_empty_batch_and_the_body_goes_on(
    head: bytes, early: bytes, later: bytes, reader: object
) -> None:
    ours, theirs = socket.socketpair()
    state = _client_state(head + early)  # some body bytes came in with the headers, as they do
    batches: Iterator[bytes] = iter(reader(state, ours).read, None)  # type: ignore[operator]
    seen: list[bytes] = []
    consumer = gevent.spawn(lambda: seen.extend(batches))
    gevent.sleep(0.05)  # the reader is now blocked in recv
    gevent.get_hub().loop.run_callback(consumer.throw, WakeUp())  # from the hub, as the service does it
    gevent.sleep(0.05)
    assert b"" in seen  # the wake-up came out as an empty batch...
    theirs.sendall(later)
    consumer.join(2)
    assert consumer.successful()
    assert b"".join(seen) == b"helloworld"  # ...and no byte was lost around it
    assert state.their_state is h11.DONE  # h11 saw the body end: the connection can be reused
    state.start_next_cycle()
    ours.close()
    theirs.close()


def test_a_body_cut_short_is_a_protocol_error() -> None:
    ours, theirs = socket.socketpair()
    state = _client_state(CHUNKED)
    theirs.sendall(b"5\r\nhel")
    theirs.close()
    with pytest.raises(h11.RemoteProtocolError):
        list(iter(ChunkedBodyReader(state, ours).read, None))
    assert state.their_state is not h11.DONE  # so httpcore closes it instead of pooling it
    ours.close()


def _chunked_body(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize("with_headers", [True, False], ids=["came-with-the-headers", "first-recv"])
def test_a_whole_reply_at_once_goes_out_first_as_a_small_batch(with_headers: bool) -> None:
    """A fast upstream can send the whole reply in one write; the first batch is cut from its first bytes so the
    first token is not held back while the rest is parsed. Nothing is lost, and the connection ends reusable."""
    pieces = [b"data: token %d\n\n" % index for index in range(400)]
    body = _chunked_body(pieces) + b"HTTP/1.1 200 OK\r\n"  # and the start of a next response, kept for h11
    assert len(body) > 4 * FIRST_READ_BYTES
    ours, theirs = socket.socketpair()
    state = _client_state(CHUNKED + (body if with_headers else b""))
    if not with_headers:
        theirs.sendall(body)
        gevent.sleep(0.05)  # all of it is waiting in the socket
    batches = list(iter(ChunkedBodyReader(state, ours).read, None))
    assert 0 < len(batches[0]) <= FIRST_READ_BYTES
    assert len(batches) >= 2
    assert b"".join(batches) == b"".join(pieces)
    assert state.their_state is h11.DONE
    assert bytes(state._receive_buffer) == b"HTTP/1.1 200 OK\r\n"  # what followed the body is h11's again
    ours.close()
    theirs.close()


def test_a_read_that_must_not_wait_takes_only_what_came_with_the_headers() -> None:
    """``wait=False`` is how the metadata picks up tokens that are already here without waiting for the model."""
    ours, theirs = socket.socketpair()
    state = _client_state(CHUNKED + b"5\r\nhello\r\n3\r\nwo")
    reader = ChunkedBodyReader(state, ours)
    assert reader.read(wait=False) == b"hellowo"
    started = time.monotonic()
    assert reader.read(wait=False) == b""  # nothing more on hand: back at once
    assert time.monotonic() - started < 0.05
    theirs.sendall(b"r\r\n2\r\nld\r\n0\r\n\r\n")
    assert b"".join(iter(reader.read, None)) == b"rld"
    assert state.their_state is h11.DONE
    ours.close()
    theirs.close()
