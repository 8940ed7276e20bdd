"""The chat page's model picker, regenerate, edit and "2 / 3" version arrows in headless Chromium, against real
gunicorn and the scripted upstream."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.fake_upstream import FakeUpstream
from tests.test_browser import (
    MISSING,
    _launch,
    _Missing,
    conversation_in_url,
    marker,
    open_chat,
    reply_for,
    saved_conversation,
    send,
    shown_messages,
    wait_finished,
    wait_until,
)

with contextlib.suppress(ImportError):  # tests.test_browser names what is missing
    from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if MISSING is not None:
        yield _Missing()  # type: ignore[misc]
        return
    with sync_playwright() as playwright_:
        launched = _launch(playwright_)
        yield launched
        launched.close()


@pytest.fixture
def tab(chromium: Browser) -> Iterator[Page]:
    """A fresh context per test; uncaught page errors fail the test."""
    if MISSING is not None:
        yield _Missing()  # type: ignore[misc]
        return
    context = chromium.new_context(viewport={"width": 1200, "height": 800})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def last_body(upstream: FakeUpstream) -> dict[str, Any]:
    with upstream.recorder.lock:
        body: dict[str, Any] = upstream.recorder.requests[-1]["body"]
    return body


def test_regenerate_with_another_model_makes_a_sibling_and_the_arrows_switch_branch(
    tab: Page, server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    server = server_factory(CHAT_MODELS="test-model,other-model")
    open_chat(tab, server)
    picker = tab.locator("#model")
    expect(picker).to_be_visible()
    expect(picker.locator("option")).to_have_count(2)
    expect(picker).to_have_value("test-model")
    first, second = f"{marker('first')} #tokens=2", f"{marker('second')} #tokens=3 #delay=0.2"
    for text in (first, second):
        send(tab, text)
        wait_finished(tab)
    replies = tab.locator("#messages .message.assistant")
    expect(replies.last.locator(".message-regenerate")).to_be_visible()  # the ids are known: controls are drawn
    expect(replies.last.locator(".meta")).to_contain_text("test-model")
    expect(tab.locator(".branch-nav")).to_have_count(0)
    conversation = conversation_in_url(tab)
    old_reply = saved_conversation(server, conversation)["currentMessageId"]

    picker.select_option("other-model")
    replies.last.locator(".message-regenerate").click()
    actions = tab.locator("#messages .message-actions button")
    expect(actions.first).to_have_attribute("aria-disabled", "true")  # one turn at a time: greyed while it streams
    wait_finished(tab)
    expect(actions.first).not_to_have_attribute("aria-disabled", "true")
    expect(replies.last.locator(".branch-position")).to_have_text("2 / 2")
    expect(replies.last.locator(".meta")).to_contain_text("other-model")
    assert shown_messages(tab) == [
        ("user", first),
        ("assistant", reply_for(2)),
        ("user", second),
        ("assistant", reply_for(3)),
    ]
    sent = last_body(upstream)
    assert sent["model"] == "other-model"
    assert [item["content"] for item in sent["messages"] if item["role"] != "system"] == [first, reply_for(2), second]
    saved = saved_conversation(server, conversation)
    new_reply = saved["currentMessageId"]
    assert new_reply != old_reply and len(saved["allMessages"]) == 5

    replies.last.locator(".branch-previous").click()
    expect(replies.last.locator(".branch-position")).to_have_text("1 / 2")
    expect(replies.last.locator(".meta")).to_contain_text("test-model")
    wait_until(lambda: saved_conversation(server, conversation)["currentMessageId"] == old_reply, what="the switch")
    replies.last.locator(".branch-next").click()
    expect(replies.last.locator(".branch-position")).to_have_text("2 / 2")
    expect(replies.last.locator(".meta")).to_contain_text("other-model")
    wait_until(lambda: saved_conversation(server, conversation)["currentMessageId"] == new_reply, what="the switch")

    tab.reload()  # the saved conversation shows the same branch and versions
    expect(replies.last.locator(".branch-position")).to_have_text("2 / 2")
    expect(tab.locator("#messages .message")).to_have_count(4)


def test_edit_starts_a_new_branch_and_the_old_one_stays_reachable(
    tab: Page, server_factory: ServerFactory, upstream: FakeUpstream
) -> None:
    server = server_factory()
    open_chat(tab, server)
    expect(tab.locator(".model-picker")).to_be_hidden()  # one model: no choice to offer
    first, second = f"{marker('first')} #tokens=2", f"{marker('second')} #tokens=3"
    for text in (first, second):
        send(tab, text)
        wait_finished(tab)
    questions = tab.locator("#messages .message.user")
    expect(questions.last.locator(".message-edit")).to_be_visible()
    questions.first.locator(".message-edit").click()
    editor = questions.first.locator(".edit-text")
    expect(editor).to_have_value(first)
    edited = f"{marker('edited')} #tokens=4"
    editor.fill(edited)
    editor.press("Enter")
    wait_finished(tab)
    assert shown_messages(tab) == [("user", edited), ("assistant", reply_for(4))]
    assert [item["content"] for item in last_body(upstream)["messages"] if item["role"] != "system"] == [edited]
    expect(questions.first.locator(".branch-position")).to_have_text("2 / 2")

    questions.first.locator(".branch-previous").click()
    expect(questions.first.locator(".branch-position")).to_have_text("1 / 2")
    expect(tab.locator("#messages .message")).to_have_count(4)
    assert shown_messages(tab)[0] == ("user", first)


def test_a_reload_mid_regenerate_picks_it_up_in_place_of_the_old_reply(
    tab: Page, server_factory: ServerFactory
) -> None:
    graced = server_factory(RESUME_GRACE_SECONDS="10")
    open_chat(tab, graced)
    question = f"{marker('slow')} #tokens=30 #delay=0.05"
    send(tab, question)
    wait_finished(tab)
    replies = tab.locator("#messages .message.assistant")
    replies.last.locator(".message-regenerate").click()
    expect(tab.locator("#reply .text")).to_contain_text(reply_for(3))
    tab.reload()
    wait_finished(tab)
    assert shown_messages(tab) == [("user", question), ("assistant", reply_for(30))]  # one question, one reply
    expect(replies.last.locator(".branch-position")).to_have_text("2 / 2")
    saved = saved_conversation(graced, conversation_in_url(tab))
    assert len(saved["allMessages"]) == 3 and saved["messages"][-1]["status"] == "complete"
