// The chat page: conversations on the left, the thread and the composer on the right.
//
// Wires the controls to turns (turn.js), keeps the conversation list, and keeps the page's place: the
// open conversation is in the URL (?c=<id>) and a reply streaming when the tab reloads is picked up
// again from sessionStorage (place.js). Leaving or reloading the page does not cancel a reply: its
// connection closes, and the server decides how long it keeps the stream for a client coming back.
// Stop and switching conversation do cancel it.
import { deleteConversation, errorCode, getConversation, listConversations, saveToken, savedToken } from "./api.js";
import { describeError, NEEDS_NEW_CONVERSATION } from "./errors.js";
import { conversationInUrl, forgetRunningStream, rememberRunningStream, runningStream, showConversationInUrl } from "./place.js";
import { element, messageElement, savedMessageElement } from "./reply-view.js";
import { conversationTitle, UNTITLED } from "./title.js";
import { Turn } from "./turn.js";
import { bindSetting as bindTransportSetting } from "./ws.js";

export const DEFAULT_MAX_MESSAGES = 200;

/** The saved messages without the exchange whose reply is `messageId` (a reply being picked up). */
function withoutExchange(messages, messageId) {
  const index = messages.findIndex((message) => message.id === messageId);
  if (index === -1) return messages;
  const start = index > 0 && messages[index - 1].role === "user" ? index - 1 : index;
  return [...messages.slice(0, start), ...messages.slice(index + 1)];
}

class ChatPage {
  constructor(root) {
    const $ = (id) => root.getElementById(id);
    this.el = {
      conversations: $("conversations"),
      conversationsNote: $("conversations-note"),
      newConversation: $("new-conversation"),
      title: $("conversation-title"),
      scroller: $("scroller"),
      messages: $("messages"),
      live: $("live"),
      trimmedNote: $("trimmed-note"),
      emptyNote: $("empty-note"),
      composer: $("composer"),
      input: $("message"),
      send: $("send"),
      stop: $("stop"),
      pause: $("pause"),
      status: $("stream-status"),
      token: $("token"),
      tokenForm: $("token-form"),
    };
    this.turn = null;
    this.conversationId = null;
    this.conversationList = [];
    this.provisional = null; // the list entry of a new conversation the server has not saved yet
    this.loadCounter = 0;
    this.hooks = {
      status: (turn, text) => turn === this.turn && this.setStatus(text),
      drawn: (turn) => turn === this.turn && this.nearBottom() && this.scrollToBottom(),
      buffered: (turn, count) => turn === this.turn && this.setStatus(`Paused: ${count} new token${count === 1 ? "" : "s"} waiting.`),
      conversation: (turn) => this.adoptConversation(turn),
      started: (turn) => turn === this.turn && this.rememberTurn(),
      finished: (turn) => this.turnFinished(turn),
      gone: (turn) => this.turnGone(turn),
      actions: (turn, code) => this.actionsFor(turn, code),
    };
  }

  get maxMessages() {
    const value = Number.parseInt(this.el.messages.dataset.maxMessages, 10);
    return Number.isFinite(value) && value > 0 ? value : DEFAULT_MAX_MESSAGES;
  }

  start() {
    const { el } = this;
    el.token.value = savedToken();
    bindTransportSetting(document.getElementById("use-websocket"));
    el.token.addEventListener("change", () => this.saveToken());
    el.tokenForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.saveToken();
    });
    el.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    el.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    });
    el.stop.addEventListener("click", () => this.stop());
    el.pause.addEventListener("click", () => this.togglePause());
    el.newConversation.addEventListener("click", () => this.newConversation());
    // pagehide fires on reload, navigation and tab close (and, unlike beforeunload, keeps the page
    // eligible for the back/forward cache): remember where a streaming reply is, for a reload to resume.
    window.addEventListener("pagehide", () => this.rememberTurn());
    window.addEventListener("popstate", () => this.followUrl());
    this.updateEmpty();
    this.loadConversations();
    this.followUrl();
    el.input.focus();
  }

  saveToken() {
    saveToken(this.el.token.value.trim());
    this.loadConversations();
  }

  setStatus(text) {
    this.el.status.textContent = text;
  }

  setBusy(busy) {
    this.el.send.disabled = busy;
    this.el.stop.hidden = !busy;
    this.el.stop.disabled = false;
    this.el.pause.hidden = !busy;
    this.el.pause.textContent = "Pause";
    this.el.pause.setAttribute("aria-pressed", "false");
    if (!busy) this.setStatus("");
  }

  updateEmpty() {
    this.el.emptyNote.hidden = this.el.messages.childElementCount > 0 || this.el.live.childElementCount > 0;
  }

  nearBottom() {
    const s = this.el.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 120;
  }

  scrollToBottom() {
    this.el.scroller.scrollTop = this.el.scroller.scrollHeight;
  }

  appendMessage(node) {
    this.el.messages.append(node);
    this.trim();
    this.updateEmpty();
  }

  trim() {
    const list = this.el.messages;
    const max = this.maxMessages;
    let removed = false;
    while (list.childElementCount > max) {
      list.firstElementChild.remove();
      removed = true;
    }
    if (removed) this.el.trimmedNote.hidden = false;
  }

  clearThread() {
    this.el.messages.replaceChildren();
    this.el.live.replaceChildren();
    this.el.trimmedNote.hidden = true;
    this.updateEmpty();
  }

  showError(text) {
    const alert = element("p", "error", text);
    alert.setAttribute("role", "alert");
    this.el.live.append(alert);
    this.updateEmpty();
  }

  // -- turns -----------------------------------------------------------------------------------------

  send() {
    const text = this.el.input.value.trim();
    if (!text || this.turn) return;
    this.el.input.value = "";
    if (!this.conversationId) this.el.title.textContent = conversationTitle(text);
    this.appendMessage(messageElement("user", text));
    this.startTurn(new Turn({ message: text, conversationId: this.conversationId, hooks: this.hooks }));
  }

  startTurn(turn) {
    this.turn = turn;
    this.el.live.append(turn.view.el);
    this.updateEmpty();
    this.scrollToBottom();
    this.setBusy(true);
    turn.run();
  }

  stop() {
    if (!this.turn) return;
    this.el.stop.disabled = true;
    this.turn.cancel();
  }

  togglePause() {
    const turn = this.turn;
    if (!turn) return;
    const pausing = !turn.view.paused;
    this.el.pause.textContent = pausing ? "Resume" : "Pause";
    this.el.pause.setAttribute("aria-pressed", String(pausing));
    if (pausing) turn.view.pause();
    else {
      this.setStatus("");
      turn.view.resume();
    }
  }

  adoptConversation(turn) {
    if (turn !== this.turn || this.conversationId === turn.conversationId) return;
    const id = turn.conversationId;
    this.conversationId = id;
    showConversationInUrl(id);
    this.listProvisionally(id, turn.message);
  }

  /** List a conversation the server has not saved yet, titled as the server will title it. */
  listProvisionally(id, message) {
    if (!this.conversationList.some((item) => item.id === id)) {
      this.provisional = { id, title: conversationTitle(message), updatedAt: new Date().toISOString() };
      this.conversationList = [this.provisional, ...this.conversationList];
      this.renderConversations();
    } else {
      this.markCurrent();
    }
  }

  /** Keep the open stream's place for a reload (or forget it once its reply is in). */
  rememberTurn() {
    const turn = this.turn;
    if (!turn || !turn.conversationId || !turn.streamId) return;
    if (turn.networkDone) forgetRunningStream(turn.conversationId);
    else rememberRunningStream(turn.conversationId, turn.snapshot());
  }

  turnFinished(turn) {
    if (turn !== this.turn) {
      turn.view.el.remove(); // cancelled by switching away: it belongs to a thread no longer shown
      return;
    }
    this.turn = null;
    if (turn.conversationId) forgetRunningStream(turn.conversationId);
    this.appendMessage(turn.view.el);
    this.setBusy(false);
    if (this.nearBottom()) this.scrollToBottom();
    this.loadConversations();
  }

  /** A reply picked up after a reload whose stream no longer exists: show what was saved. */
  turnGone(turn) {
    if (turn !== this.turn) return;
    this.turn = null;
    forgetRunningStream(turn.conversationId);
    turn.view.el.remove();
    this.setBusy(false);
    this.openConversation(turn.conversationId, { url: false });
  }

  actionsFor(turn, code) {
    if (!NEEDS_NEW_CONVERSATION.has(code)) return [];
    return [{ label: "New conversation", run: () => this.newConversation({ draft: turn.message }) }];
  }

  /** Cancel the open stream, if any, and forget it (its view is dropped with the thread). */
  abandonTurn() {
    const turn = this.turn;
    if (!turn) return;
    this.turn = null;
    turn.abandon();
    if (turn.conversationId) forgetRunningStream(turn.conversationId);
    turn.view.el.remove();
    this.setBusy(false);
  }

  // -- conversations ---------------------------------------------------------------------------------

  /** Show what the URL names: a conversation (picking up its streaming reply) or a new one. */
  followUrl() {
    const id = conversationInUrl();
    if (id === this.conversationId) return;
    if (!id) this.newConversation({ url: false });
    else if (runningStream(id)) this.pickUp(id, runningStream(id));
    else this.openConversation(id, { url: false });
  }

  async loadConversations() {
    const note = this.el.conversationsNote;
    try {
      const data = await listConversations();
      const list = data.conversations || [];
      if (this.provisional && list.some((item) => item.id === this.provisional.id)) this.provisional = null;
      this.conversationList = this.provisional ? [this.provisional, ...list] : list;
      this.renderConversations();
      note.textContent = this.conversationList.length ? "" : "No conversations yet.";
      note.hidden = this.conversationList.length > 0;
    } catch (error) {
      this.conversationList = [];
      this.renderConversations();
      note.hidden = false;
      if (errorCode(error) === "unauthorized") note.textContent = "Enter your access token below to see your conversations.";
      else note.textContent = describeError(errorCode(error), error);
    }
  }

  renderConversations() {
    const list = this.el.conversations;
    list.replaceChildren();
    for (const item of this.conversationList) {
      const li = element("li", item === this.provisional ? "conversation provisional" : "conversation");
      li.dataset.id = item.id;
      const open = element("button", "open");
      open.type = "button";
      open.append(element("span", "title", item.title || "Untitled"));
      const when = new Date(item.updatedAt);
      if (!Number.isNaN(when.getTime())) {
        const time = element("time", "when", when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" }));
        time.dateTime = item.updatedAt;
        open.append(time);
      }
      open.addEventListener("click", () => this.openConversation(item.id));
      const remove = element("button", "delete", "×");
      remove.type = "button";
      remove.title = "Delete conversation";
      remove.setAttribute("aria-label", `Delete conversation “${item.title || "Untitled"}”`);
      remove.addEventListener("click", () => this.deleteConversation(item));
      li.append(open, remove);
      list.append(li);
    }
    this.markCurrent();
  }

  markCurrent() {
    for (const li of this.el.conversations.children) {
      const current = li.dataset.id === this.conversationId;
      li.classList.toggle("current", current);
      const open = li.querySelector(".open");
      if (current) open.setAttribute("aria-current", "true");
      else open.removeAttribute("aria-current");
    }
  }

  /** url: "push" (a new history entry), "replace", or false (the URL already says so). */
  newConversation({ url = "push", draft = "" } = {}) {
    this.abandonTurn();
    this.loadCounter += 1;
    this.conversationId = null;
    if (url) showConversationInUrl(null, { push: url === "push" });
    this.el.title.textContent = UNTITLED;
    this.clearThread();
    this.markCurrent();
    if (draft) this.el.input.value = draft;
    this.el.input.focus();
  }

  /** Begin showing conversation `id`; returns a check that is false once the page moved on. */
  enter(id, url) {
    this.abandonTurn();
    const counter = ++this.loadCounter;
    this.conversationId = id;
    if (url) showConversationInUrl(id, { push: url === "push" });
    this.markCurrent();
    this.clearThread();
    this.el.title.textContent = "Loading…";
    return () => counter === this.loadCounter;
  }

  showMessages(messages) {
    for (const message of messages) this.appendMessage(savedMessageElement(message));
    this.scrollToBottom();
  }

  async openConversation(id, { url = "push" } = {}) {
    const current = this.enter(id, url);
    try {
      const data = await getConversation(id);
      if (!current()) return;
      this.el.title.textContent = data.title || "Untitled";
      this.showMessages(data.messages || []);
    } catch (error) {
      if (!current()) return;
      this.el.title.textContent = "Conversation unavailable";
      this.showError(describeError(errorCode(error), error));
      if (errorCode(error) === "not_found") this.loadConversations();
    }
  }

  /** After a reload: the saved conversation, then the reply that was streaming, continued where it was. */
  async pickUp(id, running) {
    const current = this.enter(id, false);
    let data = null;
    try {
      data = await getConversation(id);
    } catch {
      // A new conversation is saved with its first reply: until then it is not found. Any other failure
      // shows again when the stream is resumed.
    }
    if (!current()) return;
    if (data) this.el.title.textContent = data.title || "Untitled";
    else {
      this.el.title.textContent = conversationTitle(running.message);
      this.listProvisionally(id, running.message);
    }
    this.showMessages(withoutExchange((data && data.messages) || [], running.messageId));
    this.appendMessage(messageElement("user", running.message));
    this.startTurn(new Turn({ message: running.message, conversationId: id, hooks: this.hooks, resume: running }));
  }

  async deleteConversation(item) {
    if (!window.confirm(`Delete the conversation “${item.title || "Untitled"}”? This cannot be undone.`)) return;
    try {
      await deleteConversation(item.id);
    } catch (error) {
      if (errorCode(error) !== "not_found") {
        this.el.conversationsNote.hidden = false;
        this.el.conversationsNote.textContent = describeError(errorCode(error), error);
        return;
      }
    }
    if (this.provisional && this.provisional.id === item.id) this.provisional = null;
    if (item.id === this.conversationId) this.newConversation({ url: "replace" });
    this.loadConversations();
  }
}

if (typeof document !== "undefined" && document.getElementById("composer")) {
  const page = new ChatPage(document);
  page.start();
}
