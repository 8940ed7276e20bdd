// The chat page: conversations on the left, the thread and the composer on the right.
//
// A reply streams over POST /api/v1/ai/chat/stream (WIRE.md). Tokens go into a buffer that is drawn at
// most every FLUSH_INTERVAL_MS; Pause stops drawing (tokens keep arriving into the buffer), Resume draws
// them. A lost connection is retried RETRY_LIMIT times with exponential backoff: before the stream id is
// known by POSTing again, after it by GET /chat/stream/<id> with Last-Event-ID (the server replays what
// came after it). After that, or when streaming is impossible, the page asks POST /api/v1/ai/chat for
// the whole reply. Stop, switching conversation and leaving the page all cancel the open stream
// (AbortController plus DELETE /chat/stream/<id>).
import { readEvents } from "./sse.js";

export const FLUSH_INTERVAL_MS = 50;
export const RETRY_LIMIT = 3;
export const RETRY_BASE_MS = 300;
export const DEFAULT_MAX_MESSAGES = 200;
const API = "/api/v1/ai";
const TOKEN_KEY = "chat.token";

// ---------------------------------------------------------------------------------------------------
// Errors as sentences

function formatWait(seconds) {
  const whole = Math.max(1, Math.ceil(seconds));
  if (whole < 90) return `${whole} second${whole === 1 ? "" : "s"}`;
  const minutes = Math.ceil(whole / 60);
  return `${minutes} minute${minutes === 1 ? "" : "s"}`;
}

/** The sentence a person sees for an error code of WIRE.md (or "network" when the server is unreachable). */
export function describeError(code, { retryAfter = null, midStream = false, message = "" } = {}) {
  switch (code) {
    case "rate_limited":
      if (retryAfter > 0) return `You are sending messages faster than allowed. Please try again in ${formatWait(retryAfter)}.`;
      return midStream
        ? "You have used up your reply allowance for now, so this reply was cut short. Please try again later."
        : "You are sending messages faster than allowed. Please wait a moment and try again.";
    case "idle_timeout":
      return "The AI stopped responding, so the reply was cut short. Please try again.";
    case "upstream_error":
      return "The AI service ran into a problem while answering, so the reply is incomplete. Please try again.";
    case "content_filtered":
      return "The reply was stopped by the AI provider's content filter.";
    case "cancelled":
      return "The reply was cancelled before it finished.";
    case "server_shutdown":
      return "The server restarted while answering, so the reply is incomplete. Please send your message again.";
    case "internal":
      return "Something went wrong on our side. Please try again in a moment.";
    case "validation_error":
      return "This message can't be sent: it may be empty or too long. Please edit it and try again.";
    case "unsafe_input":
      return "This message was blocked by a safety check. Please rephrase it.";
    case "unauthorized":
      return "You need to sign in: paste a valid access token into the Access token field.";
    case "not_found":
      return "This conversation no longer exists. Start a new one from the list.";
    case "payload_too_large":
      return "Your message is too long to send. Please shorten it.";
    case "unsupported_media_type":
      return "The server did not understand the page's request. Please reload the page.";
    case "upstream_unavailable":
      return "The AI service can't be reached right now. Please try again in a minute.";
    case "network":
      return "The server can't be reached. Check your connection and try again.";
    default:
      return message || "Something went wrong. Please try again.";
  }
}

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null, details = {}) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.details = details;
  }
}

class NetworkError extends Error {}

function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value);
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(1, (when - Date.now()) / 1000);
}

const CODE_FOR_STATUS = {
  400: "validation_error",
  401: "unauthorized",
  404: "not_found",
  413: "payload_too_large",
  415: "unsupported_media_type",
  429: "rate_limited",
  503: "upstream_unavailable",
};

/** An ApiError from a failed response; null when the body is not the service's JSON error (a proxy page). */
async function errorFromResponse(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON
  }
  const error = body && typeof body === "object" ? body.error : null;
  if (!error && !CODE_FOR_STATUS[response.status]) return null;
  const details = (error && error.details) || {};
  const retryAfter = parseRetryAfter(response.headers.get("Retry-After")) ?? details.retryAfter ?? null;
  return new ApiError(response.status, (error && error.code) || CODE_FOR_STATUS[response.status], error && error.message, retryAfter, details);
}

// ---------------------------------------------------------------------------------------------------
// HTTP

function authHeaders() {
  const token = (sessionStorage.getItem(TOKEN_KEY) || "").trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { ...authHeaders(), Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(API + path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new NetworkError(String(error));
  }
  if (!response.ok) throw (await errorFromResponse(response)) || new ApiError(response.status, "internal", "");
  return response.status === 204 ? null : response.json();
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new DOMException("Aborted", "AbortError"));
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("Aborted", "AbortError"));
    }, { once: true });
  });
}

// ---------------------------------------------------------------------------------------------------
// Rendering

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function messageElement(role, text) {
  const article = element("article", `message ${role}`);
  article.setAttribute("role", "listitem");
  article.append(element("div", "role", role === "user" ? "You" : "AI"));
  const body = element("div", "body");
  body.append(element("span", "text", text));
  article.append(body);
  return article;
}

// The embedded local default is a 135M-parameter demo model: say so wherever its replies appear.
const DEMO_MODELS = new Set(["smollm2-135m-instruct"]);

function statsLine(stats, model) {
  const parts = [];
  const usage = stats && stats.usage;
  if (usage && Number.isFinite(usage.completionTokens)) parts.push(`${usage.completionTokens} tokens${usage.estimated ? " (estimated)" : ""}`);
  if (stats && Number.isFinite(stats.tokensPerSecond) && stats.tokensPerSecond > 0) parts.push(`${stats.tokensPerSecond.toFixed(1)} tokens/s`);
  if (model) parts.push(DEMO_MODELS.has(model) ? `${model} (demo model: it makes facts up)` : model);
  if (stats && stats.finishReason === "length") parts.push("stopped at the length limit");
  return parts.join(" · ");
}

/** One reply while it streams: a text node fed from a buffer at most every FLUSH_INTERVAL_MS. */
class ReplyView {
  constructor({ onDraw, onBuffered }) {
    this.el = element("article", "message assistant streaming");
    this.el.id = "reply";
    this.el.setAttribute("aria-busy", "true");
    this.el.append(element("div", "role", "AI"));
    const body = element("div", "body");
    this.textEl = element("span", "text");
    this.textNode = document.createTextNode("");
    this.textEl.append(this.textNode);
    this.cursor = element("span", "cursor");
    this.cursor.setAttribute("aria-hidden", "true");
    body.append(this.textEl, this.cursor);
    this.thinking = element("p", "thinking", "AI is thinking…");
    this.el.append(this.thinking, body);
    this.onDraw = onDraw;
    this.onBuffered = onBuffered;
    this.buffer = "";
    this.bufferedTokens = 0;
    this.timer = null;
    this.lastDraw = -Infinity;
    this.paused = false;
    this.pendingEnd = null;
    this.finished = false;
  }

  push(text) {
    this.buffer += text;
    this.bufferedTokens += 1;
    if (this.paused) this.onBuffered(this.bufferedTokens);
    else this.schedule();
  }

  schedule() {
    if (this.timer !== null) return;
    const wait = Math.max(0, this.lastDraw + FLUSH_INTERVAL_MS - performance.now());
    this.timer = setTimeout(() => {
      this.timer = null;
      this.draw();
    }, wait);
  }

  draw() {
    if (this.paused) return;
    if (this.buffer) {
      this.textNode.appendData(this.buffer);
      this.buffer = "";
      this.bufferedTokens = 0;
      this.thinking.hidden = true;
      this.onDraw();
      // Stamped after the layout onDraw forces, so a slow layout never shortens the next interval.
      this.lastDraw = performance.now();
    }
    if (this.pendingEnd) {
      const finish = this.pendingEnd;
      this.pendingEnd = null;
      finish();
    }
  }

  /** Draw what is buffered (still at most every FLUSH_INTERVAL_MS), then run a pending end. */
  settle() {
    if (this.paused) return;
    if (this.buffer) this.schedule();
    else this.draw();
  }

  showThinking() {
    this.thinking.hidden = false;
  }

  replaceText(text) {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.buffer = "";
    this.bufferedTokens = 0;
    this.textNode.data = text;
    this.lastDraw = performance.now();
    this.thinking.hidden = true;
    this.onDraw();
  }

  pause() {
    this.paused = true;
    this.onBuffered(this.bufferedTokens);
  }

  resume() {
    this.paused = false;
    this.settle();
  }

  /** Run `finish` once everything buffered is drawn: soon, or after Resume when paused. */
  end(finish) {
    this.pendingEnd = finish;
    this.settle();
  }

  finalize({ stats = null, model = "", error = "", note = "" }) {
    this.finished = true;
    this.el.removeAttribute("id");
    this.el.classList.remove("streaming");
    this.el.classList.add("done");
    this.el.setAttribute("aria-busy", "false");
    this.el.setAttribute("role", "listitem");
    this.cursor.remove();
    this.thinking.remove();
    if (!this.textNode.data) this.textEl.parentElement.classList.add("empty");
    const meta = statsLine(stats, model);
    if (meta) this.el.append(element("p", "meta", meta));
    if (note) this.el.append(element("p", "note", note));
    if (error) {
      this.el.classList.add("failed");
      const alert = element("p", "error", error);
      alert.setAttribute("role", "alert");
      this.el.append(alert);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// One exchange: stream, resume, fall back

class Turn {
  constructor(app, message, conversationId) {
    this.app = app;
    this.message = message;
    this.conversationId = conversationId;
    this.controller = new AbortController();
    this.streamId = null;
    this.lastEventId = "";
    this.model = "";
    this.stopped = false;
    this.networkDone = false;
    this.view = new ReplyView({ onDraw: () => app.onDraw(), onBuffered: (count) => app.onBuffered(count) });
  }

  body() {
    return this.conversationId ? { message: this.message, conversationId: this.conversationId } : { message: this.message };
  }

  async run() {
    let failures = 0;
    for (;;) {
      let outcome;
      try {
        outcome = await this.streamOnce();
      } catch (error) {
        if (this.stopped) return this.end({ note: "You stopped this reply." });
        if (error instanceof ApiError) return this.end({ error: describeError(error.code, error) });
        outcome = "lost";
      }
      if (outcome === "ended") return undefined;
      if (outcome === "fallback" || failures >= RETRY_LIMIT) break;
      failures += 1;
      this.app.setStatus(`Connection lost. Reconnecting (attempt ${failures} of ${RETRY_LIMIT})…`);
      try {
        await sleep(RETRY_BASE_MS * 2 ** (failures - 1), this.controller.signal);
      } catch {
        return this.end({ note: "You stopped this reply." });
      }
    }
    return this.fallback();
  }

  /** One request: "ended" (done or error handled), "lost" (retry) or "fallback"; throws ApiError. */
  async streamOnce() {
    const resuming = this.streamId !== null;
    const headers = { ...authHeaders(), Accept: "text/event-stream" };
    const init = { headers, signal: this.controller.signal, cache: "no-store" };
    let url = `${API}/chat/stream`;
    if (resuming) {
      url += `/${encodeURIComponent(this.streamId)}`;
      headers["Last-Event-ID"] = this.lastEventId;
    } else {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(this.body());
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      if (this.stopped) throw error;
      return "lost";
    }
    if (!response.ok) {
      const error = await errorFromResponse(response);
      if (resuming && (response.status === 404 || response.status === 400)) return "fallback"; // stream gone
      if (error) throw error;
      return "lost"; // a proxy's error page, not the service's
    }
    const type = response.headers.get("Content-Type") || "";
    if (!type.includes("text/event-stream") || !response.body || typeof response.body.getReader !== "function") {
      response.body?.cancel().catch(() => {});
      return "fallback";
    }
    if (resuming) this.app.setStatus("");
    let result = null;
    try {
      await readEvents(response, (event) => {
        result = this.handle(event, resuming);
        return result !== null;
      });
    } catch (error) {
      if (this.stopped) throw error;
      return "lost";
    }
    return result || "lost"; // the body ended without done or error
  }

  handle(event, resuming) {
    let payload;
    try {
      payload = JSON.parse(event.data);
    } catch {
      return null;
    }
    if (event.id) this.lastEventId = event.id;
    switch (payload && payload.type) {
      case "metadata":
        if (payload.streamId) this.streamId = payload.streamId;
        if (payload.model) this.model = payload.model;
        if (payload.conversationId) {
          this.conversationId = payload.conversationId;
          this.app.adoptConversation(this, payload.conversationId);
        }
        return null;
      case "token":
        if (typeof payload.content === "string" && payload.content) this.view.push(payload.content);
        return null;
      case "done":
        this.end({ stats: payload, model: this.model });
        return "ended";
      case "error": {
        const code = payload.error && payload.error.code;
        if (code === "cancelled" && this.stopped) {
          this.end({ note: "You stopped this reply." });
          return "ended";
        }
        // Resumed after a lost connection, but the server had already given the reply up: ask again.
        if (code === "cancelled" && resuming) return "fallback";
        this.end({ error: describeError(code, { midStream: true, message: payload.error && payload.error.message }) });
        return "ended";
      }
      default:
        return null; // unknown types are ignored (WIRE.md)
    }
  }

  async fallback() {
    this.app.setStatus("Live streaming is not available; waiting for the whole reply…");
    this.view.showThinking();
    try {
      const data = await api("/chat", { method: "POST", body: this.body(), signal: this.controller.signal });
      if (data.conversationId) this.app.adoptConversation(this, data.conversationId);
      this.view.replaceText(data.content || "");
      this.end({ stats: { usage: data.usage, finishReason: data.finishReason }, model: data.model });
    } catch (error) {
      if (this.stopped) this.end({ note: "You stopped this reply." });
      else if (error instanceof ApiError) this.end({ error: describeError(error.code, error) });
      else this.end({ error: describeError("network") });
    }
  }

  end(outcome) {
    if (this.networkDone) return;
    this.networkDone = true;
    this.view.end(() => {
      this.view.finalize(outcome);
      this.app.turnFinished(this);
    });
  }

  /** Stop: tell the server (DELETE, survives page unload) and drop our connection. */
  cancel() {
    if (this.networkDone) {
      if (!this.view.finished) this.view.resume(); // arrived but paused: show it all now
      return;
    }
    if (this.stopped) return;
    this.stopped = true;
    this.view.paused = false;
    if (this.streamId) {
      fetch(`${API}/chat/stream/${encodeURIComponent(this.streamId)}`, {
        method: "DELETE",
        headers: authHeaders(),
        keepalive: true,
      }).catch(() => {});
    }
    this.controller.abort();
  }
}

// ---------------------------------------------------------------------------------------------------
// The page

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
    this.loadCounter = 0;
  }

  get maxMessages() {
    const value = Number.parseInt(this.el.messages.dataset.maxMessages, 10);
    return Number.isFinite(value) && value > 0 ? value : DEFAULT_MAX_MESSAGES;
  }

  start() {
    const { el } = this;
    el.token.value = sessionStorage.getItem(TOKEN_KEY) || "";
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
    el.stop.addEventListener("click", () => this.turn && this.turn.cancel());
    el.pause.addEventListener("click", () => this.togglePause());
    el.newConversation.addEventListener("click", () => this.newConversation());
    // pagehide (not beforeunload, which would keep the page out of the back/forward cache) fires on
    // reload, navigation and tab close; the DELETE is sent with keepalive so it outlives the page.
    window.addEventListener("pagehide", () => this.turn && this.turn.cancel());
    this.updateEmpty();
    this.loadConversations();
    el.input.focus();
  }

  saveToken() {
    const value = this.el.token.value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    this.loadConversations();
  }

  setStatus(text) {
    this.el.status.textContent = text;
  }

  setBusy(busy) {
    this.el.send.disabled = busy;
    this.el.stop.hidden = !busy;
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

  onDraw() {
    if (this.nearBottom()) this.scrollToBottom();
  }

  onBuffered(count) {
    this.setStatus(`Paused: ${count} new token${count === 1 ? "" : "s"} waiting.`);
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

  // -- sending ---------------------------------------------------------------------------------------

  send() {
    const text = this.el.input.value.trim();
    if (!text || this.turn) return;
    this.el.input.value = "";
    if (!this.conversationId) this.el.title.textContent = text.length > 80 ? `${text.slice(0, 79)}…` : text;
    this.appendMessage(messageElement("user", text));
    const turn = new Turn(this, text, this.conversationId);
    this.turn = turn;
    this.el.live.append(turn.view.el);
    this.updateEmpty();
    this.scrollToBottom();
    this.setBusy(true);
    turn.run();
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

  adoptConversation(turn, conversationId) {
    if (turn !== this.turn) return;
    if (this.conversationId !== conversationId) {
      this.conversationId = conversationId;
      this.markCurrent();
    }
  }

  turnFinished(turn) {
    if (turn !== this.turn) {
      turn.view.el.remove(); // cancelled by switching away: it belongs to a thread no longer shown
      return;
    }
    this.turn = null;
    this.appendMessage(turn.view.el);
    this.setBusy(false);
    if (this.nearBottom()) this.scrollToBottom();
    this.loadConversations();
  }

  /** Cancel the open stream, if any, and forget it (its view is dropped with the thread). */
  abandonTurn() {
    const turn = this.turn;
    if (!turn) return;
    this.turn = null;
    turn.cancel();
    turn.view.el.remove();
    this.setBusy(false);
  }

  // -- conversations ---------------------------------------------------------------------------------

  async loadConversations() {
    const note = this.el.conversationsNote;
    try {
      const data = await api("/conversations?limit=100");
      this.conversationList = data.conversations || [];
      this.renderConversations();
      note.textContent = this.conversationList.length ? "" : "No conversations yet.";
      note.hidden = this.conversationList.length > 0;
    } catch (error) {
      this.conversationList = [];
      this.renderConversations();
      note.hidden = false;
      if (error instanceof ApiError && error.code === "unauthorized") note.textContent = "Enter your access token below to see your conversations.";
      else note.textContent = describeError(error instanceof ApiError ? error.code : "network", error);
    }
  }

  renderConversations() {
    const list = this.el.conversations;
    list.replaceChildren();
    for (const item of this.conversationList) {
      const li = element("li", "conversation");
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

  newConversation() {
    this.abandonTurn();
    this.loadCounter += 1;
    this.conversationId = null;
    this.el.title.textContent = "New conversation";
    this.clearThread();
    this.markCurrent();
    this.el.input.focus();
  }

  async openConversation(id) {
    this.abandonTurn();
    const counter = ++this.loadCounter;
    this.conversationId = id;
    this.markCurrent();
    this.clearThread();
    this.el.title.textContent = "Loading…";
    try {
      const data = await api(`/conversations/${encodeURIComponent(id)}`);
      if (counter !== this.loadCounter) return;
      this.el.title.textContent = data.title || "Untitled";
      for (const message of data.messages || []) {
        const node = messageElement(message.role === "user" ? "user" : "assistant", message.content);
        if (message.role === "assistant") {
          const meta = statsLine({ usage: message.usage, finishReason: message.finishReason }, message.model);
          if (meta) node.append(element("p", "meta", meta));
          if (message.status === "incomplete") node.append(element("p", "note", "This reply was not finished."));
        }
        this.appendMessage(node);
      }
      this.scrollToBottom();
    } catch (error) {
      if (counter !== this.loadCounter) return;
      this.el.title.textContent = "Conversation unavailable";
      const alert = element("p", "error", describeError(error instanceof ApiError ? error.code : "network", error));
      alert.setAttribute("role", "alert");
      this.el.live.append(alert);
      this.updateEmpty();
      if (error instanceof ApiError && error.code === "not_found") this.loadConversations();
    }
  }

  async deleteConversation(item) {
    if (!window.confirm(`Delete the conversation “${item.title || "Untitled"}”? This cannot be undone.`)) return;
    try {
      await api(`/conversations/${encodeURIComponent(item.id)}`, { method: "DELETE" });
    } catch (error) {
      if (!(error instanceof ApiError && error.code === "not_found")) {
        this.el.conversationsNote.hidden = false;
        this.el.conversationsNote.textContent = describeError(error instanceof ApiError ? error.code : "network", error);
        return;
      }
    }
    if (item.id === this.conversationId) this.newConversation();
    this.loadConversations();
  }
}

if (typeof document !== "undefined" && document.getElementById("composer")) {
  const page = new ChatPage(document);
  page.start();
}
