"""The response cache (``RESPONSE_CACHE``) through real gunicorn and the scripted upstream: a repeated first message
is answered with no upstream request, the same token pieces and ``cached: true``, saved and counted as cached;
another model, another system prompt or a turn with history goes to the upstream; entries expire; the Redis backend
is shared across hosts; the cache is off by default; and errors or cut replies are never kept."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from service.chat.cache import CachedReply, reply_key
from service.client import ChatClient, Metadata
from service.config import ConfigError, Settings
from service.llm.streaming import CompletionRequest
from service.store.reply_cache import KEY_PREFIX, MemoryReplyCache
from tests.conftest import _server_env
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer, free_port
from tests.sse import Received, stream
from tests.test_metrics_host import scrape, value

CHAT = "/api/v1/ai/chat"
REDIS_URL = "redis://127.0.0.1:6379/11"  # a database of this file's own; its cache keys are removed at the end


def upstream_calls(upstream: FakeUpstream, marker: str) -> int:
    """Completion requests the upstream received whose last message carries ``marker``."""
    with upstream.recorder.lock:
        return sum(
            1
            for item in upstream.recorder.requests
            if item["path"].endswith("/chat/completions") and marker in item["body"]["messages"][-1]["content"]
        )


def tokens(events: list[Received]) -> list[str]:
    return [event.data["content"] for event in events if event.type == "token"]


def marked(text: str = "") -> tuple[str, str]:
    """A message no other test sends, and its marker."""
    marker = uuid.uuid4().hex
    return marker, f"tell me about sleep {marker} {text}".strip()


def start_all(servers: list[GunicornServer]) -> list[GunicornServer]:
    """Start several servers at once: their start-ups overlap."""
    with ThreadPoolExecutor(len(servers)) as pool:
        return list(pool.map(GunicornServer.start, servers))


@pytest.fixture(scope="module")
def cached_server(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One server with the memory cache for the tests that need no other settings (each uses its own messages)."""
    folder = tmp_path_factory.mktemp("cache")
    env = {**_server_env(upstream, f"sqlite:///{folder / 'chat.sqlite3'}"), "CHAT_MODELS": "test-model,other-model"}
    running = GunicornServer({**env, "RESPONSE_CACHE": "memory"}, folder / "gunicorn.log").start()
    yield running
    running.stop()


Hosts = dict[str, GunicornServer]


@pytest.fixture(scope="module")
def redis_hosts(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    """Hosts with the Redis cache, started together: ``briefly`` and ``briefly_too`` share one system prompt,
    ``at_length`` has another (and a 2 s TTL); ``no_redis`` points at a port where no Redis listens."""
    folder = tmp_path_factory.mktemp("redis-cache")
    env = {**_server_env(upstream, f"sqlite:///{folder / 'chat.sqlite3'}"), "RESPONSE_CACHE": "redis"}
    briefly = {**env, "REDIS_URL": REDIS_URL, "SYSTEM_PROMPT": "Answer briefly.", "RESPONSE_CACHE_TTL": "30"}
    settings = {
        "briefly": briefly,
        "briefly_too": briefly,
        "at_length": {**briefly, "SYSTEM_PROMPT": "Answer at length.", "RESPONSE_CACHE_TTL": "2"},
        "no_redis": {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
    }
    hosts = {name: GunicornServer(value, folder / f"gunicorn-{name}.log") for name, value in settings.items()}
    try:
        start_all(list(hosts.values()))
        yield hosts
    finally:
        for running in hosts.values():
            running.stop()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=KEY_PREFIX + "*"):
            client.delete(key)


def usage_totals(url: str) -> dict[str, dict[str, int]]:
    report: dict[str, dict[str, int]] = httpx.get(url + "/api/v1/ai/usage", timeout=10).json()["total"]
    return report


def grown(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], kind: str, field: str) -> int:
    return after[kind][field] - before[kind][field]


def test_a_repeated_first_message_is_answered_from_the_cache(
    cached_server: GunicornServer, upstream: FakeUpstream
) -> None:
    url = cached_server.url
    usage_before, metrics_before = usage_totals(url), scrape(cached_server)
    marker, message = marked("#tokens=6")
    first = stream(url, {"message": message})
    second = stream(url, {"message": message})

    assert upstream_calls(upstream, marker) == 1
    assert "cached" not in first[0].data and second[0].data["cached"] is True
    assert [event.type for event in second] == ["metadata"] + ["token"] * 6 + ["done"]
    assert tokens(second) == tokens(first) and len(tokens(first)) == 6  # the same pieces, not merely the same text
    assert second[-1].data["finishReason"] == "stop"
    assert (
        second[-1].data["usage"]
        == first[-1].data["usage"]
        == {
            "promptTokens": 12,
            "completionTokens": 6,
            "totalTokens": 18,
        }
    )
    assert second[0].data["conversationId"] != first[0].data["conversationId"]

    saved = httpx.get(f"{url}/api/v1/ai/conversations/{second[0].data['conversationId']}", timeout=10).json()
    assert [(item["role"], item["status"]) for item in saved["messages"]] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert saved["messages"][0]["content"] == message
    assert saved["messages"][1]["content"] == "".join(tokens(first))
    assert saved["messages"][1]["id"] == second[0].data["messageId"]

    whole = httpx.post(url + CHAT, json={"message": message}, timeout=10).json()  # the non-streaming endpoint too
    assert whole["cached"] is True and whole["content"] == "".join(tokens(first)) and whole["finishReason"] == "stop"
    assert upstream_calls(upstream, marker) == 1

    usage = usage_totals(url)
    assert [grown(usage_before, usage, "streaming", field) for field in ("replies", "cachedReplies")] == [2, 1]
    assert [grown(usage_before, usage, "streaming", field) for field in ("totalTokens", "cachedTokens")] == [36, 18]
    assert [grown(usage_before, usage, "nonStreaming", field) for field in ("replies", "cachedReplies")] == [1, 1]

    metrics = scrape(cached_server)
    for result, count in (("hit", 2), ("miss", 1)):
        counted = value(metrics, "chat_response_cache_lookups_total", result=result)
        assert counted - value(metrics_before, "chat_response_cache_lookups_total", result=result) == count


def test_the_non_streaming_endpoint_fills_the_cache_for_the_stream(
    cached_server: GunicornServer, upstream: FakeUpstream
) -> None:
    marker, message = marked("#tokens=4")
    whole = httpx.post(cached_server.url + CHAT, json={"message": message}, timeout=10).json()
    assert whole["cached"] is False
    replayed = stream(cached_server.url, {"message": message})
    assert replayed[0].data["cached"] is True and "".join(tokens(replayed)) == whole["content"]
    with ChatClient(cached_server.url) as client:  # the Python client says so too
        assert client.chat(message).cached is True
        first, *rest = client.stream(message)
        assert isinstance(first, Metadata) and first.cached is True and len(rest) == 5
    assert upstream_calls(upstream, marker) == 1


def test_another_model_or_a_turn_with_history_goes_to_the_model(
    cached_server: GunicornServer, upstream: FakeUpstream
) -> None:
    url = cached_server.url
    marker, message = marked("#tokens=3")
    first = stream(url, {"message": message})
    other_model = stream(url, {"message": message, "model": "other-model"})
    assert upstream_calls(upstream, marker) == 2 and "cached" not in other_model[0].data

    follow_up = stream(url, {"message": message, "conversationId": first[0].data["conversationId"]})
    assert upstream_calls(upstream, marker) == 3 and "cached" not in follow_up[0].data
    again = stream(url, {"message": message, "conversationId": first[0].data["conversationId"]})
    assert upstream_calls(upstream, marker) == 4 and "cached" not in again[0].data  # turns with history: never kept

    assert stream(url, {"message": message, "model": "other-model"})[0].data["cached"] is True
    assert upstream_calls(upstream, marker) == 4


@pytest.mark.parametrize(
    "script",
    [
        "#fail_after=2",
        "#error_after=2",
        "#length",
        "#filter_after=2",
        "#malformed_after=2",
        "#tokens=0",
        "#reasoning=3",
    ],
)
def test_errors_cut_unfinished_and_reasoning_replies_are_never_kept(
    cached_server: GunicornServer, upstream: FakeUpstream, script: str
) -> None:
    marker, message = marked(f"#tokens=5 {script}")
    for attempt in (1, 2):
        events = stream(cached_server.url, {"message": message})
        assert "cached" not in events[0].data
        assert upstream_calls(upstream, marker) == attempt


def test_a_client_that_leaves_mid_reply_leaves_nothing_cached(
    cached_server: GunicornServer, upstream: FakeUpstream
) -> None:
    marker, message = marked("#tokens=20 #delay=0.05")
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", cached_server.url + "/api/v1/ai/chat/stream", json={"message": message}) as response,
    ):
        for line in response.iter_lines():
            if '"type":"token"' in line:
                break  # hang up after the first token
    deadline = time.monotonic() + 5
    while upstream.connection_for(marker).closed_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "cached" not in stream(cached_server.url, {"message": message})[0].data
    assert upstream_calls(upstream, marker) == 2


def test_the_memory_cache_is_bounded_and_expires() -> None:
    entries = MemoryReplyCache(ttl=0.3, max_entries=2)
    entries.put("a", b"1")
    entries.put("b", b"2")
    assert entries.get("a") == b"1"  # now b is the least recently used
    entries.put("c", b"3")
    assert (entries.get("a"), entries.get("b"), entries.get("c")) == (b"1", None, b"3")
    time.sleep(0.35)
    assert (entries.get("a"), entries.get("c")) == (None, None)


def test_off_by_default(server: GunicornServer, upstream: FakeUpstream) -> None:
    marker, message = marked("#tokens=2")
    assert ["cached" in stream(server.url, {"message": message})[0].data for _ in range(2)] == [False, False]
    assert upstream_calls(upstream, marker) == 2


def test_the_redis_cache_is_shared_by_hosts_with_the_same_input_and_expires(
    redis_hosts: Hosts, upstream: FakeUpstream
) -> None:
    first, second, other_prompt = redis_hosts["briefly"], redis_hosts["briefly_too"], redis_hosts["at_length"]
    client = redis.Redis.from_url(REDIS_URL)
    marker, message = marked("#tokens=5")

    original = stream(first.url, {"message": message})
    keys = list(client.scan_iter(match=KEY_PREFIX + "*"))
    assert len(keys) == 1 and 0 < client.ttl(keys[0]) <= 30  # one key, expiring with Redis's own EX
    replayed = stream(second.url, {"message": message})
    assert replayed[0].data["cached"] is True and tokens(replayed) == tokens(original)
    assert upstream_calls(upstream, marker) == 1

    assert "cached" not in stream(other_prompt.url, {"message": message})[0].data  # another system prompt
    assert upstream_calls(upstream, marker) == 2
    assert stream(other_prompt.url, {"message": message})[0].data["cached"] is True  # its own entry, for 2 s
    time.sleep(2.1)
    assert "cached" not in stream(other_prompt.url, {"message": message})[0].data
    assert upstream_calls(upstream, marker) == 3


def test_a_redis_that_does_not_answer_is_a_miss_not_an_error(redis_hosts: Hosts, upstream: FakeUpstream) -> None:
    marker, message = marked("#tokens=3")
    for attempt in (1, 2):
        events = stream(redis_hosts["no_redis"].url, {"message": message})
        assert [event.type for event in events] == ["metadata"] + ["token"] * 3 + ["done"]
        assert "cached" not in events[0].data and upstream_calls(upstream, marker) == attempt
    looked_up = scrape(redis_hosts["no_redis"])  # it was asked, and missed
    assert value(looked_up, "chat_response_cache_lookups_total", result="miss") == 2
    assert value(looked_up, "chat_response_cache_lookups_total", result="hit") == 0


def test_settings_are_checked_at_start() -> None:
    assert Settings.from_env({}).response_cache == "off"
    configured = Settings.from_env({"RESPONSE_CACHE": "Memory", "RESPONSE_CACHE_TTL": "5"})
    assert (configured.response_cache, configured.response_cache_ttl) == ("memory", 5)
    for environ in (
        {"RESPONSE_CACHE": "disk"},
        {"RESPONSE_CACHE": "redis"},  # without REDIS_URL
        {"RESPONSE_CACHE_TTL": "0"},
        {"RESPONSE_CACHE_TTL": "an hour"},
        {"RESPONSE_CACHE_MAX_ENTRIES": "0"},
    ):
        with pytest.raises(ConfigError, match=next(iter(environ))):
            Settings.from_env(environ)


def test_the_key_covers_the_whole_input_and_nothing_else() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    key = reply_key(CompletionRequest("m", messages, 100, "request-1"))
    assert key == reply_key(CompletionRequest("m", [dict(item) for item in messages], 100, "request-2"))
    others = [
        CompletionRequest("n", messages, 100),
        CompletionRequest("m", [{"role": "system", "content": "Be long."}, messages[1]], 100),
        CompletionRequest("m", messages[1:], 100),
        CompletionRequest("m", messages, 200),
        CompletionRequest("m", messages, None),
    ]
    assert len({key, *(reply_key(request) for request in others)}) == 1 + len(others)


def test_an_entry_this_version_did_not_write_is_a_miss() -> None:
    reply = CachedReply(("a", " b"), 3, 2)
    assert CachedReply.decode(reply.encode()) == reply
    for stored in (b"", b"not json", b"{}", b"[[], 1, 2, false]", b"[[1], 1, 2, false]", b'[["a"], 1]'):
        assert CachedReply.decode(stored) is None, stored


def test_a_cached_reply_is_byte_exact(cached_server: GunicornServer, upstream: FakeUpstream) -> None:
    """The replay's bytes: the first reply's token events, ``"cached":true`` last in the metadata."""
    marker, message = marked("#tokens=2")
    stream(cached_server.url, {"message": message})
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", cached_server.url + "/api/v1/ai/chat/stream", json={"message": message}) as response,
    ):
        body = response.read().decode()
    assert upstream_calls(upstream, marker) == 1
    sid = re.search(r'"streamId":"([0-9a-f]{32})"', body)
    assert sid is not None
    uuid_ = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    pattern = (
        r"retry: 3000\n\n"
        rf'id: {sid[1]}:0\ndata: \{{"type":"metadata","streamId":"{sid[1]}","conversationId":"{uuid_}",'
        rf'"messageId":"{uuid_}","model":"test-model","requestId":"[^"]+","cached":true\}}\n\n'
        rf'id: {sid[1]}:1\ndata: \{{"type":"token","content":"Baby"\}}\n\n'
        rf'id: {sid[1]}:2\ndata: \{{"type":"token","content":" sleep"\}}\n\n'
        rf'id: {sid[1]}:3\ndata: \{{"type":"done","finishReason":"stop","usage":\{{"promptTokens":12,'
        r'"completionTokens":2,"totalTokens":14\},"tokensPerSecond":[0-9.]+\}\n\n'
    )
    assert re.fullmatch(pattern, body), body
