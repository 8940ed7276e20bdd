"""The chat page with "Stream over a WebSocket" on, in headless Chromium against real gunicorn: replies come over
the socket (no stream request), Stop cancels through it, the token goes in the first frame, and refusals read as
over SSE. Needs what tests/test_browser.py needs."""

# ruff: noqa: F811 - each test's ``page`` parameter is the imported fixture, which ruff takes for a redefinition

from __future__ import annotations

import re
import time
from typing import Any

import jwt
import pytest

from tests.conftest import ServerFactory
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer
from tests.test_browser import (  # noqa: F401 - browser and page: its fixtures, used by name here
    SECRET,
    STOPPED,
    Page,
    assert_upstream_cancelled,
    browser,
    expect,
    last_reply,
    marker,
    open_chat,
    page,
    reply_for,
    send,
    wait_finished,
)

pytestmark = pytest.mark.browser


class Traffic:
    """What the page sent: its HTTP requests, and the frames of its WebSockets, both ways."""

    def __init__(self, page_: Page) -> None:
        self.requests: list[str] = []
        self.sent: list[str] = []
        self.received: list[str] = []
        page_.on("request", lambda request: self.requests.append(f"{request.method} {request.url}"))
        page_.on("websocket", self._socket)

    def _socket(self, socket: Any) -> None:
        socket.on("framesent", lambda payload: self.sent.append(str(payload)))
        socket.on("framereceived", lambda payload: self.received.append(str(payload)))


def choose_websocket(page_: Page) -> None:
    page_.check("#use-websocket")


def test_a_reply_streams_over_the_websocket_and_the_setting_is_kept(page: Page, server: GunicornServer) -> None:
    traffic = Traffic(page)
    open_chat(page, server)
    choose_websocket(page)
    tag = marker("over-ws")
    send(page, f"{tag} #tokens=6 #delay=0.02")
    wait_finished(page)
    expect(last_reply(page).locator(".text")).to_have_text(reply_for(6))
    assert not [item for item in traffic.requests if "/chat/stream" in item], traffic.requests
    assert sum(1 for frame in traffic.received if '"type":"token"' in frame) == 6
    assert any(frame.startswith('{"type":"chat"') and tag in frame for frame in traffic.sent)

    page.reload()
    expect(page.locator("#use-websocket")).to_be_checked()
    send(page, f"{marker('second-ws')} #tokens=2")
    wait_finished(page)
    expect(last_reply(page).locator(".text")).to_have_text(reply_for(2))
    assert not [item for item in traffic.requests if "/chat/stream" in item], traffic.requests


def test_stop_over_the_websocket_cancels_the_upstream(
    page: Page, server: GunicornServer, upstream: FakeUpstream
) -> None:
    open_chat(page, server)
    choose_websocket(page)
    tag = marker("stop-ws")
    send(page, f"{tag} #tokens=200 #delay=0.1")
    expect(page.locator("#reply .text")).not_to_have_text("")
    page.click("#stop")
    assert_upstream_cancelled(upstream, tag)
    wait_finished(page)
    expect(last_reply(page).locator(".note")).to_have_text(STOPPED)


def test_the_token_goes_in_the_first_frame_and_refusals_read_as_over_sse(
    page: Page, server_factory: ServerFactory
) -> None:
    secured = server_factory(JWT_SECRET=SECRET, RATE_LIMIT="1/minute")
    traffic = Traffic(page)
    open_chat(page, secured)
    choose_websocket(page)
    token = jwt.encode({"sub": "ws-browser-user", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    page.fill("#token", token)
    page.press("#token", "Enter")
    send(page, f"{marker('signed-in-ws')} #tokens=3")
    wait_finished(page)
    expect(last_reply(page).locator(".text")).to_have_text(reply_for(3))
    assert traffic.sent[0] == f'{{"type":"auth","token":"{token}"}}'
    send(page, f"{marker('too-soon-ws')} #tokens=2")
    wait_finished(page)
    expect(last_reply(page).locator(".error")).to_have_text(
        re.compile(r"^You are sending messages faster than allowed\. Please try again in \d+ seconds?\.$")
    )
