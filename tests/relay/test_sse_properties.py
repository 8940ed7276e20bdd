"""Properties of the SSE encoder: whatever text an event carries, a conforming parser reads back exactly that
event, and nothing in the text can end it early, add a field or start another event.

Lone surrogates (U+D800..U+DFFF not in a pair) have no UTF-8 encoding. The encoder sends each one as U+FFFD, the
replacement character, and a high surrogate followed by a low one as the character the pair stands for
(docs/protocol.md, "token").
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.chat.events import Done, Error, Event, Metadata, Token, Usage
from service.client import ChatClient
from service.client.events import Token as ClientToken
from service.relay.sse import encode_batch, encode_event, event_prefix, retry_field
from tests.fake_upstream import AWKWARD_TOKENS
from tests.servers import GunicornServer
from tests.sse_reference import ReferenceEvent, parse

STREAM_ID = "9a7abb1bf0ac470a8906724cf691ec1d"
PREFIX = event_prefix(STREAM_ID)
# Any code point at all, lone surrogates included, with the troublesome ones drawn often.
ANY_TEXT = st.lists(
    st.one_of(
        st.characters(codec=None, exclude_categories=[]),
        st.sampled_from(["\r", "\n", "\r\n", "\0", "\ud800", "\udfff", "\ufeff", "\u2028", ":", "data: ", "id: x"]),
    )
).map("".join)


def well_formed(text: str) -> str:
    """What the protocol promises for ``text``: surrogate pairs joined, lone surrogates as U+FFFD."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def decoded(body: bytes) -> list[ReferenceEvent]:
    parsed = parse(body)
    return parsed.events


@settings(max_examples=300)
@given(content=ANY_TEXT, sequence=st.integers(0, 10**9))
@example(content="a\nb", sequence=1)
@example(content="a\r\nid: 0\r\n\r\ndata: forged", sequence=1)
@example(content="\0", sequence=1)
@example(content="\ud800", sequence=1)  # a lone high surrogate
@example(content="x\udc00y", sequence=1)  # a lone low surrogate
@example(content="\ud83d\ude00", sequence=1)  # a pair: one character, 😀
@example(content="\ud83d\ud83d\ude00\ude00", sequence=2)  # lone, pair, lone
def test_any_token_text_decodes_to_exactly_one_event_with_that_text(content: str, sequence: int) -> None:
    body = retry_field() + encode_event(PREFIX, sequence, Token(content))
    assert parse(body).retry == 3000
    events = decoded(body)
    assert len(events) == 1
    event = events[0]
    assert event.type == "message"
    assert event.last_event_id == f"{STREAM_ID}:{sequence}"
    assert json.loads(event.data) == {"type": "token", "content": well_formed(content)}
    assert body.count(b"\n\n") == 2, "only the retry block and the event end a block"
    assert b"\r" not in body and b"\0" not in body, "the text cannot reach the framing"


def _event(kind: str, text: str) -> Event:
    if kind == "metadata":
        return Metadata(STREAM_ID, text, text, text, 1, text)
    if kind == "token":
        return Token(text)
    if kind == "done":
        return Done(text, Usage(1, 2, estimated=True), 3.5)
    return Error(text, text, retryable=False)


def _expected(event: Event) -> dict[str, Any]:
    """The event's payload with every string made well formed, as the encoder promises."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return well_formed(value)
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        return value

    payload: dict[str, Any] = clean(event.payload())
    return payload


@settings(max_examples=150)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["metadata", "token", "done", "error"]), ANY_TEXT), min_size=1, max_size=8
    ).map(lambda drawn: [_event(kind, text) for kind, text in drawn]),
    first=st.integers(0, 1000),
)
@example(events=[Token("\ud800"), Error("\udfff", "lone\ud800", retryable=True)], first=0)
def test_a_batch_decodes_to_its_events_in_order_with_their_ids(events: list[Event], first: int) -> None:
    body = encode_batch(PREFIX, first, events)
    decoded_events = decoded(body)
    assert [json.loads(event.data) for event in decoded_events] == [_expected(event) for event in events]
    assert [event.last_event_id for event in decoded_events] == [
        f"{STREAM_ID}:{first + offset}" for offset in range(len(events))
    ]


def test_lone_surrogates_are_sent_as_the_replacement_character() -> None:
    cases = {
        "\ud800": "\ufffd",
        "x\udc00y": "x\ufffdy",
        "\ud83d\ude00": "\U0001f600",  # a pair is the character it encodes
        "\ud83d\ud83d\ude00\ude00": "\ufffd\U0001f600\ufffd",
    }
    for content, sent in cases.items():
        (event,) = decoded(encode_event(PREFIX, 1, Token(content)))
        assert json.loads(event.data)["content"] == sent
        assert well_formed(content) == sent


def test_awkward_text_from_the_provider_reaches_the_client_and_the_conversation(server: GunicornServer) -> None:
    expected = [well_formed(text) for text in AWKWARD_TOKENS]
    assert expected[4:6] == ["\ufffd", "\ufffd"]  # each half of the split pair is a lone surrogate
    with httpx.stream(
        "POST", f"{server.url}/api/v1/ai/chat/stream", json={"message": "awkward #awkward_text"}, timeout=30
    ) as response:
        assert response.status_code == 200
        body = response.read()
    events = [json.loads(event.data) for event in parse(body).events]
    assert [event["type"] for event in events] == ["metadata"] + ["token"] * len(expected) + ["done"], events[-1]
    assert [event["content"] for event in events[1:-1]] == expected
    with ChatClient(server.url) as client:
        streamed = list(client.stream("again #awkward_text"))
        assert "".join(event.content for event in streamed if isinstance(event, ClientToken)) == "".join(expected)
        conversation = client.conversation(events[0]["conversationId"])
    assert conversation["messages"][1]["content"] == "".join(expected)
    assert conversation["messages"][1]["status"] == "complete"
