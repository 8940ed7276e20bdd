"""The chat page never runs what the model writes: its raw HTML shows as text, its Markdown becomes only sanitised
elements, and the page runs under its Content-Security-Policy without a single violation: headless Chromium against
real gunicorn and a scripted upstream that replies with markup and script (``#hostile``, ``#hostile_markdown``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_upstream import HOSTILE_REPLY
from tests.servers import GunicornServer
from tests.test_browser import MISSING, _launch, last_reply, marker, open_chat, send, shown_messages, wait_finished

if MISSING is None:
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

pytestmark = pytest.mark.browser
USER_MARKUP = "<img src=y onerror=\"window.__xss='user';console.error('xss-ran')\"><script>window.__xss='u2'</script>"
# Recorded from before the page's own scripts run (an init script is the browser's, not the page's: no CSP).
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) =>
  window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`));
"""
ELEMENTS_FROM_TEXT = "#messages img, #messages script, #messages iframe, #messages a, #messages b, #conversations img"
# The reply is Markdown: its paragraphs (blank-line separated), the raw HTML in them as text, ``&amp;`` an entity.
HOSTILE_PARAGRAPHS = [part.replace("&amp;", "&") for part in HOSTILE_REPLY.split("\n\n") if part]
ELEMENTS_FROM_MARKDOWN = (
    "#messages img, #messages script, #messages iframe, #messages svg, #messages details, #messages [onerror], "
    "#messages [onload], #messages a[href^='javascript'], #messages a[href^='data']"
)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if MISSING is not None:
        pytest.fail(MISSING, pytrace=False)
    with sync_playwright() as playwright_:
        launched = _launch(playwright_)
        yield launched
        launched.close()


@pytest.fixture
def watched(chromium: Browser) -> Iterator[tuple[Page, list[str]]]:
    """A fresh page with every console message, uncaught error and CSP violation recorded."""
    context = chromium.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    console: list[str] = []
    errors: list[str] = []

    def note(message: ConsoleMessage) -> None:
        console.append(f"{message.type}: {message.text}")

    page.on("console", note)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(WATCH_VIOLATIONS)
    yield page, console
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def assert_nothing_ran(page: Page, console: list[str]) -> None:
    assert page.evaluate("window.__xss") is None, "markup from a message ran script"
    assert page.locator(ELEMENTS_FROM_TEXT).count() == 0, "markup from a message became elements"
    assert not [line for line in console if "xss-ran" in line]
    assert page.evaluate("window.__violations") == []
    assert not [line for line in console if line.startswith(("error", "warning"))], console


def test_markup_in_a_streamed_reply_shows_as_text_and_runs_nothing(
    watched: tuple[Page, list[str]], server: GunicornServer
) -> None:
    page, console = watched
    open_chat(page, server)
    question = f"{marker('xss')} {USER_MARKUP} #hostile #delay=0.01"
    send(page, question)
    wait_finished(page)

    expect(last_reply(page).locator(".text p")).to_have_text(HOSTILE_PARAGRAPHS)
    assert shown_messages(page)[0] == ("user", question)
    assert_nothing_ran(page, console)

    # The saved conversation, drawn again from the API after a reload (title, history): text too.
    page.reload()
    expect(page.locator("#messages .message")).to_have_count(2)
    assert shown_messages(page)[0] == ("user", question)
    expect(last_reply(page).locator(".text p")).to_have_text(HOSTILE_PARAGRAPHS)
    expect(page.locator("#conversations .title").first).to_contain_text("<img src=y")
    assert_nothing_ran(page, console)


def test_the_page_works_under_its_policy_with_no_violation(
    watched: tuple[Page, list[str]], server: GunicornServer
) -> None:
    """Scripts, styles and the icon all load from the service's own files: the page styles itself and streams."""
    page, console = watched
    open_chat(page, server)
    layout = page.evaluate("getComputedStyle(document.querySelector('.layout')).display")
    assert layout in {"grid", "flex"}, "app.css applied"
    send(page, f"{marker('csp')} hello #tokens=5")
    wait_finished(page)
    expect(last_reply(page).locator(".text")).to_have_text("Baby sleep patterns change a")
    assert page.evaluate("window.__violations") == []
    assert not [line for line in console if line.startswith(("error", "warning"))], console


def test_hostile_markdown_becomes_only_harmless_elements(
    watched: tuple[Page, list[str]], server: GunicornServer
) -> None:
    """Links to ``javascript:`` or ``data:``, an image with a handler, HTML blocks and SVG: nothing runs, nothing
    of it becomes an element but inert links and text; a code block shows its script as text."""
    page, console = watched
    open_chat(page, server)
    send(page, f"{marker('xss-md')} #hostile_markdown #delay=0.01")
    wait_finished(page)
    reply = last_reply(page)
    expect(reply.locator(".text em")).to_have_text("the end")  # the Markdown was rendered
    expect(reply.locator(".text pre code")).to_have_text("<script>window.__xss=8</script>\n")
    assert page.locator(ELEMENTS_FROM_MARKDOWN).count() == 0, "markup from the reply became live elements"
    links = reply.locator(".text a").evaluate_all(
        "(links) => links.map((a) => [a.textContent, a.getAttribute('href')])"
    )
    assert ["click me", None] in links, links  # the Markdown link is kept, its script URL is not
    assert all(href is None or href.startswith("x") for _, href in links), links
    expect(reply.locator(".text")).to_contain_text("<img src=x onerror=")  # embedded HTML shows as text
    assert page.evaluate("window.__xss") is None, "markup from the reply ran script"
    assert not [line for line in console if "xss-ran" in line]
    assert page.evaluate("window.__violations") == []
    assert not [line for line in console if line.startswith(("error", "warning"))], console
