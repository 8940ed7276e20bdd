"""What fuzzing the API found, kept as plain requests to the real server: each was a 500 or a response the
OpenAPI document did not describe."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import jsonschema_rs
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from service.openapi import build_spec
from service.schemas import MAX_OFFSET
from tests.conftest import ServerFactory
from tests.servers import GunicornServer, PostgresServer
from tests.sse import stream

API = "/api/v1/ai"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("to=9999-12-31", "to"),  # a date `to` includes its whole day: there is no day after it
        ("to=0001-01-01", "to"),  # the default `from` is 30 days before `to`
        ("to=0001-01-01T00:00:00%2B23:00", "to"),  # an offset that moves it before year 1
        ("from=9999-12-31T23:59:59-23:00", "from"),  # an offset that moves it past year 9999
    ],
)
def test_usage_dates_at_the_ends_of_the_calendar_are_refused(server: GunicornServer, query: str, field: str) -> None:
    response = httpx.get(f"{server.url}{API}/usage?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"] == {field: ["The date is out of range."]}


@pytest.mark.parametrize("offset", [MAX_OFFSET + 1, 10**20])
def test_a_page_offset_past_the_databases_integers_is_refused(server: GunicornServer, offset: int) -> None:
    response = httpx.get(f"{server.url}{API}/conversations", params={"offset": offset})
    assert response.status_code == 400, response.text
    assert list(response.json()["error"]["details"]) == ["offset"]


def test_the_largest_page_offset_is_an_empty_page(server: GunicornServer) -> None:
    response = httpx.get(f"{server.url}{API}/conversations", params={"offset": MAX_OFFSET, "limit": 200})
    assert response.status_code == 200, response.text
    assert response.json() == {"conversations": []}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/healthz", {"GET", "HEAD", "OPTIONS"}),
        ("PUT", f"{API}/chat/stream", {"POST", "OPTIONS"}),
        ("PATCH", f"{API}/conversations/00000000-0000-0000-0000-000000000000", {"GET", "HEAD", "DELETE", "OPTIONS"}),
    ],
)
def test_method_not_allowed_names_the_allowed_methods(
    server: GunicornServer, method: str, path: str, allowed: set[str]
) -> None:
    response = httpx.request(method, f"{server.url}{path}")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert {name.strip() for name in response.headers["Allow"].split(",")} == allowed


def test_every_stream_event_is_as_the_document_describes(server: GunicornServer) -> None:
    components = build_spec()["components"]
    event = jsonschema_rs.validator_for({"$ref": "#/components/schemas/StreamEvent", "components": components})
    data = jsonschema_rs.validator_for({"$ref": "#/components/schemas/StreamEventData", "components": components})
    received = stream(server.url, {"message": "document me #tokens=3"})
    assert [item.type for item in received] == ["metadata", "token", "token", "token", "done"]
    for item in received:
        assert event.is_valid({"id": item.id, "event": "message", "data": json.dumps(item.data)}), item
        assert data.is_valid(item.data), item.data
    assert not data.is_valid({"type": "token"})  # the document does hold the events to their shape


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().create()
    yield server
    server.remove()


def test_the_answers_while_the_database_is_away_are_documented(
    server_factory: ServerFactory, postgres: PostgresServer
) -> None:
    server = server_factory(DATABASE_URL=postgres.url)
    conversation_id = stream(server.url, {"message": "kept #tokens=2"})[0].data["conversationId"]
    postgres.stop("fast")
    document = schemathesis.openapi.from_dict(build_spec())
    asked = [
        ("/api/v1/ai/conversations", "GET", {}),
        ("/api/v1/ai/conversations/{conversationId}", "GET", {"conversationId": conversation_id}),
        ("/api/v1/ai/conversations/{conversationId}", "DELETE", {"conversationId": conversation_id}),
        ("/api/v1/ai/usage", "GET", {}),
        ("/readyz", "GET", {}),
    ]
    for path, method, parameters in asked:
        case = document[path][method].Case(path_parameters=parameters)
        response = case.call(base_url=server.url, timeout=10)
        assert response.status_code == 503, (path, method, response.text)
        # the status, the content type and the body are as documented (a 503 is the point here, not a failure)
        case.validate_response(response, excluded_checks=[not_a_server_error])
