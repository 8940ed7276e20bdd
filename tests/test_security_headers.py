"""Security headers on every answer of real gunicorn, and no answer that tells an attacker what runs inside
(stack traces, versions, SQL): the page's CSP, nosniff, the referrer policy, and the error paths a client can
reach (404, 405, bad JSON, too large, a request gunicorn itself refuses, a database that breaks underneath)."""

from __future__ import annotations

import re
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from service.security_headers import CONTENT_SECURITY_POLICY
from tests.conftest import ServerFactory
from tests.servers import GunicornServer
from tests.test_nginx import Nginx

API = "/api/v1/ai"
SHARED_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
CHAT = f"{API}/chat"
# What must never reach a client: a traceback, a framework's or the interpreter's version, a statement or a driver.
LEAKS = re.compile(
    r"Traceback|File \"|werkzeug|gunicorn/\d|python/?\s*\d|sqlalchemy|sqlite3?\.|psycopg|"
    r"\bSELECT\s+(\*|[\w.]+(\s*,\s*[\w.]+)*)\s+FROM\b|\bINSERT\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bFROM\s+(conversations|messages|usage)\b",
    re.IGNORECASE,
)


def assert_reveals_nothing(response: httpx.Response) -> None:
    text = response.text + "\n" + "\n".join(f"{name}: {value}" for name, value in response.headers.items())
    assert not LEAKS.search(text), f"{response.status_code} reveals internals: {LEAKS.search(text)}\n{text}"
    assert "x-powered-by" not in response.headers
    server = response.headers.get("server", "")
    assert not re.search(r"\d", server), f"the Server header names a version: {server!r}"


def assert_policy_directives(policy: str) -> None:
    directives = {part.split()[0]: part.split()[1:] for part in (item.strip() for item in policy.split(";")) if part}
    assert directives["script-src"] == ["'self'"], "scripts only from the service's own files, nothing inline"
    assert directives["style-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["default-src"] == ["'none'"]
    assert not any("'unsafe-inline'" in values or "'unsafe-eval'" in values for values in directives.values())


def test_the_page_is_served_with_a_strict_content_security_policy(server: GunicornServer) -> None:
    response = httpx.get(f"{server.url}/", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert_policy_directives(response.headers["content-security-policy"])
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cross-origin-opener-policy"] == "same-origin"


def test_the_page_has_no_inline_script_or_style(server: GunicornServer) -> None:
    """The policy forbids inline code, so the page must not need any: every script and style is a file of its own."""
    html = httpx.get(f"{server.url}/", timeout=10).text
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/static/page.js">']
    assert re.search(r"<script\b[^>]*>(?!\s*</script>)", html) is None, "an inline script"
    assert "<style" not in html and " style=" not in html, "an inline style"
    assert re.search(r"\son[a-z]+\s*=", html) is None, "an inline event handler"
    static = Path(__file__).resolve().parent.parent / "service" / "static"
    for module in static.glob("*.js"):
        code = module.read_text()
        for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert forbidden not in code, f"{module.name} uses {forbidden}"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/static/page.js"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics"),
        ("GET", f"{API}/conversations"),
        ("GET", "/no-such-page"),
    ],
)
def test_every_answer_says_nosniff_and_carries_the_policy(server: GunicornServer, method: str, path: str) -> None:
    response = httpx.request(method, f"{server.url}{path}", timeout=10)
    assert response.headers["x-content-type-options"] == "nosniff", path
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
    assert response.headers["referrer-policy"] == "no-referrer", path
    assert_reveals_nothing(response)


def test_api_answers_are_kept_by_no_cache(server: GunicornServer) -> None:
    created = httpx.post(f"{server.url}{CHAT}", json={"message": "private #tokens=2"}, timeout=10)
    conversation = created.json()["conversationId"]
    for response in (
        created,
        httpx.get(f"{server.url}{API}/conversations/{conversation}", timeout=10),
        httpx.get(f"{server.url}{API}/conversations", timeout=10),
        httpx.get(f"{server.url}{API}/usage", timeout=10),
        httpx.get(f"{server.url}{API}/conversations/not-a-conversation", timeout=10),
    ):
        assert response.headers["cache-control"] == "no-store", response.url


def test_the_event_stream_carries_the_headers_too(server: GunicornServer) -> None:
    with httpx.stream("POST", f"{server.url}{CHAT}/stream", json={"message": "hi #tokens=2"}, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "no-cache" in response.headers["cache-control"]
        response.read()


def test_not_found_says_nothing_about_the_server(server: GunicornServer) -> None:
    response = httpx.get(f"{server.url}/api/v1/ai/nothing-here/../../etc/passwd", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert_reveals_nothing(response)


def test_a_wrong_method_says_nothing_about_the_server(server: GunicornServer) -> None:
    response = httpx.put(f"{server.url}{CHAT}/stream", json={"message": "hi"}, timeout=10)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert_reveals_nothing(response)


@pytest.mark.parametrize("body", [b"{not json", b'{"message": "\xff\xfe"}', b"[1, 2", b'{"message": {"$gt": ""}}'])
def test_bad_json_says_nothing_about_the_parser(server: GunicornServer, body: bytes) -> None:
    response = httpx.post(
        f"{server.url}{CHAT}/stream", content=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert "JSONDecodeError" not in response.text and "Expecting" not in response.text
    assert_reveals_nothing(response)


def test_a_body_too_large_says_nothing_about_the_server(server: GunicornServer) -> None:
    body = b'{"message": "' + b"x" * 70_000 + b'"}'
    response = httpx.post(
        f"{server.url}{CHAT}/stream", content=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert_reveals_nothing(response)


def test_a_request_gunicorn_refuses_itself_says_nothing_about_it(server: GunicornServer) -> None:
    """A malformed request line never reaches the app: gunicorn answers it; that answer must not name a version."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /\x00 HTTP/9.9\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    text = answer.decode("latin-1")
    assert text.startswith("HTTP/1.1 400"), text
    assert not LEAKS.search(text), text
    assert not re.search(r"^server:.*\d", text, re.IGNORECASE | re.MULTILINE), text


@pytest.fixture
def own_postgres_database() -> Iterator[str]:
    """A database of this test's own on the shared PostgreSQL, dropped afterwards (the test breaks its tables)."""
    name = f"security_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SHARED_POSTGRES, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(SHARED_POSTGRES, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def break_tables(database_url: str, sqlite_file: Path) -> None:
    statements = ("DROP TABLE messages", "DROP TABLE conversations CASCADE")
    if database_url.startswith("postgresql"):
        with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)  # type: ignore[arg-type]
        return
    with sqlite3.connect(sqlite_file) as connection:
        for statement in statements:
            connection.execute(statement.removesuffix(" CASCADE"))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_database_broken_underneath_leaks_no_sql_or_traceback(
    server_factory: ServerFactory, tmp_path: Path, request: pytest.FixtureRequest, database: str
) -> None:
    """An unexpected failure deep in the store (its tables gone: SQLite calls it an operational error, PostgreSQL
    a programming error that nothing expects) answers the one JSON error shape, with no statement, driver name or
    traceback, and the stream path ends with an SSE error event that says as little."""
    url = request.getfixturevalue("own_postgres_database") if database == "postgresql" else ""
    running = server_factory(DATABASE_URL=url) if url else server_factory()
    created = httpx.post(f"{running.url}{CHAT}", json={"message": "hello #tokens=2"}, timeout=10)
    assert created.status_code == 200, created.text
    conversation = created.json()["conversationId"]
    break_tables(url, tmp_path / "chat.sqlite3")
    answers = [
        httpx.get(f"{running.url}{API}/conversations/{conversation}", timeout=10),
        httpx.get(f"{running.url}{API}/conversations", timeout=10),
        httpx.post(f"{running.url}{CHAT}", json={"message": "again", "conversationId": conversation}, timeout=10),
    ]
    expected = (500, "internal") if url else (503, "database_unavailable")
    for response in answers:
        assert (response.status_code, response.json()["error"]["code"]) == expected, response.text
        assert set(response.json()["error"]) <= {"code", "message", "details"}
        assert_reveals_nothing(response)
    with httpx.stream(
        "POST", f"{running.url}{CHAT}/stream", json={"message": "again", "conversationId": conversation}, timeout=10
    ) as response:
        body = response.read().decode()
    assert not LEAKS.search(body), body
    assert "relation" not in body and "does not exist" not in body


def test_behind_the_shipped_nginx_config_nothing_names_a_version(server_factory: ServerFactory, tmp_path: Path) -> None:
    """deploy/nginx.conf: the service's headers pass through, and nginx's own answers (its 413 for a body over
    its limit) name no version either."""
    proxy = Nginx(tmp_path, [server_factory()]).start()
    try:
        page = httpx.get(f"{proxy.url}/", timeout=10)
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert page.headers["x-content-type-options"] == "nosniff"
        assert_reveals_nothing(page)
        too_large = httpx.post(f"{proxy.url}{CHAT}/stream", content=b"x" * 200_000, timeout=10)
        assert too_large.status_code == 413
        assert too_large.headers["server"] == "nginx"
        assert not re.search(r"nginx/\d", too_large.text), too_large.text
    finally:
        proxy.stop()
