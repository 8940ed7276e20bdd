"""The chat page at ``/`` in headless Chromium (Playwright), against real gunicorn and the scripted upstream.

Needs Debian's ``/usr/bin/chromium`` and ``pip install -r requirements-browser.txt``; without them every test
here fails (never skips) and says what to install.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import jwt
import pytest

from service.store.conversations import TITLE_CHARS
from tests.conftest import ServerFactory
from tests.fake_upstream import WORDS, FakeUpstream
from tests.servers import ROOT, GunicornServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RETRY_LIMIT = 3  # turn.js RETRY_LIMIT: retries after the first attempt
SCREENSHOT = ROOT / "test-output" / "chat-page.png"
UPSTREAM_ERROR = "The AI service ran into a problem while answering, so the reply is incomplete. Please try again."
CONTEXT_TOO_LONG = "This conversation is too long for the model: start a new conversation or shorten your message."
STOPPED = "You stopped this reply."
NOT_FINISHED = "This reply was not finished."
SECRET = "browser-test-secret-that-is-long-enough-for-hs256"

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Route, expect, sync_playwright
except ImportError:
    MISSING: str | None = (
        "Playwright is not installed: run `.venv/bin/pip install -r requirements-browser.txt` "
        "(do not run `playwright install`; the tests use Debian's /usr/bin/chromium)."
    )
else:
    MISSING = None
if MISSING is None and not CHROMIUM.exists():
    MISSING = "Chromium is missing: run `apt-get update && apt-get install -y chromium` (needs /usr/bin/chromium)."

pytestmark = pytest.mark.browser


class _Missing:
    """Stands in for the browser and page when Playwright or Chromium is missing: any use fails the test."""

    def __getattr__(self, name: str) -> Any:
        pytest.fail(MISSING or "", pytrace=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if MISSING is not None:
        yield _Missing()  # type: ignore[misc]
        return
    with sync_playwright() as playwright_:
        launched = _launch(playwright_)
        yield launched
        launched.close()


def _launch(playwright_: Playwright) -> Browser:
    return playwright_.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context (own sessionStorage) per test; uncaught page errors fail the test."""
    if MISSING is not None:
        yield _Missing()  # type: ignore[misc]
        return
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def reply_for(tokens: int) -> str:
    """The text the fake upstream streams for ``#tokens=N``."""
    return " ".join((list(WORDS) * (tokens // len(WORDS) + 1))[:tokens])


def marker(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def open_chat(page: Page, server: GunicornServer) -> None:
    page.goto(f"{server.url}/")
    expect(page.locator("#conversations-note")).not_to_have_text("Loading…")


def send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def wait_finished(page: Page, timeout: float = 15_000) -> None:
    expect(page.locator("#reply")).to_have_count(0, timeout=timeout)
    expect(page.locator("#send")).to_be_enabled()


def last_reply(page: Page) -> Any:
    return page.locator("#messages .message.assistant").last


def conversation_in_url(page: Page) -> str:
    """The conversation id the page put in its address (``?c=<id>``)."""
    found = parse_qs(urlparse(page.url).query).get("c", [])
    assert len(found) == 1, f"no conversation in {page.url}"
    return found[0]


def saved_conversation(server: GunicornServer, conversation_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/api/v1/ai/conversations/{conversation_id}", timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def shown_messages(page: Page) -> list[tuple[str, str]]:
    """(role, text) of each finished message in the thread."""
    found: list[list[str]] = page.evaluate(
        """() => [...document.querySelectorAll("#messages .message")].map((node) =>
          [node.classList.contains("user") ? "user" : "assistant", node.querySelector(".text").textContent])"""
    )
    return [(role, text) for role, text in found]


def running_streams(page: Page) -> list[str]:
    """The sessionStorage keys of streams the page remembers for a reload."""
    keys: list[str] = page.evaluate("Object.keys(sessionStorage).filter((key) => key.startsWith('chat.stream.'))")
    return keys


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_upstream_cancelled(upstream: FakeUpstream, tag: str) -> None:
    wait_until(lambda: upstream.connection_for(tag).closed_at is not None, what="the upstream connection to close")
    assert upstream.connection_for(tag).completed is False


SAMPLE_REPLY = """async () => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const deadline = performance.now() + 15000;
  let reply = null;
  while (!(reply = document.querySelector("#reply")) && performance.now() < deadline) await sleep(5);
  const text = reply.querySelector(".text");
  const lengths = [];
  let cursorWhileStreaming = false;
  while (!reply.classList.contains("done") && performance.now() < deadline) {
    lengths.push(text.textContent.length);
    const cursor = reply.querySelector(".cursor");
    if (text.textContent && cursor && getComputedStyle(cursor).animationName === "blink") cursorWhileStreaming = true;
    await sleep(25);
  }
  return {
    lengths,
    cursorWhileStreaming,
    cursorAfter: reply.querySelector(".cursor") !== null,
    final: text.textContent,
    parent: reply.parentElement.id,
  };
}"""


def test_reply_streams_token_by_token_with_a_blinking_cursor(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    expect(page.locator("#live")).to_have_attribute("aria-live", "polite")
    send(page, f"{marker('progressive')} Tell me about baby sleep #tokens=20 #delay=0.1")
    seen = page.evaluate(SAMPLE_REPLY)

    lengths = seen["lengths"]
    assert lengths == sorted(lengths), "the reply only grows"
    intermediate = {length for length in lengths if 0 < length < len(reply_for(20))}
    assert len(intermediate) >= 8, f"expected the reply to grow through many lengths, saw {sorted(intermediate)}"
    assert seen["cursorWhileStreaming"] and not seen["cursorAfter"]
    assert seen["final"] == reply_for(20)
    assert seen["parent"] == "messages", "the finished reply joins the message list"
    wait_finished(page)
    expect(last_reply(page).locator(".meta")).to_contain_text("20 tokens")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))


def test_display_is_updated_at_most_every_50ms(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    send(page, f"{marker('batching')} #tokens=60 #delay=0.01")
    updates = page.evaluate(
        """async () => {
          const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
          let reply;
          while (!(reply = document.querySelector("#reply"))) await sleep(2);
          const text = reply.querySelector(".text");
          const times = [];
          // one update per callback: the changes one draw makes together (a Markdown block out, its new form in)
          const observer = new MutationObserver(() => times.push(performance.now()));
          observer.observe(text, { characterData: true, childList: true, subtree: true });
          while (!reply.classList.contains("done")) await sleep(10);
          observer.disconnect();
          return { times, final: text.textContent };
        }"""
    )
    times = updates["times"]
    assert updates["final"] == reply_for(60)
    assert 1 <= len(times) <= 30, f"{len(times)} display updates for 60 tokens"
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert not gaps or min(gaps) >= 45, f"display updated {min(gaps):.1f} ms after the previous update"


def test_thinking_indicator_shows_until_the_first_token(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    send(page, f"{marker('thinking')} #tokens=3 #first_delay=1")
    thinking = page.locator("#reply .thinking")
    expect(thinking).to_be_visible()
    expect(thinking).to_have_text("AI is thinking…")
    page.wait_for_timeout(500)
    expect(thinking).to_be_visible()
    assert page.locator("#reply .text").text_content() == ""
    expect(thinking).to_be_hidden(timeout=5_000)
    wait_finished(page)
    expect(last_reply(page).locator(".text")).to_have_text(reply_for(3))
    expect(last_reply(page).locator(".thinking")).to_have_count(0)


def test_stop_cancels_the_stream_and_the_upstream_request(
    page: Page, server: GunicornServer, upstream: FakeUpstream
) -> None:
    open_chat(page, server)
    deletes: list[str] = []
    page.on("request", lambda request: request.method == "DELETE" and deletes.append(request.url))
    tag = marker("stop")
    send(page, f"{tag} #tokens=200 #delay=0.1")
    expect(page.locator("#reply .text")).not_to_have_text("")
    page.click("#stop")

    assert_upstream_cancelled(upstream, tag)
    wait_finished(page)
    reply = last_reply(page)
    expect(reply.locator(".note")).to_have_text("You stopped this reply.")
    expect(page.locator("#stop")).to_be_hidden()
    stopped_at = reply.locator(".text").text_content()
    page.wait_for_timeout(400)
    assert reply.locator(".text").text_content() == stopped_at
    assert len(deletes) == 1 and re.search(r"/api/v1/ai/chat/stream/[0-9a-f]{32}$", deletes[0]), deletes


def test_stop_shows_exactly_the_partial_reply_that_was_saved(
    page: Page, server: GunicornServer, upstream: FakeUpstream
) -> None:
    """Tokens keep coming after the click, until the server acts on the DELETE, and some have arrived but not
    been read when the click is handled (here: the page was busy for 300 ms). The page reads on to the
    stream's ``cancelled`` and draws them all, so it shows what the server saved, not what was drawn at the
    click."""
    open_chat(page, server)
    tag = marker("stop-saved")
    send(page, f"{tag} #tokens=400 #delay=0.005")
    expect(page.locator("#reply .text")).not_to_have_text("")
    drawn = page.evaluate(
        """() => {
          const drawn = document.querySelector("#reply .text").textContent;
          const until = performance.now() + 300;
          while (performance.now() < until); // busy: what arrives now waits in the network buffer
          document.querySelector("#stop").click();
          return drawn;
        }"""
    )
    wait_finished(page)
    reply = last_reply(page)
    expect(reply.locator(".note")).to_have_text(STOPPED)
    assert upstream.connection_for(tag).completed is False, "stopped mid-reply"

    saved = saved_conversation(server, conversation_in_url(page))["messages"]
    assert [(item["role"], item["status"]) for item in saved] == [("user", "complete"), ("assistant", "incomplete")]
    shown = reply.locator(".text").text_content()
    assert shown == saved[1]["content"]
    assert len(drawn) < len(shown or "") < len(reply_for(400)), "tokens that came after the click are shown"


def test_sse_parser_handles_split_and_joined_events(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    result = page.evaluate(
        """async () => {
          const { SSEParser, parseChunks } = await import("/static/sse.js");
          const wire =
            "retry: 3000\\n\\n" +
            'id: s:0\\ndata: {"type":"metadata","streamId":"s"}\\n\\n' +
            'id: s:1\\ndata: {"type":"token","content":"Bébé 👶 dort"}\\n\\n' +
            ": ping\\n\\n" +
            'id: s:2\\ndata: {"type":"token","content":" — ça va"}\\n\\n' +
            'id: s:3\\ndata: {"type":"done","finishReason":"stop"}\\n\\n';
          const bytes = new TextEncoder().encode(wire);
          const slices = (points) => {
            const edges = [0, ...points, bytes.length];
            return edges.slice(1).map((end, i) => bytes.slice(edges[i], end));
          };
          const summary = (events) => events.map((e) => [e.id, JSON.parse(e.data)]);
          const whole = summary(parseChunks([bytes]));
          const emoji = bytes.indexOf(0xf0);  // first byte of the 4-byte 👶
          const accent = bytes.indexOf(0xc3); // first byte of the 2-byte é
          const field = wire.indexOf("data: {\\"type\\":\\"token\\"") + 3;
          const splits = {
            midUtf8Emoji: slices([emoji + 1, emoji + 2, emoji + 3]),
            midUtf8Accent: slices([accent + 1]),
            midFieldName: slices([field]),
            betweenNewlines: slices([wire.indexOf("\\n\\n", 20) + 1]),
            everyByte: slices(Array.from({ length: bytes.length - 1 }, (_, i) => i + 1)),
          };
          const results = {};
          for (const [name, chunks] of Object.entries(splits)) results[name] = summary(parseChunks(chunks));
          // A live parser: what each read yields, so several events in one read all come out of it.
          const live = new SSEParser();
          const perRead = slices([emoji + 2, bytes.length - 5]).map((c) => live.push(c).length);
          const crlf = new TextEncoder().encode(wire.replaceAll("\\n", "\\r\\n"));
          const crlfSplit = summary(parseChunks([crlf.slice(0, 15), crlf.slice(15, 16), crlf.slice(16)]));
          const carried = summary(parseChunks(["data: {\\"type\\":\\"tok", "en\\",\\"content\\":\\"x\\"}\\n", "\\n"]));
          return { whole, results, perRead, crlfSplit, carried, retry: live.retry };
        }"""
    )
    expected = [
        ["s:0", {"type": "metadata", "streamId": "s"}],
        ["s:1", {"type": "token", "content": "Bébé 👶 dort"}],
        ["s:2", {"type": "token", "content": " — ça va"}],
        ["s:3", {"type": "done", "finishReason": "stop"}],
    ]
    assert result["whole"] == expected
    for name, events in result["results"].items():
        assert events == expected, name
    assert result["perRead"] == [1, 2, 1], "a read holding several events yields all of them"
    assert result["crlfSplit"] == expected
    assert result["carried"] == [["", {"type": "token", "content": "x"}]]
    assert result["retry"] == 3000


def test_mid_stream_error_is_shown_as_a_sentence(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    send(page, f"{marker('midstream')} #tokens=10 #delay=0.05 #error_after=2")
    wait_finished(page)
    reply = last_reply(page)
    expect(reply.locator(".error")).to_have_text(UPSTREAM_ERROR)
    expect(reply.locator(".error")).to_have_attribute("role", "alert")
    expect(reply.locator(".text")).to_have_text(reply_for(2))


def test_every_error_code_reads_as_a_sentence(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    sentences = page.evaluate(
        """async () => {
          const { describeError } = await import("/static/errors.js");
          const codes = ["idle_timeout", "rate_limited", "upstream_error", "content_filtered", "cancelled",
            "server_shutdown", "internal", "validation_error", "unsafe_input", "unauthorized", "not_found",
            "payload_too_large", "upstream_unavailable", "unsupported_media_type", "context_too_long",
            "upstream_rejected", "network"];
          const out = Object.fromEntries(codes.map((code) => [code, describeError(code)]));
          out.rate_limited_after = describeError("rate_limited", { retryAfter: 42 });
          out.rate_limited_minutes = describeError("rate_limited", { retryAfter: 600 });
          out.budget_mid_stream = describeError("rate_limited", { midStream: true });
          return out;
        }"""
    )
    assert len(set(sentences.values())) == len(sentences), "each case has its own sentence"
    for code, sentence in sentences.items():
        assert re.fullmatch(r"[A-Z].{20,}[.]", sentence), (code, sentence)
        assert "_" not in sentence, (code, sentence)
    assert "try again in 42 seconds" in sentences["rate_limited_after"]
    assert "try again in 10 minutes" in sentences["rate_limited_minutes"]
    assert sentences["context_too_long"] == CONTEXT_TOO_LONG


def test_rate_limited_says_when_to_try_again(page: Page, server_factory: ServerFactory) -> None:
    limited = server_factory(RATE_LIMIT="1/minute")
    open_chat(page, limited)
    send(page, f"{marker('first')} #tokens=2")
    wait_finished(page)
    send(page, f"{marker('second')} #tokens=2")
    wait_finished(page)
    expect(last_reply(page).locator(".error")).to_have_text(
        re.compile(r"^You are sending messages faster than allowed\. Please try again in \d+ seconds?\.$")
    )


def test_token_field_sends_bearer_and_survives_reload(page: Page, server_factory: ServerFactory) -> None:
    secured = server_factory(JWT_SECRET=SECRET)
    open_chat(page, secured)
    expect(page.locator("#conversations-note")).to_contain_text("access token")
    send(page, f"{marker('anonymous')} #tokens=2")
    wait_finished(page)
    expect(last_reply(page).locator(".error")).to_have_text(
        "You need to sign in: paste a valid access token into the Access token field."
    )

    token = jwt.encode({"sub": "browser-user", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    page.fill("#token", token)
    page.press("#token", "Enter")
    tag = marker("signed-in")
    send(page, f"{tag} #tokens=3")
    wait_finished(page)
    expect(last_reply(page).locator(".text")).to_have_text(reply_for(3))

    page.reload()
    expect(page.locator("#token")).to_have_value(token)
    expect(page.locator("#conversations .conversation", has_text=tag)).to_have_count(1)


def test_retry_then_fallback_when_the_stream_endpoint_fails(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    aborted: list[str] = []

    def abort(route: Route) -> None:
        aborted.append(route.request.method)
        route.abort()

    page.route("**/api/v1/ai/chat/stream", abort)
    fallbacks: list[str] = []
    page.on("request", lambda request: request.url.endswith("/api/v1/ai/chat") and fallbacks.append(request.method))
    send(page, f"{marker('fallback')} #tokens=6")
    expect(page.locator("#stream-status")).to_contain_text("Reconnecting")
    wait_finished(page)
    expect(last_reply(page).locator(".text")).to_have_text(reply_for(6))
    expect(last_reply(page).locator(".error")).to_have_count(0)
    assert aborted == ["POST"] * (1 + RETRY_LIMIT), "the first attempt, then RETRY_LIMIT retries"
    assert fallbacks == ["POST"]


CUT_AFTER_TWO_TOKENS = """(serverNotices) => {
  const realFetch = window.fetch;
  window.fetch = async (input, init = {}) => {
    const url = typeof input === "string" ? input : input.url;
    const target = url.endsWith("/api/v1/ai/chat/stream") && init.method === "POST";
    if (!target || window.__cut) return realFetch(input, init);
    window.__cut = true;
    const response = await realFetch(input, init);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let seen = "";
    const body = new ReadableStream({
      async pull(controller) {
        if ((seen.match(/"type":"token"/g) || []).length >= 2) {
          if (serverNotices) reader.cancel();  // the socket closes: the server cancels the stream
          else (async () => { while (!(await reader.read()).done); })();  // the server keeps going unaware
          controller.error(new TypeError("network error"));
          return;
        }
        const { value, done } = await reader.read();
        if (done) return controller.close();
        seen += decoder.decode(value, { stream: true });
        controller.enqueue(value);
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
}"""


@pytest.mark.parametrize("server_notices", [False, True], ids=["stream-lives-on", "server-cancelled-it"])
def test_lost_connection_resumes_with_last_event_id(
    page: Page, server: GunicornServer, upstream: FakeUpstream, server_notices: bool
) -> None:
    """The reply's POST dies after two tokens; the page resumes with Last-Event-ID. When the server had
    already cancelled the stream (it saw the socket close), the replay ends in ``cancelled`` and the page
    asks the non-streaming endpoint instead."""
    open_chat(page, server)
    page.evaluate(CUT_AFTER_TWO_TOKENS, server_notices)
    resumes: list[tuple[str, str]] = []
    fallbacks: list[str] = []

    def record(request: Any) -> None:
        if "/api/v1/ai/chat/stream/" in request.url and request.method == "GET":
            resumes.append((request.url, request.headers.get("last-event-id", "")))
        elif request.url.endswith("/api/v1/ai/chat"):
            fallbacks.append(request.method)

    page.on("request", record)
    tag = marker("resume")
    send(page, f"{tag} #tokens=12 #delay=0.1")
    wait_finished(page)
    expect(last_reply(page).locator(".text")).to_have_text(reply_for(12))
    expect(last_reply(page).locator(".error")).to_have_count(0)
    assert len(resumes) == 1, resumes
    url, last_event_id = resumes[0]
    stream_id = url.rsplit("/", 1)[1]
    assert re.fullmatch(rf"{stream_id}:\d+", last_event_id), last_event_id
    assert int(last_event_id.split(":")[1]) >= 2
    assert fallbacks == (["POST"] if server_notices else [])
    streamed = [item for item in upstream.recorder.connections if tag in item.message]
    assert streamed[0].completed is not server_notices


def test_the_address_names_the_conversation_and_a_reload_returns_to_it(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    tag = marker("reload")
    message = f"{tag} How long do newborns sleep? #tokens=5"
    send(page, message)
    wait_finished(page)
    first = conversation_in_url(page)
    expect(page.locator("#conversations .conversation.current", has_text=tag)).to_have_count(1)

    page.reload()
    expect(page.locator("#conversation-title")).to_have_text(message)
    assert conversation_in_url(page) == first
    assert shown_messages(page) == [("user", message), ("assistant", reply_for(5))]
    entry = page.locator("#conversations .conversation", has_text=tag)
    expect(entry.locator(".open")).to_have_attribute("aria-current", "true")

    page.click("#new-conversation")
    expect(page.locator("#conversation-title")).to_have_text("New conversation")
    assert "c" not in parse_qs(urlparse(page.url).query)
    other = marker("other")
    send(page, f"{other} #tokens=2")
    wait_finished(page)
    assert conversation_in_url(page) != first
    page.go_back()  # to the first conversation: the new one's page took its own history entry
    expect(page.locator("#conversation-title")).to_have_text(message)
    assert conversation_in_url(page) == first
    expect(page.locator("#messages .message.assistant .text")).to_have_text([reply_for(5)])

    page.once("dialog", lambda dialog: dialog.accept())
    entry.locator(".delete").click()
    expect(entry).to_have_count(0)
    expect(page.locator("#conversation-title")).to_have_text("New conversation")
    expect(page.locator("#messages .message")).to_have_count(0)
    assert "c" not in parse_qs(urlparse(page.url).query)


def test_a_reload_mid_reply_picks_the_stream_up_and_shows_what_was_saved(
    page: Page, server: GunicornServer, upstream: FakeUpstream
) -> None:
    """The reloaded page resumes the stream from the Last-Event-ID it had. However the server treated the old
    page's connection closing (ended the stream, or kept it for a client coming back), the thread ends up as the
    server saved it, each message once."""
    open_chat(page, server)
    earlier = f"{marker('earlier')} #tokens=2"
    send(page, earlier)
    wait_finished(page)
    tag = marker("reload-mid-reply")
    message = f"{tag} #tokens=60 #delay=0.1"
    send(page, message)
    expect(page.locator("#reply .text")).to_contain_text(reply_for(3))
    conversation = conversation_in_url(page)

    with page.expect_request(lambda request: "/api/v1/ai/chat/stream/" in request.url) as resumed:
        page.reload()
    request = resumed.value
    assert request.method == "GET"
    stream_id = request.url.rsplit("/", 1)[1]
    last_event_id = request.headers.get("last-event-id", "")
    assert re.fullmatch(rf"{stream_id}:\d+", last_event_id), last_event_id
    assert int(last_event_id.split(":")[1]) >= 3, "resumed from where the old page was, not from the start"

    expect(page.locator("#messages .message")).to_have_count(4)
    wait_finished(page)
    saved = saved_conversation(server, conversation)["messages"]
    assert [item["role"] for item in saved] == ["user", "assistant", "user", "assistant"]
    assert shown_messages(page) == [(item["role"], item["content"]) for item in saved]
    assert saved[2]["content"] == message
    assert reply_for(60).startswith(saved[3]["content"]) and len(saved[3]["content"]) >= len(reply_for(3))
    if saved[3]["status"] == "incomplete":
        expect(last_reply(page).locator(".note")).to_have_text(NOT_FINISHED)
    assert running_streams(page) == []


def test_a_reload_mid_reply_ends_with_the_whole_reply_within_the_resume_grace(
    page: Page, server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    """With a resume grace the old page's closed connection does not end the stream: the reloaded page picks it up
    and shows the whole reply, complete, exactly as saved."""
    graced = server_factory(RESUME_GRACE_SECONDS="10")
    open_chat(page, graced)
    tag = marker("reload-graced")
    send(page, f"{tag} #tokens=40 #delay=0.05")
    expect(page.locator("#reply .text")).to_contain_text(reply_for(3))
    conversation = conversation_in_url(page)
    page.reload()
    wait_finished(page)
    saved = saved_conversation(graced, conversation)["messages"]
    assert (saved[-1]["status"], saved[-1]["content"]) == ("complete", reply_for(40))
    assert shown_messages(page) == [(item["role"], item["content"]) for item in saved]
    assert upstream.connection_for(tag).completed


def test_a_stream_still_running_after_a_reload_is_followed_live(
    page: Page, server: GunicornServer, upstream: FakeUpstream
) -> None:
    """What a reload finds when the server keeps the stream running for a client coming back: a second tab
    given the first one's remembered stream opens the conversation and follows the reply live to its end."""
    open_chat(page, server)
    tag = marker("still-running")
    send(page, f"{tag} #tokens=40 #delay=0.1")
    expect(page.locator("#reply .text")).not_to_have_text("")
    conversation = conversation_in_url(page)
    key = f"chat.stream.{conversation}"
    assert running_streams(page) == [key]
    remembered = page.evaluate("(key) => sessionStorage.getItem(key)", key)

    other = page.context.new_page()
    errors: list[str] = []
    other.on("pageerror", lambda error: errors.append(str(error)))
    other.goto(f"{server.url}/")
    other.evaluate("([key, value]) => sessionStorage.setItem(key, value)", [key, remembered])
    other.goto(f"{server.url}/?c={conversation}")
    expect(other.locator("#reply .text")).not_to_have_text("")
    assert upstream.connection_for(tag).completed is False, "joined while the model was still writing"
    expect(other.locator("#conversation-title")).to_have_text(f"{tag} #tokens=40 #delay=0.1")
    wait_finished(other)
    wait_finished(page)

    saved = saved_conversation(server, conversation)["messages"]
    assert [(item["role"], item["status"]) for item in saved] == [("user", "complete"), ("assistant", "complete")]
    assert saved[1]["content"] == reply_for(40)
    assert shown_messages(other) == [(item["role"], item["content"]) for item in saved]
    expect(other.locator("#messages .message.assistant .meta")).to_contain_text("40 tokens")
    assert running_streams(other) == [] and running_streams(page) == []
    assert errors == []


def test_a_remembered_stream_that_finished_meanwhile_is_shown_once(page: Page, server: GunicornServer) -> None:
    """The stream ended and was saved between the old page leaving and the new one loading: the saved
    conversation already holds the reply that the resume replays, and the page shows it once."""
    open_chat(page, server)
    send(page, f"{marker('earlier')} #tokens=2")
    wait_finished(page)
    send(page, f"{marker('finished-meanwhile')} #tokens=12 #delay=0.05")
    expect(page.locator("#reply")).to_have_count(1)
    conversation = conversation_in_url(page)
    key = f"chat.stream.{conversation}"
    remembered = page.wait_for_function("(key) => sessionStorage.getItem(key)", arg=key).json_value()
    wait_finished(page)
    assert running_streams(page) == []
    page.evaluate("([key, value]) => sessionStorage.setItem(key, value)", [key, remembered])

    with page.expect_response(lambda response: "/api/v1/ai/chat/stream/" in response.url) as resumed:
        page.reload()
    assert resumed.value.status == 200
    expect(page.locator("#messages .message")).to_have_count(4)
    wait_finished(page)
    saved = saved_conversation(server, conversation)["messages"]
    assert shown_messages(page) == [(item["role"], item["content"]) for item in saved]
    assert saved[3]["content"] == reply_for(12)
    assert running_streams(page) == []


def test_a_remembered_stream_that_is_gone_shows_the_saved_conversation(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    message = f"{marker('gone')} #tokens=4"
    send(page, message)
    wait_finished(page)
    conversation = conversation_in_url(page)
    ghost = uuid.uuid4().hex
    remembered = {"streamId": ghost, "lastEventId": f"{ghost}:2", "messageId": "", "message": "lost", "text": "Baby"}
    page.evaluate(
        "([key, value]) => sessionStorage.setItem(key, JSON.stringify(value))",
        [f"chat.stream.{conversation}", remembered],
    )

    with page.expect_response(lambda response: ghost in response.url) as resumed:
        page.reload()
    assert (resumed.value.request.method, resumed.value.status) == ("GET", 404)
    expect(page.locator("#messages .message")).to_have_count(2)
    expect(page.locator("#reply")).to_have_count(0)
    assert shown_messages(page) == [("user", message), ("assistant", reply_for(4))]
    assert running_streams(page) == []


def test_the_live_title_is_the_title_the_server_saves(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    tag = marker("title")
    words = "and   naps\tand  nights,   " * 8
    message = f"{tag}    Tell me\t\tabout  baby 👶   sleep,\n\n   please   {words} #tokens=20 #delay=0.1"
    expected = " ".join(message.split())[:TITLE_CHARS]
    assert len(" ".join(message.split())) > TITLE_CHARS and "👶" in expected
    send(page, message)

    live = page.locator("#conversations .conversation.current.provisional .title")
    expect(live).to_have_count(1)
    heading = page.locator("#conversation-title")
    assert (live.text_content(), heading.text_content()) == (expected, expected)
    expect(page.locator("#reply")).to_have_count(1)  # still streaming after the read: nothing was saved yet
    wait_finished(page)

    listed = httpx.get(f"{server.url}/api/v1/ai/conversations", timeout=10).json()["conversations"]
    saved = [item["title"] for item in listed if item["id"] == conversation_in_url(page)]
    assert saved == [expected]
    loaded = page.locator("#conversations .conversation.current:not(.provisional) .title")
    expect(loaded).to_have_count(1)  # the list as the server has it now
    assert loaded.text_content() == expected
    expect(live).to_have_count(0)


def test_a_chat_logs_no_console_errors(page: Page, server: GunicornServer) -> None:
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"{message.type}: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    open_chat(page, server)
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert icon
    for path in (icon, "/favicon.ico"):  # the page's own link, and the path browsers try by convention
        response = page.request.get(f"{server.url}{path}")
        assert response.status == 200 and "svg" in response.headers["content-type"], path

    for name in ("first", "second"):
        send(page, f"{marker(name)} Tell me about baby sleep #tokens=8 #delay=0.02")
        wait_finished(page)
    page.reload()
    expect(page.locator("#messages .message")).to_have_count(4)
    expect(page.locator("#conversations .conversation.current")).to_have_count(1)
    assert problems == []


def test_context_too_long_says_so_and_offers_a_new_conversation(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    send(page, f"{marker('first')} #tokens=2")
    wait_finished(page)
    message = f"{marker('too-long')} #context=openai #window=10"
    send(page, message)
    wait_finished(page)
    reply = last_reply(page)
    expect(reply.locator(".error")).to_have_text(CONTEXT_TOO_LONG)
    reply.get_by_role("button", name="New conversation").click()
    expect(page.locator("#conversation-title")).to_have_text("New conversation")
    expect(page.locator("#messages .message")).to_have_count(0)
    expect(page.locator("#message")).to_have_value(message)
    assert "c" not in parse_qs(urlparse(page.url).query)


def test_pause_freezes_the_display_and_resume_catches_up(
    page: Page, server: GunicornServer, upstream: FakeUpstream
) -> None:
    open_chat(page, server)
    tag = marker("pause")
    send(page, f"{tag} #tokens=20 #delay=0.05")
    text = page.locator("#reply .text")
    expect(text).not_to_have_text("")
    page.click("#pause")
    expect(page.locator("#pause")).to_have_text("Resume")
    expect(page.locator("#pause")).to_have_attribute("aria-pressed", "true")
    frozen = text.text_content()
    assert frozen is not None and len(frozen) < len(reply_for(20))

    wait_until(lambda: upstream.connection_for(tag).completed, what="the whole reply to arrive")
    page.wait_for_timeout(300)
    assert text.text_content() == frozen, "the display stays frozen while paused"
    expect(page.locator("#stream-status")).to_have_text(re.compile(r"^Paused: \d+ new tokens? waiting\.$"))
    expect(page.locator("#reply")).to_have_count(1)

    page.click("#pause")
    wait_finished(page)
    expect(last_reply(page).locator(".text")).to_have_text(reply_for(20))


def test_leaving_the_page_ends_the_stream(page: Page, server_factory: ServerFactory, upstream: FakeUpstream) -> None:
    """The page does not cancel on leaving (a reload picks the stream up): the closed connection ends it, at once
    on a server that keeps no stream for a client coming back."""
    no_grace = server_factory(RESUME_GRACE_SECONDS="0")
    open_chat(page, no_grace)
    tag = marker("leave")
    send(page, f"{tag} #tokens=200 #delay=0.1")
    expect(page.locator("#reply .text")).not_to_have_text("")
    page.goto("about:blank")
    assert_upstream_cancelled(upstream, tag)


def test_new_conversation_cancels_the_open_stream(page: Page, server: GunicornServer, upstream: FakeUpstream) -> None:
    open_chat(page, server)
    tag = marker("switch")
    send(page, f"{tag} #tokens=200 #delay=0.1")
    expect(page.locator("#reply .text")).not_to_have_text("")
    page.click("#new-conversation")
    assert_upstream_cancelled(upstream, tag)
    expect(page.locator("#messages .message")).to_have_count(0)
    expect(page.locator("#reply")).to_have_count(0)
    expect(page.locator("#conversation-title")).to_have_text("New conversation")
    expect(page.locator("#send")).to_be_enabled()


def test_message_list_keeps_at_most_max_messages(page: Page, server: GunicornServer) -> None:
    open_chat(page, server)
    messages = page.locator("#messages")
    expect(messages).to_have_attribute("data-max-messages", "200")
    page.evaluate("document.querySelector('#messages').dataset.maxMessages = '3'")
    for name in ("first", "second"):
        send(page, f"{marker(name)} #tokens=2")
        wait_finished(page)
    expect(messages.locator(".message")).to_have_count(3)
    expect(messages.locator(".message").first).to_have_class(re.compile(r"\bassistant\b"))
    expect(page.locator("#trimmed-note")).to_be_visible()
