"""The locust load test runs headless against the real service and reports its two SSE entries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ServerFactory
from tests.servers import ROOT


@pytest.mark.parametrize(("user", "kind"), [("StreamingChatUser", "SSE"), ("WebSocketChatUser", "WS")])
def test_locustfile_streams_and_reports_first_token_and_full_stream(
    server_factory: ServerFactory, user: str, kind: str
) -> None:
    server = server_factory(MAX_STREAMS_PER_USER="100", TOKEN_BUDGET="100000000/hour")
    command = [
        sys.executable, "-m", "locust", "-f", "bench/locustfile.py", "--host", server.url, "--headless",
        "-u", "5", "-r", "5", "-t", "4s", "--stop-timeout", "5", "--json", "--only-summary", user,
    ]  # fmt: skip
    env = {"CHAT_MESSAGE": "locust smoke #tokens=10 #delay=0.02", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    entries = {item["name"]: item for item in json.loads(result.stdout) if item["method"] == kind}
    assert set(entries) >= {"first token", "full stream"}
    full = entries["full stream"]
    assert full["num_requests"] > 5
    assert full["num_failures"] == 0
    assert entries["first token"]["num_requests"] == full["num_requests"]
    assert full["total_content_length"] == 10 * full["num_requests"]  # tokens counted per stream
