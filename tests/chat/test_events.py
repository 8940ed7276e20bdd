"""ChatStream's batches of events, against the real scripted upstream through the real SDK and real SQLite."""

from __future__ import annotations

import time
from pathlib import Path

from service.chat.events import Done, Metadata, Token
from service.chat.stream import ChatRequest, ChatStream
from service.llm.streaming import CompletionRequest
from service.store.conversations import ConversationStore
from service.store.database import Database
from tests.fake_upstream import FakeUpstream
from tests.llm.test_streaming import service_for


def _chat(base_url: str, message: str, folder: Path) -> ChatStream:
    database = Database(f"sqlite:///{folder / 'chat.sqlite3'}")
    database.create_tables()
    upstream = service_for(base_url).open(CompletionRequest("m", [{"role": "user", "content": message}]))
    metadata = Metadata("0" * 32, "c0ffee00-0000-4000-8000-000000000000", "m0ffee00-0000-4000-8000-000000000000", "m")
    return ChatStream(metadata, ChatRequest("user", message), upstream, ConversationStore(database), 1)


def test_tokens_that_came_in_with_the_headers_go_out_with_the_metadata(upstream: FakeUpstream, tmp_path: Path) -> None:
    """One write for the metadata and the first tokens, where the upstream's first bytes already held them."""
    batches = list(_chat(upstream.base_url, "fast #tokens=3 #one_write", tmp_path).events())
    first = batches[0]
    assert isinstance(first[0], Metadata)
    assert [event.content for event in first[1:] if isinstance(event, Token)] == ["Baby", " sleep", " patterns"]
    assert isinstance(batches[-1][-1], Done)


def test_a_model_slow_to_start_does_not_hold_the_metadata_back(upstream: FakeUpstream, tmp_path: Path) -> None:
    chat = _chat(upstream.base_url, "slow to start #tokens=2 #first_delay=1", tmp_path)
    events = chat.events()
    started = time.monotonic()
    first = next(events)
    assert time.monotonic() - started < 0.3
    assert len(first) == 1 and isinstance(first[0], Metadata)
    rest = [event for batch in events for event in batch]
    assert [event.content for event in rest if isinstance(event, Token)] == ["Baby", " sleep"]
    assert isinstance(rest[-1], Done)
