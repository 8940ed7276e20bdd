"""What the model side sends is data: markup, script and text shaped like SSE fields reach the client as the
token contents they are, inside JSON, and cannot forge or end the stream's events; an upstream's own error text
is never relayed."""

from __future__ import annotations

import httpx
import pytest

from tests.fake_upstream import HOSTILE_REPLY
from tests.servers import GunicornServer
from tests.sse import stream


def test_output_shaped_like_events_and_markup_arrives_as_plain_token_text(server: GunicornServer) -> None:
    events = stream(server.url, {"message": "tell me #hostile"})
    kinds = [event.type for event in events]
    assert kinds[0] == "metadata" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"token"}, "no event but tokens between metadata and done"
    assert "".join(event.data["content"] for event in events[1:-1]) == HOSTILE_REPLY


@pytest.mark.parametrize("failure", ["#status=400", "#status=401", "#status=500", "#error_after=1"])
def test_an_upstreams_own_error_text_never_reaches_the_client(server: GunicornServer, failure: str) -> None:
    """What a provider (or whatever answers in its place) says in an error is not relayed: the client gets the
    protocol's own code and sentence."""
    response = httpx.post(f"{server.url}/api/v1/ai/chat/stream", json={"message": f"hi {failure}"}, timeout=30)
    assert "scripted" not in response.text, response.text
    if response.status_code == 200:
        assert '"type":"error"' in response.text
    else:
        assert set(response.json()["error"]) <= {"code", "message", "details"}
