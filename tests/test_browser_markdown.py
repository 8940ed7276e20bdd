"""The chat page renders replies as Markdown while they stream, within the display interval, and shows a reasoning
model's thinking in a collapsed block: headless Chromium against real gunicorn and the scripted upstream."""

from __future__ import annotations

from typing import Any

from tests.conftest import ServerFactory
from tests.fake_upstream import REASONING_WORDS
from tests.servers import GunicornServer
from tests.test_browser import (  # noqa: F401 - browser and page are the fixtures these tests use
    MISSING,
    browser,
    last_reply,
    marker,
    open_chat,
    page,
    reply_for,
    send,
    wait_finished,
)

if MISSING is None:
    from playwright.sync_api import Page, expect

FLUSH_INTERVAL_MS = 50  # reply-view.js
STATS = "async () => ({ ...(await import('/static/reply-view.js')).renderStats })"
RESET_STATS = """async () => {
  const stats = (await import('/static/reply-view.js')).renderStats;
  Object.assign(stats, { count: 0, totalMs: 0, maxMs: 0, maxChars: 0, overInterval: 0 });
}"""
# Samples the streaming reply: whether a table and a code block were on screen before the reply was done.
WATCH_STREAMING = """async () => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const deadline = performance.now() + 30000;
  let reply = null;
  while (!(reply = document.querySelector("#reply")) && performance.now() < deadline) await sleep(5);
  const seen = { table: false, code: false, copy: false, lengths: [] };
  while (!reply.classList.contains("done") && performance.now() < deadline) {
    const text = reply.querySelector(".text");
    seen.table ||= text.querySelector("table td") !== null;
    seen.code ||= text.querySelector("pre > code") !== null;
    seen.copy ||= text.querySelector("pre > button.copy-code") !== null;
    seen.lengths.push(text.textContent.length);
    await sleep(20);
  }
  return seen;
}"""


def stats(tab: Page) -> dict[str, Any]:
    found: dict[str, Any] = tab.evaluate(STATS)
    return found


def test_a_reply_renders_as_markdown_with_a_copy_button(page: Page, server: GunicornServer) -> None:  # noqa: F811
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_chat(page, server)
    send(page, f"{marker('markdown')} #markdown #delay=0.01")
    wait_finished(page)
    text = last_reply(page).locator(".text")
    expect(text.locator("h2")).to_have_text("Sleep plan")
    expect(text.locator("strong")).to_have_text("a plan")
    expect(text.locator("p code")).to_have_text("inline code")
    link = text.locator("a")
    expect(link).to_have_attribute("href", "https://example.com/sleep")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    expect(text.locator("ul > li")).to_have_text(["first item", "second item"])
    expect(text.locator("table tr")).to_have_count(3)
    expect(text.locator("table td")).to_have_text(["newborn", "16", "one year", "13"])
    code = text.locator("pre > code")
    expect(code).to_have_text("print('hello <b>world</b>')\n")
    assert text.locator("b").count() == 0  # the code's markup is text
    text.locator("pre > button.copy-code").click()
    expect(text.locator("pre > button.copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "print('hello <b>world</b>')\n"

    page.reload()  # the saved reply, drawn from the conversation: Markdown too
    expect(last_reply(page).locator(".text table td")).to_have_text(["newborn", "16", "one year", "13"])
    expect(last_reply(page).locator(".text pre > button.copy-code")).to_have_count(1)


def test_a_long_reply_renders_as_it_streams_within_the_display_interval(
    page: Page,  # noqa: F811
    server: GunicornServer,
) -> None:
    """4,000 tokens of Markdown: each render (parse, sanitise, swap in) takes at most the 50 ms display interval,
    and renders come at most once an interval, not once a token. A render is timed by the wall clock, and the
    browser shares two cores with the server and the upstream: one render in the reply may be held up past the
    interval by the machine (never past two), every other one must fit. A short reply comes first: a page's first
    renders pay for compiling the parser and the sanitiser, once."""
    open_chat(page, server)
    send(page, f"{marker('warm')} #markdown #tokens=60")  # the page's first renders compile the parser: not timed
    wait_finished(page)
    page.evaluate(RESET_STATS)
    started = page.evaluate("performance.now()")
    send(page, f"{marker('long')} #markdown #tokens=4000 #delay=0.0005")
    seen = page.evaluate(WATCH_STREAMING)
    wait_finished(page, timeout=30_000)
    elapsed_ms = page.evaluate("performance.now()") - started
    rendered = stats(page)
    assert seen["table"] and seen["code"] and seen["copy"], "Markdown was rendered while the reply streamed"
    assert len({length for length in seen["lengths"] if length}) >= 5, "the reply grew on screen as it streamed"
    assert rendered["maxChars"] >= 4000 * 4 - 4, rendered  # the whole reply was rendered at the end
    assert rendered["overInterval"] <= 1 and rendered["maxMs"] <= 2 * FLUSH_INTERVAL_MS, rendered
    assert rendered["totalMs"] / rendered["count"] <= FLUSH_INTERVAL_MS / 2, rendered
    assert 2 <= rendered["count"] <= elapsed_ms / FLUSH_INTERVAL_MS + 2, (rendered, elapsed_ms)
    assert last_reply(page).locator(".text table").count() >= 10  # the whole reply, every table of it


def test_reasoning_streams_into_a_collapsed_thinking_block(page: Page, server: GunicornServer) -> None:  # noqa: F811
    open_chat(page, server)
    send(page, f"{marker('thinking')} #reasoning=8 #tokens=5 #delay=0.1")
    block = page.locator("#reply details.reasoning")
    expect(block).to_have_count(1)
    expect(block.locator("summary")).to_have_text("Thinking")
    assert block.get_attribute("open") is None, "collapsed while it streams"
    expect(block.locator(".reasoning-text")).not_to_have_text("")
    first = block.locator(".reasoning-text").text_content() or ""
    thought = " ".join(REASONING_WORDS[:8])
    assert thought.startswith(first) and first != thought, "the thinking streams piece by piece"
    wait_finished(page)
    reply = last_reply(page)
    expect(reply.locator("details.reasoning .reasoning-text")).to_have_text(thought)
    expect(reply.locator(".text")).to_have_text(reply_for(5))  # the answer holds no reasoning
    expect(reply.locator(".meta")).to_contain_text("8 thinking")
    reply.locator("details.reasoning summary").click()
    expect(reply.locator("details.reasoning .reasoning-text")).to_be_visible()

    page.reload()  # the saved reply keeps its thinking apart, collapsed
    saved = last_reply(page)
    expect(saved.locator("details.reasoning .reasoning-text")).to_have_text(thought)
    assert saved.locator("details.reasoning").get_attribute("open") is None
    expect(saved.locator(".text")).to_have_text(reply_for(5))


def test_a_reload_mid_thinking_picks_up_the_thinking_and_the_answer(
    page: Page,  # noqa: F811
    server_factory: ServerFactory,
) -> None:
    """The reloaded page resumes from its last event: the thinking it had plus what followed, then the answer."""
    graced = server_factory(RESUME_GRACE_SECONDS="10")
    open_chat(page, graced)
    send(page, f"{marker('reload-thinking')} #reasoning=12 #tokens=4 #delay=0.08")
    expect(page.locator("#reply details.reasoning .reasoning-text")).to_contain_text("Let me think")
    page.reload()
    wait_finished(page)
    reply = last_reply(page)
    thought = " ".join(REASONING_WORDS[:12])
    expect(reply.locator("details.reasoning .reasoning-text")).to_have_text(thought)
    expect(reply.locator(".text")).to_have_text(reply_for(4))
