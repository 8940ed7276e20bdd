"""A model's output is data: markup, script and text shaped like SSE fields reach the client as the token
contents they are, inside JSON, and cannot forge or end the stream's events."""

from __future__ import annotations

from tests.fake_upstream import HOSTILE_REPLY
from tests.servers import GunicornServer
from tests.sse import stream


def test_output_shaped_like_events_and_markup_arrives_as_plain_token_text(server: GunicornServer) -> None:
    events = stream(server.url, {"message": "tell me #hostile"})
    kinds = [event.type for event in events]
    assert kinds[0] == "metadata" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"token"}, "no event but tokens between metadata and done"
    assert "".join(event.data["content"] for event in events[1:-1]) == HOSTILE_REPLY
