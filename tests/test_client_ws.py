"""The Python client over its WebSocket transport, against real gunicorn: the same events API as over SSE, many turns
on one socket, errors as exceptions, a dropped socket resumed on a new one, and the command line."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from service.client import ChatClient, ConnectionFailed, Done, Metadata, RateLimited, Token, ValidationFailed
from tests.conftest import ServerFactory
from tests.servers import ROOT, GunicornServer, free_port
from tests.test_resume_grace import reply


def test_turns_share_one_socket_and_yield_the_same_events_as_sse(server: GunicornServer) -> None:
    with ChatClient(server.url, transport="ws") as over_ws, ChatClient(server.url) as over_sse:
        first = list(over_ws.stream("client ws one #tokens=4"))
        opened = over_ws.ws.socket if over_ws.ws is not None else None
        assert isinstance(first[0], Metadata)
        second = list(over_ws.stream("client ws two #tokens=3", conversation_id=first[0].conversation_id))
        assert over_ws.ws is not None and over_ws.ws.socket is opened
        sse = list(over_sse.stream("client ws one #tokens=4"))
    assert [type(event) for event in first] == [type(event) for event in sse] == [Metadata] + [Token] * 4 + [Done]
    assert [event.content for event in first if isinstance(event, Token)] == [
        event.content for event in sse if isinstance(event, Token)
    ]
    assert isinstance(second[0], Metadata) and second[0].conversation_id == first[0].conversation_id
    assert isinstance(second[-1], Done) and second[-1].usage.completion_tokens == 3
    assert over_ws.last_event_id == f"{second[0].stream_id}:4"


def test_refusals_raise_their_exceptions_and_the_socket_goes_on(server_factory: ServerFactory) -> None:
    server = server_factory(RATE_LIMIT="3/minute")  # the refused message counts too, as a POST does
    with ChatClient(server.url, transport="ws") as client:
        with pytest.raises(ValidationFailed):
            list(client.stream("x" * 9000))
        opened = client.ws.socket if client.ws is not None else None
        assert isinstance(list(client.stream("within the limit #tokens=1"))[-1], Done)
        assert isinstance(list(client.stream("within the limit #tokens=1"))[-1], Done)
        with pytest.raises(RateLimited) as refused:
            list(client.stream("over the limit"))
        assert client.ws is not None and client.ws.socket is opened
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1


def test_a_dropped_socket_resumes_on_a_new_one_with_nothing_twice(server_factory: ServerFactory) -> None:
    server = server_factory(RESUME_GRACE_SECONDS="10")
    events = []
    with ChatClient(server.url, transport="ws", backoff=0.2) as client:
        for event in client.stream("ws client drop #tokens=20 #delay=0.05"):
            events.append(event)
            if len(events) == 5:
                assert client.ws is not None
                first = client.ws.socket
                first.sock.shutdown(socket.SHUT_RDWR)  # the network goes: both sides see the socket end
        assert client.ws is not None and client.ws.socket is not first
    text = "".join(event.content for event in events if isinstance(event, Token))
    assert text == reply(20)
    assert isinstance(events[-1], Done) and len(events) == 22


def test_an_unreachable_service_raises_connection_failed() -> None:
    with (
        ChatClient(f"http://127.0.0.1:{free_port()}", transport="ws", max_retries=0, backoff=0.01) as client,
        pytest.raises(ConnectionFailed),
    ):
        list(client.stream("nobody there"))


def test_cli_over_ws(server: GunicornServer) -> None:
    command = [sys.executable, "-m", "service.client", "--url", server.url, "--transport", "ws", "cli ws #tokens=3"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Baby sleep patterns\n"
