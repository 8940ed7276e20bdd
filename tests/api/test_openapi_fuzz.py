"""Schemathesis against the served ``/openapi.json`` of a real gunicorn server with auth on.

Every operation is fuzzed with no token, with Alice's token and with Bob's token: no 5xx, every response as the
document says (status, content type, body schema, headers). Alice owns a saved conversation, a finished stream
(kept for replay) and a live stream; every case of an operation that takes one of those ids is sent again with
Alice's real ids as Bob and with no token, which must be refused (404 / 401) and leave Alice's data as it was.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.config import SchemathesisConfig

from service.openapi import build_spec
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer
from tests.sse import open_raw_stream, stream
from tests.test_auth import SECRET, bearer, token

API = "/api/v1/ai"
# Bounded so that the whole module stays well under two minutes on two shared cores.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
CONFIG = {
    "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "deterministic": True},
    "phases": {"stateful": {"enabled": False}},
    "checks": {
        # A made-up id is a 404 and a request without a token a 401: valid data is not always accepted.
        "positive_data_acceptance": {"enabled": False},
        # Stateful resource checks need links the document does not declare.
        "use_after_free": {"enabled": False},
        "ensure_resource_availability": {"enabled": False},
    },
    "request-timeout": 30,
}


@dataclass(frozen=True)
class AliceData:
    """What Alice owns while the others fuzz."""

    conversation_id: str
    conversation: dict[str, Any]
    finished_stream_id: str
    live_stream_id: str


@pytest.fixture(scope="module")
def secured_server(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    folder = tmp_path_factory.mktemp("fuzz")
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "test-key",
        "DATABASE_URL": f"sqlite:///{folder / 'chat.sqlite3'}",
        "CHAT_MODEL": "test-model",
        "LOG_LEVEL": "warning",
        "RATE_LIMIT": "100000/minute",
        "MAX_STREAMS_PER_USER": "50",
        "JWT_SECRET": SECRET,
    }
    running = GunicornServer(env, folder / "gunicorn.log")
    running.start()
    yield running
    running.stop()


def _drain(sock: socket.socket, stop: threading.Event) -> None:
    """Read Alice's live stream and throw it away, so that it flows while the others fuzz."""
    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            if not sock.recv(65536):
                return
        except TimeoutError:
            continue
        except OSError:
            return


@pytest.fixture(scope="module")
def alice(secured_server: GunicornServer) -> Iterator[AliceData]:
    headers = bearer(token("alice", ttl=600))
    events = stream(secured_server.url, {"message": "alice's secret #tokens=3"}, headers)
    metadata = events[0].data
    conversation_id, finished_stream_id = metadata["conversationId"], metadata["streamId"]
    conversation = httpx.get(f"{secured_server.url}{API}/conversations/{conversation_id}", headers=headers).json()
    sock, first = open_raw_stream(secured_server.url, {"message": "alice live #tokens=5000 #delay=0.05"}, headers)
    while b'"streamId":"' not in first:
        first += sock.recv(65536)
    live_stream_id = first.split(b'"streamId":"', 1)[1][:32].decode()
    stop = threading.Event()
    reader = threading.Thread(target=_drain, args=(sock, stop), daemon=True)
    reader.start()
    yield AliceData(conversation_id, conversation, finished_stream_id, live_stream_id)
    stop.set()
    reader.join(5)
    httpx.delete(f"{secured_server.url}{API}/chat/stream/{live_stream_id}", headers=headers)
    sock.close()


DOCUMENT = build_spec()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_dict(CONFIG))
# The document's own description of what a stream event's ``data`` holds.
EVENT_DATA = jsonschema_rs.validator_for(
    {"$ref": "#/components/schemas/StreamEventData", "components": DOCUMENT["components"]}
)


def event_data(body: bytes) -> list[str]:
    """The ``data`` of every event in a whole SSE body (the service writes LF-only lines, one data line each)."""
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]


def test_the_fuzzed_document_is_the_served_one(secured_server: GunicornServer) -> None:
    assert httpx.get(f"{secured_server.url}/openapi.json").json() == json.loads(json.dumps(DOCUMENT))


def _as_alice_target(case: Case, alice: AliceData) -> Case | None:
    """The same case aimed at Alice's own conversation or streams, or None when it names none."""
    parameters = dict(case.path_parameters or {})
    body = case.body
    if "conversationId" in parameters:
        parameters["conversationId"] = alice.conversation_id
    elif "streamId" in parameters:
        parameters["streamId"] = alice.live_stream_id if case.method == "DELETE" else alice.finished_stream_id
    elif case.path.endswith("/chat") or case.path.endswith("/chat/stream"):
        if not isinstance(body, dict):
            return None
        body = {**body, "conversationId": alice.conversation_id}
    else:
        return None
    headers = {name: value for name, value in (case.headers or {}).items() if name.lower() not in ("authorization",)}
    if "streamId" in parameters and case.method == "GET" and "Last-Event-ID" in headers:
        headers["Last-Event-ID"] = f"{parameters['streamId']}:0"
    return case.operation.Case(
        path_parameters=parameters, query=case.query, headers=headers, body=body, media_type=case.media_type
    )


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_conforms_and_keeps_users_apart(
    case: Case, secured_server: GunicornServer, alice: AliceData
) -> None:
    for headers in ({}, bearer(token("alice")), bearer(token("bob"))):
        response = case.call_and_validate(base_url=secured_server.url, headers=headers, timeout=30)
        if "text/event-stream" in response.headers.get("content-type", [""])[0]:
            for data in event_data(response.content):
                errors = [error.message for error in EVENT_DATA.iter_errors(json.loads(data))]
                assert not errors, (data, errors)
    probe = _as_alice_target(case, alice)
    if probe is None:
        return
    for headers, refused in ((bearer(token("bob")), {400, 404, 413, 415}), ({}, {401})):
        response = probe.call(base_url=secured_server.url, headers=headers, timeout=30)
        assert response.status_code in refused, (probe.method, probe.formatted_path, response.status_code)
        probe.validate_response(response)


def test_alice_data_is_intact_after_the_fuzz(secured_server: GunicornServer, alice: AliceData) -> None:
    headers = bearer(token("alice"))
    url = secured_server.url
    conversation = httpx.get(f"{url}{API}/conversations/{alice.conversation_id}", headers=headers)
    assert conversation.status_code == 200
    assert conversation.json()["messages"] == alice.conversation["messages"]
    with httpx.stream("GET", f"{url}{API}/chat/stream/{alice.live_stream_id}", headers=headers, timeout=10) as response:
        assert response.status_code == 200
        seen: list[str] = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:])["type"])
            if len(seen) >= 5:
                break
    assert seen[0] == "metadata" and "error" not in seen and "done" not in seen, seen
    replay = httpx.get(f"{url}{API}/chat/stream/{alice.finished_stream_id}", headers=headers, timeout=10)
    assert replay.status_code == 200 and '"type":"done"' in replay.text
