"""CORS: off unless ``CORS_ORIGINS`` lists exact origins; then preflights and answers for exactly those, the
event stream included, through real gunicorn and, for what a browser actually allows, headless Chromium."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest

from service.config import ConfigError, Settings
from tests.conftest import ServerFactory, _server_env
from tests.servers import GunicornServer
from tests.sse import read_events
from tests.test_browser import MISSING, _launch

STREAM = "/api/v1/ai/chat/stream"
ALLOWED = "https://app.example.com"
ALSO_ALLOWED = "http://127.0.0.1:3000"
SECRET = "cors-test-secret-that-is-long-enough-for-hs256"
CHAT_HEADERS = ("authorization", "content-type", "last-event-id", "x-request-id")


def bearer(sub: str = "cors-user") -> dict[str, str]:
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


def preflight(url: str, origin: str, method: str = "POST", headers: str = ",".join(CHAT_HEADERS)) -> httpx.Response:
    return httpx.options(
        url,
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
        timeout=10,
    )


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.lower().startswith("access-control-")}


def varies_on_origin(response: httpx.Response) -> bool:
    return "origin" in {item.strip().lower() for item in response.headers.get("vary", "").split(",")}


@pytest.fixture(scope="module")
def cors_server(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """Auth on, two allowed origins, a tight request limit (preflights must not spend it)."""
    folder = tmp_path_factory.mktemp("cors")
    env = {
        **_server_env(upstream, f"sqlite:///{folder / 'chat.sqlite3'}"),
        "RESUME_GRACE_SECONDS": "15",
        "JWT_SECRET": SECRET,
        "RATE_LIMIT": "1000/minute",
        "CORS_ORIGINS": f"{ALLOWED}, {ALSO_ALLOWED}",
    }
    running = GunicornServer(env, folder / "gunicorn.log").start()
    yield running
    running.stop()


# --- off by default ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", [ALLOWED, "https://evil.example", "null"])
def test_by_default_a_preflight_gets_no_cors_headers(server: GunicornServer, origin: str) -> None:
    response = preflight(f"{server.url}{STREAM}", origin)
    assert cors_headers(response) == {}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", STREAM, {"message": "hi #tokens=2"}), ("GET", "/healthz", None), ("GET", "/nowhere", None)],
)
def test_by_default_no_answer_allows_another_origin(
    server: GunicornServer, method: str, path: str, body: dict[str, str] | None
) -> None:
    response = httpx.request(method, f"{server.url}{path}", json=body, headers={"Origin": ALLOWED}, timeout=10)
    assert cors_headers(response) == {}


# --- allow-listed ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", [ALLOWED, ALSO_ALLOWED])
def test_an_allowed_origin_may_preflight_the_chat_post(cors_server: GunicornServer, origin: str) -> None:
    response = preflight(f"{cors_server.url}{STREAM}", origin)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    allowed = {item.strip().lower() for item in response.headers["access-control-allow-headers"].split(",")}
    assert set(CHAT_HEADERS) <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    assert int(response.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in response.headers
    assert varies_on_origin(response)


@pytest.mark.parametrize(("method", "headers"), [("GET", "authorization,last-event-id"), ("DELETE", "authorization")])
def test_an_allowed_origin_may_preflight_resume_and_cancel(
    cors_server: GunicornServer, method: str, headers: str
) -> None:
    response = preflight(f"{cors_server.url}{STREAM}/0123456789abcdef", ALLOWED, method, headers)
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert method in response.headers["access-control-allow-methods"]


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://app.example.com.evil.example",  # a prefix match would let this in
        "https://appxexample.com",  # a regex dot would let this in
        "http://app.example.com",  # another scheme is another origin
        "https://app.example.com:8443",  # and so is another port
        "null",
    ],
)
def test_any_other_origin_gets_no_cors_headers(cors_server: GunicornServer, origin: str) -> None:
    refused = preflight(f"{cors_server.url}{STREAM}", origin)
    assert cors_headers(refused) == {}
    assert varies_on_origin(refused), "a cache must not hand an allowed origin's answer to this one"
    answer = httpx.post(f"{cors_server.url}{STREAM}", json={"message": "hi"}, headers={"Origin": origin}, timeout=10)
    assert cors_headers(answer) == {}


def test_the_event_stream_is_readable_by_an_allowed_origin(cors_server: GunicornServer) -> None:
    headers = {**bearer(), "Origin": ALLOWED, "X-Request-ID": "cors-stream-1"}
    with httpx.stream(
        "POST", f"{cors_server.url}{STREAM}", json={"message": "hi #tokens=3"}, headers=headers, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["access-control-allow-origin"] == ALLOWED
        exposed = {item.strip().lower() for item in response.headers["access-control-expose-headers"].split(",")}
        assert {"x-request-id", "retry-after", "x-ratelimit-remaining"} <= exposed
        assert varies_on_origin(response)
        events = list(read_events(response))
    assert [event.type for event in events][-1] == "done"
    stream_id = events[0].data["streamId"]

    resume_headers = {**bearer(), "Origin": ALLOWED, "Last-Event-ID": f"{stream_id}:1"}
    with httpx.stream("GET", f"{cors_server.url}{STREAM}/{stream_id}", headers=resume_headers, timeout=10) as resumed:
        assert resumed.status_code == 200, resumed.read()
        assert resumed.headers["access-control-allow-origin"] == ALLOWED
        assert [event.type for event in read_events(resumed)][-1] == "done"


def test_errors_are_readable_by_an_allowed_origin(cors_server: GunicornServer) -> None:
    """A browser shows the page nothing of an answer without the header: refusals must carry it too."""
    unauthenticated = httpx.post(
        f"{cors_server.url}{STREAM}", json={"message": "hi"}, headers={"Origin": ALLOWED}, timeout=10
    )
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["access-control-allow-origin"] == ALLOWED
    bad = httpx.post(
        f"{cors_server.url}{STREAM}",
        content=b"{oops",
        headers={**bearer(), "Origin": ALLOWED, "Content-Type": "application/json"},
        timeout=10,
    )
    assert bad.status_code == 400
    assert bad.headers["access-control-allow-origin"] == ALLOWED


def test_preflights_need_no_token_and_spend_no_request_limit(server_factory: ServerFactory) -> None:
    running = server_factory(JWT_SECRET=SECRET, RATE_LIMIT="2/minute", CORS_ORIGINS=ALLOWED)
    for _ in range(5):
        assert preflight(f"{running.url}{STREAM}", ALLOWED).headers["access-control-allow-origin"] == ALLOWED
    response = httpx.post(
        f"{running.url}{STREAM}", json={"message": "hi #tokens=1"}, headers={**bearer(), "Origin": ALLOWED}, timeout=10
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "https://app.example.com/",
        "https://app.example.com/path",
        "app.example.com",
        "ftp://x.example",
        "https://*.x.io",
    ],
)
def test_cors_origins_takes_exact_origins_only(value: str) -> None:
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        Settings.from_env({"CORS_ORIGINS": value})


def test_cors_origins_are_read_as_a_list() -> None:
    settings = Settings.from_env({"CORS_ORIGINS": "https://A.example.com, http://127.0.0.1:3000,,"})
    assert settings.cors_origins == ("https://a.example.com", "http://127.0.0.1:3000")
    assert Settings.from_env({}).cors_origins == ()


# --- in a real browser -----------------------------------------------------------------------------------------------


class _OtherSite(BaseHTTPRequestHandler):
    """Another site's page: what a browser treats as a foreign origin calling the API."""

    def do_GET(self) -> None:
        body = b"<!doctype html><title>another site</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture
def other_site() -> Iterator[str]:
    site = ThreadingHTTPServer(("127.0.0.1", 0), _OtherSite)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()
    site.server_close()


FETCH_STREAM = """async ({ url, token }) => {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Authorization": `Bearer ${token}`, "Content-Type": "application/json",
                 "Last-Event-ID": "none", "X-Request-ID": "browser-cors-1" },
      body: JSON.stringify({ message: "hi #tokens=3" }),
    });
    return { status: response.status, requestId: response.headers.get("X-Request-ID"), body: await response.text() };
  } catch (error) {
    return { failed: String(error) };
  }
}"""


@pytest.mark.browser
@pytest.mark.parametrize("allowed", [True, False])
def test_a_browser_on_another_site_streams_only_when_allowed(
    server_factory: ServerFactory, other_site: str, allowed: bool
) -> None:
    if MISSING is not None:
        pytest.fail(MISSING, pytrace=False)
    from playwright.sync_api import sync_playwright

    running = server_factory(JWT_SECRET=SECRET, CORS_ORIGINS=other_site if allowed else ALLOWED)
    token = bearer()["Authorization"].removeprefix("Bearer ")
    with sync_playwright() as playwright_:
        browser = _launch(playwright_)
        try:
            page = browser.new_page()
            page.goto(f"{other_site}/")
            result = page.evaluate(FETCH_STREAM, {"url": f"{running.url}{STREAM}", "token": token})
        finally:
            browser.close()
    if allowed:
        assert result.get("status") == 200, result
        assert result["requestId"] == "browser-cors-1", "the exposed header is readable"
        assert '"type":"done"' in result["body"]
    else:
        assert "failed" in result and "Failed to fetch" in result["failed"], result
