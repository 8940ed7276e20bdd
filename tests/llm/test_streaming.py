"""UpstreamStream against a real OpenAI-compatible server, through the real SDK (nothing patched)."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
import weakref

import httpx2
import pytest

from service.config import Settings
from service.errors import ContentFiltered, UpstreamFailed, UpstreamUnavailable
from service.llm.body_reader import ChunkedBodyReader, H11BodyReader
from service.llm.providers import build_client
from service.llm.streaming import CompletionRequest, StreamingService, UpstreamStream
from service.metrics import upstream_pool_size
from tests.fake_upstream import FakeUpstream
from tests.servers import ROOT


def service_for(base_url: str, attempts: int = 3) -> StreamingService:
    settings = Settings.from_env({"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k"})
    return StreamingService(build_client(settings.with_overrides({"upstream_attempts": attempts})))


def open_stream(upstream: FakeUpstream, message: str) -> UpstreamStream:
    return service_for(upstream.base_url).open(CompletionRequest("test-model", [{"role": "user", "content": message}]))


def test_tokens_in_order_with_usage_from_final_chunk(upstream: FakeUpstream) -> None:
    stream = open_stream(upstream, "order #tokens=5")
    text = [token for batch in stream.batches() for token in batch]
    assert text == ["Baby", " sleep", " patterns", " change", " a"]
    assert stream.finish_reason == "stop"
    assert stream.usage == (12, 5)
    body = upstream.recorder.requests[-1]["body"]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_azure_filter_only_and_empty_choice_chunks_are_skipped(upstream: FakeUpstream) -> None:
    stream = open_stream(upstream, "azure #tokens=4 #azure")
    assert "".join(token for batch in stream.batches() for token in batch) == "Baby sleep patterns change"


def test_missing_usage_leaves_usage_unset_and_counts_deltas(upstream: FakeUpstream) -> None:
    stream = open_stream(upstream, "nousage #tokens=6 #no_usage")
    assert sum(len(batch) for batch in stream.batches()) == 6
    assert stream.usage is None
    assert stream.deltas == 6


def test_content_filter_finish_becomes_content_filtered_after_the_tokens_before_it(upstream: FakeUpstream) -> None:
    stream = open_stream(upstream, "filter #tokens=6 #filter_after=3")
    seen: list[str] = []
    with pytest.raises(ContentFiltered):
        for batch in stream.batches():
            seen.extend(batch)
    assert seen == ["Baby", " sleep", " patterns"]


def test_error_object_mid_stream_is_upstream_failed(upstream: FakeUpstream) -> None:
    stream = open_stream(upstream, "midstream #tokens=6 #error_after=2")
    with pytest.raises(UpstreamFailed):
        list(stream.batches())


def test_dropped_connection_mid_stream_is_upstream_failed(upstream: FakeUpstream) -> None:
    stream = open_stream(upstream, "dropped #tokens=6 #fail_after=2")
    with pytest.raises(UpstreamFailed):
        list(stream.batches())


def test_5xx_is_retried_three_attempts_in_all_then_succeeds(upstream: FakeUpstream) -> None:
    stream = open_stream(upstream, "flaky #tokens=2 #status=503x2")
    assert [token for batch in stream.batches() for token in batch] == ["Baby", " sleep"]
    assert upstream.recorder.attempts["flaky #tokens=2 #status=503x2"] == 3


@pytest.mark.parametrize("linger", ["", " #one_write", " #linger=0.2"])
def test_a_finished_body_leaves_its_connection_in_the_pool_for_the_next_request(
    upstream: FakeUpstream, linger: str
) -> None:
    """The chunked body is decoded off the socket, not by h11; h11 must still see it end, or the connection
    could not be reused (each request would open a new one). Whether the body's end comes in the read of
    ``[DONE]`` (``#one_write``: closed at once) or after it (``#linger``: a greenlet drains it)."""
    service = service_for(upstream.base_url)
    for index in range(3):
        message = f"reuse{linger} {index} #tokens=40 #keepalive{linger}"
        stream = service.open(CompletionRequest("m", [{"role": "user", "content": message}]))
        assert sum(len(batch) for batch in stream.batches()) == 40
        if linger:
            assert (stream._drained is not None) == ("linger" in linger)
        if stream._drained is not None:
            stream._drained.join(5)
        assert upstream_pool_size(service.client._client) == 1
    ports = {upstream.connection_for(f"reuse{linger} {index} ").peer_port for index in range(3)}
    assert len(ports) == 1


@pytest.mark.parametrize("status", ["500", "429", "503"])
def test_persistent_failure_is_upstream_unavailable_after_three_attempts(upstream: FakeUpstream, status: str) -> None:
    message = f"streaming down #status={status}"  # the upstream counts attempts per message: keep it unique
    with pytest.raises(UpstreamUnavailable):
        open_stream(upstream, message)
    assert upstream.recorder.attempts[message] == 3


def test_connection_refused_is_upstream_unavailable() -> None:
    from tests.servers import free_port

    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        service_for(f"http://127.0.0.1:{free_port()}/v1").open(
            CompletionRequest("m", [{"role": "user", "content": "x"}])
        )
    assert time.monotonic() - started > 0.5, "expected backoff between the three attempts"


def test_generator_exit_closes_the_upstream_connection(upstream: FakeUpstream) -> None:
    stream = open_stream(upstream, "abandon #tokens=20 #delay=0.05")
    batches = stream.batches()
    next(batches)
    batches.close()
    deadline = time.monotonic() + 2
    connection = upstream.connection_for("abandon")
    while connection.closed_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert connection.closed_at is not None
    assert not connection.completed


def test_azure_routes_by_deployment_with_api_version_and_key(upstream: FakeUpstream) -> None:
    endpoint = upstream.base_url.removesuffix("/v1")
    settings = Settings.from_env(
        {
            "AZURE_OPENAI_ENDPOINT": endpoint,
            "AZURE_OPENAI_API_KEY": "azure-key",
            "OPENAI_API_VERSION": "2024-10-21",
            "CHAT_MODEL": "my-deployment",
        }
    )
    service = StreamingService(build_client(settings))
    stream = service.open(CompletionRequest("my-deployment", [{"role": "user", "content": "azure route #tokens=2"}]))
    assert [token for batch in stream.batches() for token in batch] == ["Baby", " sleep"]
    request = upstream.recorder.requests[-1]
    assert request["path"] == "/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21"
    assert request["headers"]["api-key"] == "azure-key"


def test_tokens_that_came_in_with_the_headers_are_on_hand_without_waiting(upstream: FakeUpstream) -> None:
    stream = open_stream(upstream, "fast #tokens=5 #one_write")
    assert stream.next_batch(wait=False) == ["Baby", " sleep", " patterns", " change", " a"]
    assert stream.next_batch() is None
    assert stream.finish_reason == "stop"


def test_a_model_slow_to_start_leaves_nothing_on_hand_and_no_wait(upstream: FakeUpstream) -> None:
    stream = open_stream(upstream, "slow start #tokens=3 #first_delay=1")
    started = time.monotonic()
    assert stream.next_batch(wait=False) == []
    assert time.monotonic() - started < 0.2  # the metadata goes out at once, not after the model's first token
    assert [token for batch in stream.batches() for token in batch] == ["Baby", " sleep", " patterns"]


def test_an_open_stream_lets_go_of_its_sent_request(upstream: FakeUpstream) -> None:
    """The request's headers, URL and body are not needed once the response is in; a stream that stays open for
    minutes must not keep them (memory per open stream)."""
    service = service_for(upstream.base_url)
    sent: list[weakref.ref[httpx2.Request]] = []
    service.client._client.event_hooks = {"request": [lambda request: sent.append(weakref.ref(request))]}
    stream = service.open(CompletionRequest("m", [{"role": "user", "content": "held open #tokens=3 #delay=0.05"}]))
    gc.collect()
    assert len(sent) == 1
    assert sent[0]() is None  # released while the stream is still open...
    assert [token for batch in stream.batches() for token in batch] == ["Baby", " sleep", " patterns"]  # ...and whole


def test_a_finished_stream_lets_go_of_its_response(upstream: FakeUpstream) -> None:
    """A finished stream stays replayable for minutes; its upstream response and reader are not needed for that."""
    service = service_for(upstream.base_url)
    received: list[weakref.ref[httpx2.Response]] = []
    service.client._client.event_hooks = {"response": [lambda response: received.append(weakref.ref(response))]}
    stream = service.open(CompletionRequest("m", [{"role": "user", "content": "let go #tokens=3 #keepalive"}]))
    assert [token for batch in stream.batches() for token in batch] == ["Baby", " sleep", " patterns"]
    if stream._drained is not None:  # the body's end came after [DONE]
        stream._drained.join(5)
    gc.collect()
    assert len(received) == 1
    assert received[0]() is None
    assert stream.finish_reason == "stop"
    assert stream.next_batch() is None


def test_a_chunked_provider_body_takes_the_chunked_fast_path(upstream: FakeUpstream) -> None:
    """If a new httpx2 / httpcore2 / h11 moved the internals the reader reaches into, the body would still stream
    through ``iter_bytes()``, slower and unnoticed: this fails instead."""
    stream = open_stream(upstream, "fast chunked #tokens=3")
    assert stream.next_batch() is not None
    assert type(stream._reader) is ChunkedBodyReader
    assert stream.wakeable


def test_a_sized_body_takes_the_h11_fast_path(upstream: FakeUpstream) -> None:
    stream = open_stream(upstream, "fast sized #tokens=3 #sized")
    first = stream.next_batch()
    assert type(stream._reader) is H11BodyReader
    rest = [token for batch in stream.batches() for token in batch]
    assert (first or []) + rest == ["Baby", " sleep", " patterns"]


def test_under_gevent_the_pools_idle_checks_use_the_real_poll() -> None:
    """httpcore2's idle-connection check is pointed at the unpatched ``poll`` in a gevent worker (providers.py)."""
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import httpcore2._utils as utils\n"
        "from service.config import Settings\n"
        "from service.llm.providers import build_clients\n"
        "build_clients(Settings(openai_api_key='k'), count=1)\n"
        "assert utils.select.poll is monkey.get_original('select', 'poll'), utils.select\n"
        "print('real poll')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "real poll"), done.stderr
