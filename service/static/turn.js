// A turn: one message and its reply, from send to the reply's end: stream, retry, stop, fall back.
//
// The reply streams over POST /api/v1/ai/chat/stream (docs/protocol.md). A lost connection is retried RETRY_LIMIT
// times with exponential backoff: before the stream id is known by POSTing again, after it by
// GET /chat/stream/<id> with Last-Event-ID (the server replays what came after it). After that, or when
// streaming is impossible, the turn asks POST /api/v1/ai/chat for the whole reply.
//
// Stop sends DELETE /chat/stream/<id> and keeps reading: the server sends every token it has before the
// final `cancelled` event and saves exactly those, so drawing them all shows the saved reply. If that
// event does not come within STOP_WAIT_MS the turn hangs up and shows the saved reply instead.
//
// A turn can also pick up a stream after a page reload (`resume`): it continues from the remembered
// Last-Event-ID, and when the stream is gone it asks the page to show the saved conversation.
import { ApiError, cancelStream, chatOnce, errorFromResponse, getConversation, openStream, resumeStream } from "./api.js";
import { describeError } from "./errors.js";
import { NOT_FINISHED, ReplyView } from "./reply-view.js";
import { readEvents } from "./sse.js";
import * as overWebSocket from "./ws.js";

export const RETRY_LIMIT = 3;
export const RETRY_BASE_MS = 300;
export const STOP_WAIT_MS = 5000;
export const STOPPED = "You stopped this reply.";

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

/** `promise`, or undefined after `ms`. */
function within(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * A turn is a plain message, or a branch: `regenerateMessageId` (a new reply beside that one; `message` is its
 * question, shown but not sent) or `editMessageId` (`message` replaces that user message). `model`: the model
 * picked for it, or null for the default.
 *
 * hooks (each called with the turn first): status(turn, text), drawn(turn), buffered(turn, count),
 * conversation(turn) once its conversation id is known, started(turn) once its stream id is known,
 * finished(turn) once the reply is drawn and finalized, gone(turn) when a picked-up stream no longer
 * exists, actions(turn, code) → [{label, run}] offered under an error.
 */
export class Turn {
  constructor({ message, conversationId = null, hooks, resume = null, regenerateMessageId = null, editMessageId = null, model = null }) {
    this.message = message;
    this.conversationId = conversationId;
    this.regenerateMessageId = regenerateMessageId || (resume && resume.regenerateMessageId) || null;
    this.editMessageId = editMessageId || (resume && resume.editMessageId) || null;
    this.requestedModel = model || (resume && resume.requestedModel) || null;
    this.hooks = hooks;
    this.controller = new AbortController();
    this.streamId = resume ? resume.streamId : null;
    this.lastEventId = resume ? resume.lastEventId : "";
    this.messageId = (resume && resume.messageId) || null;
    this.model = (resume && resume.model) || "";
    this.received = (resume && resume.text) || ""; // every token up to lastEventId
    this.reasoning = (resume && resume.reasoning) || ""; // every reasoning piece up to lastEventId
    this.pickedUp = resume !== null;
    this.stopped = false;
    this.abandoned = false;
    this.networkDone = false;
    this.connected = false; // a stream request is open
    this.cancelRequest = null; // the DELETE, once sent
    this.stopTimer = null;
    this.view = new ReplyView({ onDraw: () => hooks.drawn(this), onBuffered: (count) => hooks.buffered(this, count) });
    if (this.reasoning) this.view.replaceReasoning(this.reasoning);
    if (this.received) this.view.replaceText(this.received);
  }

  /** What a reload needs to pick this stream up where it is. */
  snapshot() {
    const { streamId, lastEventId, messageId, model, message, received, reasoning, regenerateMessageId, editMessageId, requestedModel } = this;
    return { streamId, lastEventId, messageId, model, message, text: received, reasoning, regenerateMessageId, editMessageId, requestedModel };
  }

  body() {
    const body = this.regenerateMessageId ? {} : { message: this.message };
    if (this.conversationId) body.conversationId = this.conversationId;
    if (this.regenerateMessageId) body.regenerateMessageId = this.regenerateMessageId;
    if (this.editMessageId) body.editMessageId = this.editMessageId;
    if (this.requestedModel) body.model = this.requestedModel;
    return body;
  }

  async run() {
    let failures = 0;
    for (;;) {
      let outcome;
      try {
        outcome = await this.streamOnce();
      } catch (error) {
        if (this.stopped) return this.afterStop();
        if (error instanceof ApiError) return this.fail(error.code, error);
        outcome = "lost";
      }
      if (outcome === "ended") return undefined;
      if (this.stopped) return this.afterStop();
      if (outcome === "fallback" || failures >= RETRY_LIMIT) break;
      failures += 1;
      this.hooks.status(this, `Connection lost. Reconnecting (attempt ${failures} of ${RETRY_LIMIT})…`);
      try {
        await sleep(RETRY_BASE_MS * 2 ** (failures - 1), this.controller.signal);
      } catch {
        return this.afterStop();
      }
    }
    if (this.pickedUp) return this.gone();
    return this.fallback();
  }

  /** One request: "ended" (done or error handled), "lost" (retry) or "fallback"; throws ApiError. */
  async streamOnce() {
    const resuming = this.streamId !== null;
    const signal = this.controller.signal;
    this.connected = true;
    try {
      let response;
      try {
        const streams = overWebSocket.webSocketChosen() ? overWebSocket : { openStream, resumeStream }; // the setting
        response = resuming ? await streams.resumeStream(this.streamId, this.lastEventId, signal) : await streams.openStream(this.body(), signal);
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
      if (resuming && !this.stopped) this.hooks.status(this, "");
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
    } finally {
      this.connected = false;
    }
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
        if (payload.messageId) this.messageId = payload.messageId;
        if (payload.model) this.model = payload.model;
        if (payload.conversationId) {
          this.conversationId = payload.conversationId;
          this.hooks.conversation(this);
        }
        if (this.stopped) this.sendCancel(); // Stop came before the stream had an id
        else this.hooks.started(this);
        return null;
      case "token":
        if (typeof payload.content === "string" && payload.content) {
          this.received += payload.content;
          this.view.push(payload.content);
        }
        return null;
      case "reasoning":
        if (typeof payload.content === "string" && payload.content) {
          this.reasoning += payload.content;
          this.view.pushReasoning(payload.content);
        }
        return null;
      case "done":
        this.end({ stats: payload, model: this.model });
        return "ended";
      case "error": {
        const code = payload.error && payload.error.code;
        if (code === "cancelled" && this.stopped) {
          this.end({ note: STOPPED });
          return "ended";
        }
        if (code === "cancelled" && resuming) {
          // Picked up after a reload, but the server had ended the stream when the old page left: what was
          // replayed is what it saved.
          if (this.pickedUp) {
            this.end({ note: NOT_FINISHED });
            return "ended";
          }
          return "fallback"; // resumed after a lost connection, but the server had given the reply up: ask again
        }
        this.fail(code, { midStream: true, message: payload.error && payload.error.message });
        return "ended";
      }
      default:
        return null; // unknown types are ignored (docs/protocol.md)
    }
  }

  fail(code, details) {
    this.end({ error: describeError(code, details), actions: this.hooks.actions(this, code) });
  }

  async fallback() {
    this.hooks.status(this, "Live streaming is not available; waiting for the whole reply…");
    this.view.showThinking();
    try {
      const data = await chatOnce(this.body(), this.controller.signal);
      if (data.conversationId) {
        this.conversationId = data.conversationId;
        this.hooks.conversation(this);
      }
      this.messageId = data.messageId || null;
      if (data.reasoning) this.view.replaceReasoning(data.reasoning);
      this.view.replaceText(data.content || "");
      this.end({ stats: { usage: data.usage, finishReason: data.finishReason }, model: data.model });
    } catch (error) {
      if (this.stopped) this.end({ note: STOPPED });
      else if (error instanceof ApiError) this.fail(error.code, error);
      else this.fail("network");
    }
  }

  /** A picked-up stream no longer exists: the page shows the saved conversation instead. */
  gone() {
    if (this.networkDone) return;
    this.networkDone = true;
    this.hooks.gone(this);
  }

  /** Stopped, but the stream's last event never came: show the reply as the server saved it. */
  async afterStop() {
    if (this.networkDone) return;
    if (!this.abandoned && this.cancelRequest && this.conversationId && this.messageId) {
      await within(this.cancelRequest, STOP_WAIT_MS); // the DELETE is answered once the stream ended and saved
      try {
        const data = await within(getConversation(this.conversationId), STOP_WAIT_MS);
        const saved = ((data && data.messages) || []).find((message) => message.id === this.messageId);
        if (saved && !this.networkDone) {
          if (saved.reasoning) this.view.replaceReasoning(saved.reasoning);
          this.view.replaceText(saved.content);
        }
      } catch {
        // keep what arrived
      }
    }
    this.end({ note: STOPPED });
  }

  end(outcome) {
    if (this.networkDone) return;
    this.networkDone = true;
    clearTimeout(this.stopTimer);
    this.view.end(() => {
      this.view.finalize(outcome);
      this.hooks.finished(this);
    });
  }

  sendCancel() {
    if (this.cancelRequest === null && this.streamId) this.cancelRequest = cancelStream(this.streamId);
  }

  /** Stop: tell the server (DELETE) and read on to its `cancelled`, drawing every token before it. */
  cancel() {
    if (this.networkDone) {
      if (!this.view.finished) this.view.resume(); // arrived but paused: show it all now
      return;
    }
    if (this.stopped) return;
    this.stopped = true;
    this.view.resume();
    this.hooks.status(this, "Stopping…");
    this.sendCancel(); // without a stream id yet, handle() sends it when the metadata comes
    if (this.connected) this.stopTimer = setTimeout(() => this.controller.abort(), STOP_WAIT_MS);
    else this.controller.abort(); // between attempts or waiting for the fallback: nothing more will come
  }

  /** The page moved on (another conversation): stop the stream and hang up at once. */
  abandon() {
    if (this.networkDone) return;
    this.abandoned = true;
    this.stopped = true;
    this.sendCancel();
    this.controller.abort();
  }
}
