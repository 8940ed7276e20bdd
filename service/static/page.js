// The chat page: conversations on the left, the thread and the composer on the right.
//
// Wires the controls to turns (turn.js), keeps the conversation list, and keeps the page's place: the
// open conversation is in the URL (?c=<id>) and a reply streaming when the tab reloads is picked up
// again from sessionStorage (place.js). Leaving or reloading the page does not cancel a reply: its
// connection closes, and the server decides how long it keeps the stream for a client coming back.
// Stop and switching conversation do cancel it.
//
// The thread is the conversation's current branch (branches.js): each saved message has its controls (edit,
// regenerate, "‹ 2 / 3 ›"), and after each turn the page reads the conversation again to learn the new messages'
// ids and siblings. The model picker's choice goes with each turn; every reply names the model that wrote it.
import { deleteConversation, errorCode, getConversation, listConversations, listModels, saveToken, savedToken, switchBranch } from "./api.js";
import { ConversationTree, editInPlace, messageControls } from "./branches.js";
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

/** The model picker's label and list in `container`; the options come from GET /models (loadModels). */
function modelSelect(container) {
  const label = element("label", "", "Model");
  label.htmlFor = "model";
  const picker = element("select");
  picker.id = "model";
  picker.name = "model";
  container.append(label, picker);
  return picker;
}

/** The saved messages a picked-up turn continues from: before its own (and, for a branch, before what it replaces). */
function beforeTurn(messages, running) {
  const own = messages.findIndex((message) => message.id === running.messageId);
  if (own !== -1) return running.regenerateMessageId ? messages.slice(0, own) : withoutExchange(messages, running.messageId);
  const replaced = messages.findIndex((message) => message.id === (running.regenerateMessageId || running.editMessageId));
  return replaced === -1 ? messages : messages.slice(0, replaced);
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
      modelPicker: $("model-picker"),
    };
    this.el.model = modelSelect(this.el.modelPicker);
    this.turn = null;
    this.tree = null; // the open conversation's messages, every branch (branches.js)
    this.defaultModel = "";
    this.wantedModel = ""; // the open branch's newest model, picked once the list is loaded
    this.branchActions = {
      show: (message) => this.showSibling(message),
      edit: (message) => this.edit(message),
      regenerate: (message) => this.regenerate(message),
    };
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
    this.loadModels();
    this.followUrl();
    el.input.focus();
  }

  saveToken() {
    saveToken(this.el.token.value.trim());
    this.loadConversations();
    this.loadModels();
  }

  /** Fill the model picker; it stays hidden when there is no choice to make. */
  async loadModels() {
    let models = [];
    try {
      models = (await listModels()).models || [];
    } catch {
      // without the list (no token yet), turns use the default model
    }
    const picker = this.el.model;
    const chosen = this.wantedModel || picker.value;
    this.wantedModel = "";
    picker.replaceChildren();
    for (const model of models) {
      const option = element("option", "", model.default ? `${model.id} (default)` : model.id);
      option.value = model.id;
      picker.append(option);
    }
    const fallback = models.find((model) => model.default) || models[0];
    this.defaultModel = models.some((model) => model.default) ? fallback.id : "";
    if (models.some((model) => model.id === chosen)) picker.value = chosen;
    else if (fallback) picker.value = fallback.id;
    this.el.modelPicker.hidden = models.length < 2;
  }

  /** The model picked for the next turn; null for the default. */
  pickedModel() {
    const value = this.el.model.value;
    return value && value !== this.defaultModel ? value : null;
  }

  /** Show the model that wrote the branch's newest reply, when the picker offers it. */
  pickModelOf(tree) {
    const model = tree.lastModel();
    this.wantedModel = model; // for a list still loading
    if (model && [...this.el.model.options].some((option) => option.value === model)) this.el.model.value = model;
  }

  setStatus(text) {
    this.el.status.textContent = text;
  }

  setBusy(busy) {
    this.el.send.disabled = busy;
    // One turn at a time: while a reply streams, the saved messages' Edit, Regenerate and version arrows do
    // nothing, so they say so (greyed, aria-disabled) rather than ignore a click.
    for (const button of this.el.messages.querySelectorAll(".message-actions button")) {
      if (busy) button.setAttribute("aria-disabled", "true");
      else button.removeAttribute("aria-disabled");
    }
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
    this.startTurn(new Turn({ message: text, conversationId: this.conversationId, hooks: this.hooks, model: this.pickedModel() }));
  }

  // -- branches --------------------------------------------------------------------------------------

  /** The thread's node of a saved message, and every node after it. */
  nodesFrom(id) {
    const nodes = [...this.el.messages.children];
    const index = nodes.findIndex((node) => node.dataset.id === id);
    return index === -1 ? null : nodes.slice(index);
  }

  /** A new reply beside `message` (an assistant's): its question is asked again with the history before it. */
  regenerate(message) {
    if (this.turn || !this.conversationId) return;
    const question = this.tree && this.tree.byId.get(message.parentId);
    const nodes = this.nodesFrom(message.id);
    if (!question || !nodes) return;
    for (const node of nodes) node.remove();
    this.startTurn(new Turn({ message: question.content, conversationId: this.conversationId, hooks: this.hooks, regenerateMessageId: message.id, model: this.pickedModel() }));
  }

  /** Edit the user's `message` in place; sending it starts a new branch beside it. */
  async edit(message) {
    if (this.turn || !this.conversationId) return;
    const nodes = this.nodesFrom(message.id);
    if (!nodes || nodes[0].querySelector(".edit-form")) return;
    const conversationId = this.conversationId;
    const text = await editInPlace(nodes[0], message.content);
    if (!text || this.turn || this.conversationId !== conversationId) return;
    for (const node of nodes) node.remove();
    this.appendMessage(messageElement("user", text));
    this.startTurn(new Turn({ message: text, conversationId, hooks: this.hooks, editMessageId: message.id, model: this.pickedModel() }));
  }

  /** Move to another version of a message: its branch becomes the conversation's current one. */
  async showSibling(message) {
    if (this.turn || !message || !this.conversationId) return;
    const id = this.conversationId;
    const counter = this.loadCounter;
    try {
      const data = await switchBranch(id, message.id);
      if (counter !== this.loadCounter || this.turn) return;
      this.showTree(new ConversationTree(data));
    } catch (error) {
      if (counter === this.loadCounter) this.showError(describeError(errorCode(error), error));
    }
  }

  /** Draw `tree`'s current branch; `keep` maps message ids to nodes to show instead of fresh ones. */
  showTree(tree, keep = new Map()) {
    this.tree = tree;
    const near = this.nearBottom();
    this.clearThread();
    this.showMessages(tree.branch(), keep, false);
    if (near) this.scrollToBottom();
  }

  /** After a turn, learn its messages' ids and siblings: the thread is redrawn from the saved conversation,
   * keeping the finished reply's own node (its stats). Nothing changes when the save is not readable yet. */
  async refreshBranches(turn) {
    const id = turn.conversationId;
    if (!id || !turn.messageId) return;
    const counter = this.loadCounter;
    let data;
    try {
      data = await getConversation(id);
    } catch {
      return;
    }
    if (counter !== this.loadCounter || this.conversationId !== id || this.turn) return;
    const tree = new ConversationTree(data);
    if (tree.has(turn.messageId)) this.showTree(tree, new Map([[turn.messageId, turn.view.el]]));
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
    this.refreshBranches(turn);
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
    this.tree = null;
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
    this.tree = null;
    if (url) showConversationInUrl(id, { push: url === "push" });
    this.markCurrent();
    this.clearThread();
    this.el.title.textContent = "Loading…";
    return () => counter === this.loadCounter;
  }

  /** Append saved messages, each with its controls; `keep` maps ids to nodes to show instead of fresh ones. */
  showMessages(messages, keep = new Map(), scroll = true) {
    for (const message of messages) {
      const node = keep.get(message.id) || savedMessageElement(message);
      node.dataset.id = message.id;
      if (this.tree && this.tree.has(message.id)) {
        node.querySelector(".message-actions")?.remove();
        node.append(messageControls(message, this.tree, this.branchActions));
      }
      this.appendMessage(node);
    }
    if (scroll) this.scrollToBottom();
  }

  async openConversation(id, { url = "push" } = {}) {
    const current = this.enter(id, url);
    try {
      const data = await getConversation(id);
      if (!current()) return;
      this.el.title.textContent = data.title || "Untitled";
      this.tree = new ConversationTree(data);
      this.pickModelOf(this.tree);
      this.showMessages(this.tree.branch());
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
    if (data) this.tree = new ConversationTree(data);
    this.showMessages(beforeTurn(this.tree ? this.tree.branch() : [], running));
    if (!running.regenerateMessageId) this.appendMessage(messageElement("user", running.message));
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
