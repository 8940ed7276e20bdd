"""The local backend against the real llama-server and the real packaged model.

No mocks: these start llama.cpp's server with SmolLM2-135M (about a second each
time). ``SKIP_LOCAL_MODEL=1`` skips them; otherwise a missing install fails, with
the install hint, rather than silently skipping.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import openai
import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionMessageParam

from service.local_model import (
    INSTALL_HINT,
    LocalModelOptions,
    LocalModelServer,
    LocalModelStartError,
    LocalModelUnavailable,
    find_default_model,
    find_server_binary,
)

pytestmark = pytest.mark.local_model

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Tell me about baby sleep patterns"
COMMON_WORDS = {"the", "a", "and", "to", "of", "is", "in", "your", "baby", "sleep"}
# llama-server flags the service adds, with their default values (bench/demo_replies.py measured them).
SAMPLING_DEFAULTS = {
    "-n": "512",
    "--temp": "0.2",
    "--top-p": "0.9",
    "--min-p": "0.05",
    "--repeat-penalty": "1.1",
    "--repeat-last-n": "64",
    "--dry-multiplier": "0.8",
    "--dry-base": "1.75",
    "--dry-allowed-length": "2",
    "--dry-penalty-last-n": "512",
}


def _skip_if_asked() -> None:
    if os.environ.get("SKIP_LOCAL_MODEL") == "1":
        pytest.skip("SKIP_LOCAL_MODEL=1")


@pytest.fixture(scope="module")
def server() -> Iterator[LocalModelServer]:
    _skip_if_asked()
    srv = LocalModelServer(LocalModelOptions())
    try:
        srv.start()
    except LocalModelUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield srv
    finally:
        srv.stop()


def _alive(pid: int) -> bool:
    """Any thread of ``pid`` still running, per /proc; zombies count as gone.

    A multithreaded process's leader shows ``Z`` while its other threads are still
    exiting, and the parent cannot reap it until they are done: check every thread.
    """
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return False
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return True
    return False


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _servers_on_port(port: int) -> list[int]:
    """Pids of any live llama-server started with ``--port port``."""
    wanted = [b"--port", str(port).encode()]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        pairs = [argv[i : i + 2] for i in range(len(argv) - 1)]
        if argv[0].endswith(b"llama-server") and wanted in pairs and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _stream(srv: LocalModelServer, max_tokens: int = 64) -> tuple[list[str], CompletionUsage | None]:
    client = openai.OpenAI(base_url=srv.base_url, api_key="local", timeout=60)
    stream = client.chat.completions.create(
        model=srv.options.model_name,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=max_tokens,
        temperature=0,
    )
    pieces: list[str] = []
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    return pieces, usage


def test_binary_and_model_are_installed() -> None:
    _skip_if_asked()
    try:
        binary = find_server_binary()
        model = find_default_model()
    except LocalModelUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    assert binary.name == "llama-server"
    assert model.suffix == ".gguf"
    assert model.stat().st_size > 50_000_000


def test_from_env_reads_and_rejects() -> None:
    opts = LocalModelOptions.from_env({"LOCAL_MODEL_THREADS": "2", "LOCAL_MODEL_SLOTS": "2", "LOCAL_MODEL_PORT": "9"})
    assert (opts.threads, opts.slots, opts.port, opts.context) == (2, 2, 9, 8192)
    assert LocalModelOptions.from_env({}) == LocalModelOptions()
    for name, value in [
        ("LOCAL_MODEL_THREADS", "two"),
        ("LOCAL_MODEL_SLOTS", "0"),
        ("LOCAL_MODEL_CONTEXT", "100"),
        ("LOCAL_MODEL_PORT", "70000"),
        ("LOCAL_MODEL_PATH", "/nonexistent/model.gguf"),
    ]:
        with pytest.raises(ValueError, match=name):
            LocalModelOptions.from_env({name: value})
    assert "--no-deps" in INSTALL_HINT


def _flags(options: LocalModelOptions) -> dict[str, str]:
    """The command line's ``--flag value`` pairs (the binary and the model must be installed)."""
    _skip_if_asked()
    srv = LocalModelServer(replace(options, port=options.port or 9))  # command() needs a port; nothing starts
    try:
        cmd = srv.command()
    except LocalModelUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    return {flag: value for flag, value in itertools.pairwise(cmd) if flag.startswith("-")}


def test_command_carries_the_sampling_defaults() -> None:
    flags = _flags(LocalModelOptions.from_env({}))
    assert {flag: flags.get(flag) for flag in SAMPLING_DEFAULTS} == SAMPLING_DEFAULTS


def test_sampling_overrides_and_bad_values() -> None:
    opts = LocalModelOptions.from_env(
        {
            "LOCAL_MODEL_MAX_TOKENS": "128",
            "LOCAL_MODEL_TEMPERATURE": "0",
            "LOCAL_MODEL_TOP_P": "1",
            "LOCAL_MODEL_MIN_P": "0.1",
            "LOCAL_MODEL_REPEAT_PENALTY": "1.0",
            "LOCAL_MODEL_REPEAT_LAST_N": "0",
            "LOCAL_MODEL_DRY_MULTIPLIER": "0",
            "LOCAL_MODEL_DRY_BASE": "2",
            "LOCAL_MODEL_DRY_ALLOWED_LENGTH": "3",
            "LOCAL_MODEL_DRY_PENALTY_LAST_N": "512",
        }
    )
    flags = _flags(opts)
    assert {flag: flags.get(flag) for flag in SAMPLING_DEFAULTS} == {
        "-n": "128",
        "--temp": "0.0",
        "--top-p": "1.0",
        "--min-p": "0.1",
        "--repeat-penalty": "1.0",
        "--repeat-last-n": "0",
        "--dry-multiplier": "0.0",
        "--dry-base": "2.0",
        "--dry-allowed-length": "3",
        "--dry-penalty-last-n": "512",
    }
    for name, value in [
        ("LOCAL_MODEL_MAX_TOKENS", "0"),
        ("LOCAL_MODEL_MAX_TOKENS", "lots"),
        ("LOCAL_MODEL_TEMPERATURE", "warm"),
        ("LOCAL_MODEL_TEMPERATURE", "-0.5"),
        ("LOCAL_MODEL_TEMPERATURE", "nan"),
        ("LOCAL_MODEL_TOP_P", "1.5"),
        ("LOCAL_MODEL_MIN_P", "-0.1"),
        ("LOCAL_MODEL_REPEAT_PENALTY", "inf"),
        ("LOCAL_MODEL_REPEAT_LAST_N", "-1"),  # llama-server rejects -1 for both
        ("LOCAL_MODEL_DRY_MULTIPLIER", "-1"),
        ("LOCAL_MODEL_DRY_BASE", "0.5"),
        ("LOCAL_MODEL_DRY_ALLOWED_LENGTH", "0"),
        ("LOCAL_MODEL_DRY_PENALTY_LAST_N", "-1"),
        ("LOCAL_MODEL_DRY_PENALTY_LAST_N", "1.5"),
    ]:
        with pytest.raises(ValueError, match=name):
            LocalModelOptions.from_env({name: value})


def test_none_leaves_a_sampling_flag_out() -> None:
    flags = _flags(LocalModelOptions(max_tokens=None, dry_multiplier=None, temperature=None))
    assert "-n" not in flags and "--dry-multiplier" not in flags and "--temp" not in flags
    assert flags["--repeat-penalty"] == SAMPLING_DEFAULTS["--repeat-penalty"]


def test_max_tokens_is_the_default_reply_cap() -> None:
    """-n caps a request that sets no max_tokens (the service sends none unless MAX_COMPLETION_TOKENS is set)."""
    _skip_if_asked()
    srv = LocalModelServer(LocalModelOptions(slots=1, context=1024, max_tokens=16))
    srv.start()
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="local", timeout=60)
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Write a long story about a dragon."}]
        capped = client.chat.completions.create(model=srv.options.model_name, messages=messages)
        asked = client.chat.completions.create(model=srv.options.model_name, messages=messages, max_tokens=48)
    finally:
        srv.stop()
    assert capped.usage is not None and asked.usage is not None
    assert (capped.usage.completion_tokens, capped.choices[0].finish_reason) == (16, "length")
    assert asked.usage.completion_tokens > 16  # a request's own max_tokens wins


def test_starts_and_reports_healthy(server: LocalModelServer) -> None:
    assert server.is_healthy()
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    with urllib.request.urlopen(f"{server.base_url}/models", timeout=5) as resp:
        models = json.load(resp)
    assert server.options.model_name in [m["id"] for m in models["data"]]


def test_streams_english_with_usage(server: LocalModelServer) -> None:
    pieces, usage = _stream(server)
    text = "".join(pieces)
    assert len(pieces) >= 20, text
    letters = [c for c in text if not c.isspace()]
    assert sum(c.isascii() for c in letters) / len(letters) > 0.95, text
    words = {w.strip(".,:;!?*\"'()").lower() for w in text.split()}
    assert len(words & COMMON_WORDS) >= 2, text
    assert usage is not None, "no usage chunk despite include_usage"
    assert usage.completion_tokens >= 20
    assert usage.prompt_tokens > 0


def test_four_concurrent_streams(server: LocalModelServer) -> None:
    results: list[int] = []

    def run() -> None:
        pieces, _ = _stream(server, max_tokens=24)
        results.append(len(pieces))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 4 and min(results) >= 10, results


def test_restarts_after_sigkill(server: LocalModelServer) -> None:
    old_pid = server.pid
    assert old_pid is not None
    base_url = server.base_url
    assert server.ensure_running() is False  # alive: nothing to do

    os.kill(old_pid, signal.SIGKILL)
    assert _wait_gone(old_pid)
    # The kernel reports the exit to waitpid a moment after the last thread is gone;
    # until then the process still counts as running and nothing is restarted.
    deadline = time.monotonic() + 5
    while not server.ensure_running():
        assert time.monotonic() < deadline, "ensure_running() never saw the death"
        time.sleep(0.01)
    assert server.pid not in (None, old_pid)
    assert server.is_healthy()
    assert server.base_url == base_url  # the port survives restarts
    pieces, usage = _stream(server, max_tokens=16)
    assert pieces and usage is not None


def test_supervisor_restarts_in_background(server: LocalModelServer) -> None:
    thread = server.supervise(interval=0.2)
    assert thread.daemon and thread.is_alive()
    old_pid = server.pid
    assert old_pid is not None
    restarts = server.restarts
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.restarts > restarts and server.is_healthy():
            break
        time.sleep(0.1)
    assert server.restarts == restarts + 1
    assert server.pid not in (None, old_pid)


def test_stop_leaves_no_process() -> None:
    _skip_if_asked()
    srv = LocalModelServer(LocalModelOptions(slots=1, context=1024))
    srv.start()
    srv.supervise(interval=0.2)
    pid = srv.pid
    assert pid is not None and _alive(pid)
    assert _servers_on_port(srv.port) == [pid]
    log_path = srv.log_path

    srv.stop()
    assert not _alive(pid)
    assert _servers_on_port(srv.port) == []
    assert not srv.is_healthy()
    assert not log_path.exists()
    srv.stop()  # idempotent
    assert srv.ensure_running() is False  # stopped means stopped
    time.sleep(0.5)  # the supervisor would have restarted it by now
    assert _servers_on_port(srv.port) == []


def test_busy_port_fails_with_the_log_tail() -> None:
    _skip_if_asked()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = LocalModelServer(LocalModelOptions(port=port, slots=1, context=1024))
        try:
            with pytest.raises(LocalModelStartError, match="couldn't bind"):
                srv.start(timeout=30)
        finally:
            srv.stop()


CHILD_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from service.local_model import LocalModelOptions, LocalModelServer

    options = LocalModelOptions(slots=1, context=1024)
    srv = LocalModelServer(options, log_path=Path(sys.argv[1]))
    srv.start()
    srv.supervise()
    print(srv.pid, srv.port, flush=True)
    time.sleep(600)
    """
)


def test_child_dies_with_a_hard_killed_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: SIGKILL of the parent takes llama-server down too."""
    _skip_if_asked()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, str(tmp_path / "llama-server.log")],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = None
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, f"parent exited with {parent.wait()} before starting the server"
        child_pid, port = (int(x) for x in line.split())
        assert _alive(child_pid)
        assert _servers_on_port(port) == [child_pid]

        parent.kill()  # SIGKILL: no atexit, no stop(), no chance to clean up
        parent.wait(10)

        assert _wait_gone(child_pid), "llama-server outlived its parent"
        assert _servers_on_port(port) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child_pid is not None and _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)
