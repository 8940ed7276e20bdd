"""Request ids and logs under real gunicorn: ``X-Request-ID`` taken (when sane) or made, returned, put in the
``metadata`` event, sent on to the provider, and on every log line about the request; the logs are one JSON
object a line, gunicorn's access log included; message text never appears in them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from tests.conftest import ServerFactory
from tests.fake_upstream import FakeUpstream

STREAM = "/api/v1/ai/chat/stream"


def events_of(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


def log_records(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        if line.strip():
            records.append(json.loads(line))  # every line is one JSON object
    return records


def test_a_request_id_follows_the_reply_everywhere(server_factory: ServerFactory, upstream: FakeUpstream) -> None:
    server = server_factory(LOG_FORMAT="json", LOG_LEVEL="info")
    secret_words = f"confidential-{uuid.uuid4().hex}"
    given = f"client-{uuid.uuid4().hex[:12]}"
    response = httpx.post(
        server.url + STREAM, json={"message": f"{secret_words} #tokens=4"}, headers={"X-Request-ID": given}, timeout=10
    )
    assert response.headers["X-Request-ID"] == given
    events = events_of(response)
    assert events[0]["requestId"] == given and events[-1]["type"] == "done"
    sent = [item for item in upstream.recorder.requests if secret_words in json.dumps(item["body"])]
    sent_ids = [{name.lower(): value for name, value in item["headers"].items()}.get("x-request-id") for item in sent]
    assert sent_ids == [given]
    sent_headers = {name.lower() for name in sent[0]["headers"]}
    assert not {name for name in sent_headers if name.startswith("x-stainless")}  # no SDK telemetry: host, versions
    assert {"authorization", "content-type", "user-agent"} <= sent_headers

    made = httpx.post(server.url + STREAM, json={"message": "no id given #tokens=2"}, timeout=10)
    made_id = made.headers["X-Request-ID"]
    assert len(made_id) == 32 and events_of(made)[0]["requestId"] == made_id
    forged = httpx.post(
        server.url + STREAM, json={"message": "forged #tokens=1"}, headers={"X-Request-ID": 'x" level=admin'}
    )
    assert forged.headers["X-Request-ID"] != 'x" level=admin' and len(forged.headers["X-Request-ID"]) == 32
    refused = httpx.post(server.url + STREAM, json={"nope": 1}, headers={"X-Request-ID": "refused-1"})
    assert refused.status_code == 400 and refused.headers["X-Request-ID"] == "refused-1"

    server.stop()  # the access lines are written after each response; stopping flushes them all
    log = server.log_path.read_text()
    assert secret_words not in log  # neither the message nor the reply's tokens are logged
    records = log_records(log)
    ours = [record for record in records if record.get("request_id") == given]
    access = [record for record in ours if record.get("logger") == "gunicorn.access"]
    assert len(access) == 1 and access[0]["path"] == STREAM and access[0]["status"] == 200
    assert access[0]["bytes"] > 0 and access[0]["duration_ms"] >= 0
    ended = [record for record in ours if record.get("logger") == "service.replies"]
    assert len(ended) == 1
    assert ended[0]["outcome"] == "done" and ended[0]["tokens"] == 4 and ended[0]["model"] == "test-model"
    assert ended[0]["conversation_id"] == events[0]["conversationId"] and ended[0]["ttft_ms"] >= 0
    assert ended[0]["streamed"] is True and ended[0]["duration_ms"] >= ended[0]["ttft_ms"]
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    refused_access = [r for r in records if r.get("request_id") == "refused-1" and r["logger"] == "gunicorn.access"]
    assert [record["status"] for record in refused_access] == [400]


def test_text_logs_for_a_terminal(server_factory: ServerFactory) -> None:
    server = server_factory(LOG_FORMAT="text", LOG_LEVEL="info")
    response = httpx.post(server.url + STREAM, json={"message": "plain #tokens=2"}, headers={"X-Request-ID": "txt-1"})
    assert response.status_code == 200
    server.stop()
    lines = [line for line in server.log_path.read_text().splitlines() if "txt-1" in line]
    assert any(f'"POST {STREAM} HTTP/1.1" 200' in line for line in lines)  # the access line
    assert any("reply ended" in line and "outcome=done" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)
