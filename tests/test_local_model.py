"""The embedded local default: a real small model behind llama-server, reached by the service through the
openai SDK exactly like any other provider. Needs ``scripts/install-local-model`` (the test command runs it)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import GunicornServer
from tests.sse import Received, stream

pytestmark = pytest.mark.local_model
PROVIDER_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT", "CHAT_MODEL", "LOCAL_MODEL_URL")


def llama_children(master_pid: int) -> list[int]:
    """llama-server children of the master, whichever of its threads started them (a restart comes from the
    supervisor thread, and /proc lists children per thread)."""
    found = []
    for task in Path(f"/proc/{master_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if "llama-server" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(pid))
            except FileNotFoundError:
                continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def local_server(tmp_path: Path) -> GunicornServer:
    server = GunicornServer(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'local.sqlite3'}",
            "MAX_COMPLETION_TOKENS": "60",
            "MAX_STREAMS_PER_USER": "8",
            "LOG_LEVEL": "info",
        },
        tmp_path / "gunicorn.log",
        workers=2,
    )
    for name in PROVIDER_VARIABLES:
        server.env.pop(name, None)
    return server


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    server = local_server(tmp_path_factory.mktemp("local")).start(timeout=180)
    yield server
    server.stop()


def assert_real_reply(events: list[Received]) -> None:
    tokens = [event.data["content"] for event in events if event.type == "token"]
    assert events[-1].type == "done", events[-1].data
    assert len(tokens) >= 20
    text = "".join(tokens)
    assert len(re.findall(r"\b[A-Za-z]{3,}\b", text)) >= 10, text
    usage = events[-1].data["usage"]
    assert usage["completionTokens"] >= 20
    assert "estimated" not in usage


def test_streams_a_real_reply_from_the_local_model(local: GunicornServer) -> None:
    events = stream(local.url, {"message": "Tell me about baby sleep patterns"})
    assert events[0].data["model"] == "smollm2-135m-instruct"
    assert_real_reply(events)


def test_four_concurrent_streams_all_complete(local: GunicornServer) -> None:
    results: list[list[Received]] = []

    def ask(topic: str) -> None:
        results.append(stream(local.url, {"message": f"Tell me about {topic}"}))

    topics = ("baby sleep patterns", "the moon", "bread baking", "rivers")
    threads = [threading.Thread(target=ask, args=(topic,)) for topic in topics]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 4
    for events in results:
        assert_real_reply(events)


def test_readyz_reports_the_local_model_and_one_server_per_host(local: GunicornServer) -> None:
    ready = httpx.get(f"{local.url}/readyz").json()
    assert ready["checks"]["localModel"] == "ok"
    assert ready["checks"]["model"] == "openai:smollm2-135m-instruct"
    assert local.process is not None
    assert len(llama_children(local.process.pid)) == 1  # one for the host, not one per worker (2 here)


def test_model_server_is_restarted_when_it_dies(local: GunicornServer) -> None:
    assert local.process is not None
    (first,) = llama_children(local.process.pid)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = [pid for pid in llama_children(local.process.pid) if pid != first and alive(pid)]
        if children and httpx.get(f"{local.url}/readyz").json()["checks"].get("localModel") == "ok":
            break
        time.sleep(0.5)
    else:
        pytest.fail("llama-server was not restarted")
    assert_real_reply(stream(local.url, {"message": "Tell me about baby sleep patterns"}))


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_no_orphan_after_sigterm_or_ctrl_c(tmp_path: Path, stop_signal: signal.Signals) -> None:
    server = local_server(tmp_path).start(timeout=180)
    assert server.process is not None
    (model_pid,) = llama_children(server.process.pid)
    server.process.send_signal(stop_signal)
    server.process.wait(30)
    deadline = time.monotonic() + 10
    while alive(model_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(model_pid)


def test_a_configured_provider_turns_the_local_model_off(tmp_path: Path) -> None:
    server = local_server(tmp_path)
    server.env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"
    server.start()
    try:
        assert server.process is not None
        assert llama_children(server.process.pid) == []
        assert "localModel" not in httpx.get(f"{server.url}/readyz").json()["checks"]
    finally:
        server.stop()


@pytest.fixture(scope="module")
def small_window(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """The local model with 512 tokens a slot (``-c 2048 -np 4``): a window that fills in a few turns, and turns
    cheap enough for the suite. The window is read from the model server itself, not from this setting."""
    server = local_server(tmp_path_factory.mktemp("small-window"))
    server.env.update({"LOCAL_MODEL_CONTEXT": "2048", "WEB_CONCURRENCY": "1"})
    yield server.start(timeout=180)
    server.stop()


def test_a_long_conversation_keeps_streaming_as_its_window_fills(small_window: GunicornServer) -> None:
    """Twelve turns of ~100-token messages overflow the 512-token window by the third: every turn still streams
    a reply, the model is never sent more than its window (it would refuse), the oldest turns are left out, and
    the metadata says how many."""
    paragraph = " ".join(f"Point {index}: babies wake at night and settle with a calm routine." for index in range(6))
    conversation = None
    omitted = []
    for turn in range(12):
        body = {"message": f"Turn {turn}. {paragraph} Summarise this in one line."}
        if conversation:
            body["conversationId"] = conversation
        events = stream(small_window.url, body)
        assert events[-1].type == "done", (turn, events[-1].data)
        assert any(event.type == "token" for event in events), turn
        conversation = events[0].data["conversationId"]
        omitted.append(events[0].data.get("omittedTurns", 0))
        assert events[-1].data["usage"]["promptTokens"] <= 512 - 60, turn
    assert omitted[0] == 0
    assert omitted[-1] >= 4  # the window filled, and the oldest turns made room
    assert "retrying with fewer" not in small_window.log()  # fitted before sending: the model never refused
    saved = httpx.get(f"{small_window.url}/api/v1/ai/conversations/{conversation}").json()
    assert len(saved["messages"]) == 24  # every turn is kept in the conversation itself


def test_a_message_too_long_for_the_window_alone_is_context_too_long(small_window: GunicornServer) -> None:
    response = httpx.post(f"{small_window.url}/api/v1/ai/chat/stream", json={"message": "xq7 " * 400}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_too_long"
