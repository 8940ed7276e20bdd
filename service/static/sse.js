// Server-Sent Events over fetch(): a pure, incremental parser and a reader loop around it.
//
// The parser follows the HTML "event stream" rules: lines end in LF, CR or CRLF (a CRLF may be split
// across two reads); a blank line dispatches the event; lines starting with ":" are comments (the
// server's ": ping"); "data" lines are joined with "\n"; "id" sets the last event id, which persists
// until another "id" changes it. Bytes go through one TextDecoder with {stream: true}, so a UTF-8
// character split between reads is decoded once both halves are in; the partial last line of a read
// is kept and completed by the next one.

/** @typedef {{id: string, event: string, data: string, retry: (number|undefined)}} SSEEvent */

export class SSEParser {
  constructor() {
    this.decoder = new TextDecoder("utf-8");
    this.line = ""; // an unfinished line carried into the next push
    this.afterCR = false; // the previous push ended in "\r": a leading "\n" belongs to it
    this.data = [];
    this.eventType = "";
    this.lastEventId = "";
    this.retry = undefined;
  }

  /**
   * Feed one network read. Accepts Uint8Array/ArrayBuffer (decoded here) or an already decoded string.
   * @returns {SSEEvent[]} the events completed by this read, in order
   */
  push(chunk) {
    const text =
      typeof chunk === "string"
        ? chunk
        : this.decoder.decode(chunk instanceof ArrayBuffer ? new Uint8Array(chunk) : chunk, { stream: true });
    return this.feed(text);
  }

  /** The body ended: flush the decoder. An event without its closing blank line is dropped (per spec). */
  end() {
    const events = this.feed(this.decoder.decode());
    this.line = "";
    this.data = [];
    this.eventType = "";
    return events;
  }

  feed(text) {
    const events = [];
    if (text === "") return events; // an empty read (or half a UTF-8 character): a pending CR stays pending
    let start = 0;
    if (this.afterCR && text.charCodeAt(0) === 10) start = 1;
    this.afterCR = false;
    for (let i = start; i < text.length; i++) {
      const code = text.charCodeAt(i);
      if (code !== 10 && code !== 13) continue;
      const line = this.line + text.slice(start, i);
      this.line = "";
      this.processLine(line, events);
      if (code === 13) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === 10) i++;
        } else {
          this.afterCR = true;
        }
      }
      start = i + 1;
    }
    this.line += text.slice(start);
    return events;
  }

  processLine(line, events) {
    if (line === "") {
      if (this.data.length) {
        events.push({ id: this.lastEventId, event: this.eventType || "message", data: this.data.join("\n"), retry: this.retry });
      }
      this.data = [];
      this.eventType = "";
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":" comment, e.g. ": ping"
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.eventType = value;
    else if (field === "id") {
      if (!value.includes("\0")) this.lastEventId = value;
    } else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }
}

/** Parse a whole sequence of chunks at once (a pure helper, handy for tests). */
export function parseChunks(chunks) {
  const parser = new SSEParser();
  const events = [];
  for (const chunk of chunks) events.push(...parser.push(chunk));
  events.push(...parser.end());
  return events;
}

/**
 * Read a fetch Response body as SSE, calling onEvent(event) for each; stop early when it returns true.
 * Resolves "ended" when onEvent asked to stop, "closed" when the body ended first; rejects on a
 * network error or abort (whatever reader.read() throws).
 */
export async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      const events = done ? parser.end() : parser.push(value);
      for (const event of events) {
        if (onEvent(event)) {
          reader.cancel().catch(() => {});
          return "ended";
        }
      }
      if (done) return "closed";
    }
  } finally {
    try {
      reader.releaseLock();
    } catch {
      // a pending read after cancel; nothing to release
    }
  }
}
