"""Schemathesis against the ``/openapi.json`` that a real gunicorn server with auth on serves (the cases are made
from the same document, built before the server runs; a test checks that the two are equal).

Every operation is fuzzed with no token, with Alice's token and with Bob's token: no 5xx, every response as the
document says (status, content type, body schema, headers). Alice owns a saved conversation, a finished stream
(kept for replay) and a live stream; every case of an operation that takes one of those ids is sent again with
Alice's real ids as Bob and with no token, which must be refused (404 / 401) and leave Alice's data as it was.
"""

from __future__ import annotations

import gc
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
from tests.conftest import _server_env
from tests.fake_upstream import FakeUpstream
from tests.servers import GunicornServer
from tests.sse import open_raw_stream, stream
from tests.test_auth import SECRET, bearer, token

API = "/api/v1/ai"
# Bounded so that the whole module stays well under two minutes on two shared cores.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
CONFIG = {
    # The tests send the Authorization header themselves (none, Alice's, Bob's): schemathesis leaves it alone.
    "generation": {
        "max-examples": MAX_EXAMPLES,
        "mode": "all",
        "deterministic": True,
        "with-security-parameters": False,
    },
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

    @property
    def stream_ids(self) -> tuple[str, str]:
        return self.finished_stream_id, self.live_stream_id


@pytest.fixture(scope="module")
def secured_server(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    folder = tmp_path_factory.mktemp("fuzz")
    env = {
        **_server_env(upstream, f"sqlite:///{folder / 'chat.sqlite3'}"),
        "RESUME_GRACE_SECONDS": "15",
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


@pytest.fixture(scope="module")
def no_stray_finalizers() -> Iterator[None]:
    """No cyclic garbage collection while the fuzz runs. CPython 3.11's ``ast`` is not re-entrant: a finalizer
    that parses source (one that formats a traceback, say) while Hypothesis parses a source file to describe a
    strategy fails that parse with ``SystemError: AST constructor recursion depth mismatch``. Earlier tests'
    garbage is collected first, so none of their finalizers can run in the middle of the fuzz."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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


def _aimed_at_alice(case: Case, alice: AliceData) -> list[Case]:
    """The same case aimed at each of Alice's conversation and streams that its operation can name."""
    parameters = dict(case.path_parameters or {})
    headers = {name: value for name, value in (case.headers or {}).items() if name.lower() != "authorization"}
    bodies: list[Any] = [case.body]
    targets: list[dict[str, Any]] = []
    if "conversationId" in parameters:
        targets = [{**parameters, "conversationId": alice.conversation_id}]
    elif "streamId" in parameters:
        targets = [{**parameters, "streamId": stream_id} for stream_id in alice.stream_ids]
    elif case.path.endswith(("/chat", "/chat/stream")) and isinstance(case.body, dict):
        targets, bodies = [parameters], [{**case.body, "conversationId": alice.conversation_id}]
    probes = []
    for target in targets:
        if "Last-Event-ID" in headers and "streamId" in target:
            headers = {**headers, "Last-Event-ID": f"{target['streamId']}:0"}
        for body in bodies:
            probes.append(
                case.operation.Case(
                    path_parameters=target, query=case.query, headers=headers, body=body, media_type=case.media_type
                )
            )
    return probes


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_conforms_and_keeps_users_apart(
    case: Case, secured_server: GunicornServer, alice: AliceData, no_stray_finalizers: None
) -> None:
    for headers in ({}, bearer(token("alice")), bearer(token("bob"))):
        response = case.call_and_validate(base_url=secured_server.url, headers=headers, timeout=30)
        if "text/event-stream" in response.headers.get("content-type", [""])[0]:
            for data in event_data(response.content):
                errors = [error.message for error in EVENT_DATA.iter_errors(json.loads(data))]
                assert not errors, (data, errors)
    for probe in _aimed_at_alice(case, alice):
        for headers, refused in ((bearer(token("bob")), {400, 404, 413, 415}), ({}, {401})):
            response = probe.call(base_url=secured_server.url, headers=headers, timeout=30)
            assert response.status_code in refused, (probe.method, probe.formatted_path, response.status_code)
            probe.validate_response(response)


@pytest.mark.parametrize("who", ["bob", "no one"])
def test_nobody_else_can_read_resume_cancel_or_delete_alices_things(
    secured_server: GunicornServer, alice: AliceData, who: str
) -> None:
    headers = bearer(token("bob")) if who == "bob" else {}
    refused = 404 if who == "bob" else 401
    url = f"{secured_server.url}{API}"
    conversation = f"{url}/conversations/{alice.conversation_id}"
    attempts = [
        ("GET", conversation, {}, None),
        ("DELETE", conversation, {}, None),
        ("POST", f"{url}/chat", {}, {"message": "mine now", "conversationId": alice.conversation_id}),
        ("POST", f"{url}/chat/stream", {}, {"message": "mine now", "conversationId": alice.conversation_id}),
    ]
    for stream_id in alice.stream_ids:
        attempts += [
            ("GET", f"{url}/chat/stream/{stream_id}", {}, None),
            ("GET", f"{url}/chat/stream/{stream_id}", {"Last-Event-ID": f"{stream_id}:0"}, None),
            ("DELETE", f"{url}/chat/stream/{stream_id}", {}, None),
        ]
    for method, target, extra, body in attempts:
        response = httpx.request(method, target, headers={**headers, **extra}, json=body, timeout=10)
        assert response.status_code == refused, (method, target, response.status_code)
        assert response.json()["error"]["code"] == ("not_found" if who == "bob" else "unauthorized")
    listing = httpx.get(f"{url}/conversations", headers=headers, timeout=10)
    if who == "bob":
        assert alice.conversation_id not in {item["id"] for item in listing.json()["conversations"]}
    else:
        assert listing.status_code == 401


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
