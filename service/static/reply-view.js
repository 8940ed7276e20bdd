// The reply view: how messages look, and a streaming reply drawn at most every FLUSH_INTERVAL_MS.
//
// Tokens go into a buffer that is drawn by one timer; Pause stops drawing (tokens keep arriving into the
// buffer) and Resume draws them. end(finish) runs `finish` once everything received is on screen.
// A reply is Markdown (markdown.js: sanitised, raw HTML shown as text), rendered again whole at each draw, so
// at most once a FLUSH_INTERVAL_MS however fast tokens come. A reasoning model's thinking streams as plain text
// into a collapsed "Thinking" block above the answer.
import { MarkdownView, renderMarkdown } from "./markdown.js";

export const FLUSH_INTERVAL_MS = 50;

// The embedded local default is a 135M-parameter demo model: say so wherever its replies appear.
const DEMO_MODELS = new Set(["smollm2-135m-instruct"]);

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function messageElement(role, text) {
  const article = element("article", `message ${role}`);
  article.setAttribute("role", "listitem");
  article.append(element("div", "role", role === "user" ? "You" : "AI"));
  const body = element("div", "body");
  if (role === "user") body.append(element("span", "text", text));
  else body.append(markdownElement(text));
  article.append(body);
  return article;
}

/** The reply's text as Markdown, timing each render (`renderStats`: what the 50 ms display interval allows). */
export const renderStats = { count: 0, totalMs: 0, maxMs: 0, maxChars: 0, overInterval: 0 };

/** Run `render` (one Markdown render of `text`), counting it in `renderStats`. */
function timed(text, render) {
  const started = performance.now();
  render();
  const took = performance.now() - started;
  renderStats.count += 1;
  renderStats.totalMs += took;
  if (took > renderStats.maxMs) renderStats.maxMs = took;
  if (took > FLUSH_INTERVAL_MS) renderStats.overInterval += 1;
  if (text.length > renderStats.maxChars) renderStats.maxChars = text.length;
}

function markdownElement(text) {
  const node = element("div", "text markdown");
  if (text) timed(text, () => node.replaceChildren(renderMarkdown(text)));
  return node;
}

/** The collapsed "Thinking" block of a reasoning model's reply: plain text, appended to as it streams. */
function thinkingElement() {
  const details = element("details", "reasoning");
  details.append(element("summary", "", "Thinking"));
  const text = element("div", "reasoning-text");
  const node = document.createTextNode("");
  text.append(node);
  details.append(text);
  return { details, node };
}

/** A message as GET /conversations/<id> returns it. */
export function savedMessageElement(message) {
  const node = messageElement(message.role === "user" ? "user" : "assistant", message.content);
  if (message.role === "assistant" && message.reasoning) {
    const thinking = thinkingElement();
    thinking.node.data = message.reasoning;
    node.querySelector(".body").before(thinking.details);
  }
  if (message.role === "assistant") {
    const meta = statsLine({ usage: message.usage, finishReason: message.finishReason }, message.model);
    if (meta) node.append(element("p", "meta", meta));
    if (message.status === "incomplete") node.append(element("p", "note", NOT_FINISHED));
  }
  return node;
}

export const NOT_FINISHED = "This reply was not finished.";

export function statsLine(stats, model) {
  const parts = [];
  const usage = stats && stats.usage;
  if (usage && Number.isFinite(usage.completionTokens)) parts.push(`${usage.completionTokens} tokens${usage.estimated ? " (estimated)" : ""}`);
  if (usage && Number.isFinite(usage.reasoningTokens) && usage.reasoningTokens > 0) parts.push(`${usage.reasoningTokens} thinking`);
  if (stats && Number.isFinite(stats.tokensPerSecond) && stats.tokensPerSecond > 0) parts.push(`${stats.tokensPerSecond.toFixed(1)} tokens/s`);
  if (model) parts.push(DEMO_MODELS.has(model) ? `${model} (demo model: it makes facts up)` : model);
  if (stats && stats.finishReason === "length") parts.push("stopped at the length limit");
  return parts.join(" · ");
}

/** One reply while it streams: Markdown drawn from a buffer at most every FLUSH_INTERVAL_MS. */
export class ReplyView {
  constructor({ onDraw, onBuffered }) {
    this.el = element("article", "message assistant streaming");
    this.el.id = "reply";
    this.el.setAttribute("aria-busy", "true");
    this.el.append(element("div", "role", "AI"));
    const body = element("div", "body");
    this.body = body;
    this.textEl = element("div", "text markdown");
    this.markdown = new MarkdownView(this.textEl);
    this.source = ""; // the reply's Markdown drawn so far
    this.thinkingBlock = null; // {details, node}, once reasoning comes
    this.reasoningBuffer = "";
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

  /** A piece of the model's reasoning: drawn with the tokens, into the Thinking block. */
  pushReasoning(text) {
    this.reasoningBuffer += text;
    this.bufferedTokens += 1;
    if (this.paused) this.onBuffered(this.bufferedTokens);
    else this.schedule();
  }

  thinkingNode() {
    if (this.thinkingBlock === null) {
      this.thinkingBlock = thinkingElement();
      this.body.before(this.thinkingBlock.details);
    }
    return this.thinkingBlock.node;
  }

  render() {
    const source = this.source;
    timed(source, () => this.markdown.render(source));
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
    if (this.buffer || this.reasoningBuffer) {
      if (this.reasoningBuffer) this.thinkingNode().appendData(this.reasoningBuffer);
      if (this.buffer) {
        this.source += this.buffer;
        this.render();
      }
      this.buffer = "";
      this.reasoningBuffer = "";
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
    if (this.buffer || this.reasoningBuffer) this.schedule();
    else this.draw();
  }

  showThinking() {
    this.thinking.hidden = false;
  }

  /** Show exactly `text`, dropping anything buffered (a reply known whole: the fallback, a saved reply). */
  replaceText(text) {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.buffer = "";
    this.bufferedTokens = 0;
    this.source = text;
    if (this.reasoningBuffer) this.thinkingNode().appendData(this.reasoningBuffer);
    this.reasoningBuffer = "";
    this.render();
    this.lastDraw = performance.now();
    if (text) this.thinking.hidden = true;
    this.onDraw();
  }

  /** Show exactly `text` as the reasoning (a reply known whole, or picked up after a reload). */
  replaceReasoning(text) {
    this.reasoningBuffer = "";
    if (text) this.thinkingNode().data = text;
    else if (this.thinkingBlock) this.thinkingBlock.node.data = "";
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

  /** The reply is over: drop the cursor and indicator, add its stats, note, error and actions. */
  finalize({ stats = null, model = "", error = "", note = "", actions = [] }) {
    this.finished = true;
    this.el.removeAttribute("id");
    this.el.classList.remove("streaming");
    this.el.classList.add("done");
    this.el.setAttribute("aria-busy", "false");
    this.el.setAttribute("role", "listitem");
    this.cursor.remove();
    this.thinking.remove();
    if (!this.source) this.textEl.parentElement.classList.add("empty");
    const meta = statsLine(stats, model);
    if (meta) this.el.append(element("p", "meta", meta));
    if (note) this.el.append(element("p", "note", note));
    if (error) {
      this.el.classList.add("failed");
      const alert = element("p", "error", error);
      alert.setAttribute("role", "alert");
      this.el.append(alert);
    }
    if (actions.length) {
      const bar = element("div", "reply-actions");
      for (const action of actions) {
        const button = element("button", "button secondary", action.label);
        button.type = "button";
        button.addEventListener("click", action.run, { once: true });
        bar.append(button);
      }
      this.el.append(bar);
    }
  }
}
