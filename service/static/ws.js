// Streams over the WebSocket endpoint (GET /api/v1/ai/chat/ws, docs/protocol.md), chosen by a setting kept in
// localStorage. openStream and resumeStream have api.js's contract: each resolves to a Response that sse.js reads.
// A refusal (an error frame without an id) becomes a Response with the service's JSON error and its HTTP status;
// a stream becomes a text/event-stream body whose events are the frames, each frame's JSON as the data line and
// its "id" as the id line. So turn.js keeps one path for both transports: retry and resume, Stop (the DELETE of
// api.js cancels a stream whatever carries it), the fallback.
//
// One socket serves the page's turns one after another; the access token goes in a first auth frame (a browser
// cannot set headers on a WebSocket). Aborting a turn closes the socket, as aborting a fetch drops its
// connection: the server treats it as a drop, and the next turn opens a new socket.
import { savedToken } from "./api.js";

const SETTING = "chat.transport";
const PATH = "/api/v1/ai/chat/ws";
const STATUS = {
  validation_error: 400,
  context_too_long: 400,
  unsafe_input: 400,
  unauthorized: 401,
  not_found: 404,
  payload_too_large: 413,
  rate_limited: 429,
  upstream_rejected: 502,
  upstream_unavailable: 503,
  database_unavailable: 503,
  shared_state_unavailable: 503,
};

export function webSocketChosen() {
  return localStorage.getItem(SETTING) === "ws";
}

export function chooseWebSocket(on) {
  if (on) localStorage.setItem(SETTING, "ws");
  else localStorage.removeItem(SETTING);
}

/** Keep `checkbox` and the setting in step (the page's "Stream over a WebSocket"). */
export function bindSetting(checkbox) {
  if (!checkbox) return;
  checkbox.checked = webSocketChosen();
  checkbox.addEventListener("change", () => chooseWebSocket(checkbox.checked));
}

let current = null; // {socket, ready, onFrame, onClose}: the open socket, if any

function connect() {
  if (current && current.socket.readyState <= WebSocket.OPEN) return current.ready;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}${PATH}`);
  const entry = { socket, onFrame: null, onClose: null };
  entry.ready = new Promise((resolve, reject) => {
    socket.addEventListener("open", () => {
      const token = savedToken().trim();
      if (token) socket.send(JSON.stringify({ type: "auth", token }));
      resolve(entry);
    }, { once: true });
    socket.addEventListener("error", () => reject(new TypeError("The WebSocket could not be opened.")), { once: true });
  });
  socket.addEventListener("message", (message) => entry.onFrame && entry.onFrame(message.data));
  socket.addEventListener("close", () => {
    if (current === entry) current = null;
    if (entry.onClose) entry.onClose();
  });
  current = entry;
  return entry.ready;
}

function refusal(error) {
  const body = JSON.stringify({ error: { code: error.code, message: error.message, details: error.details || {} } });
  const headers = { "Content-Type": "application/json" };
  const retryAfter = error.details && error.details.retryAfter;
  if (retryAfter) headers["Retry-After"] = String(retryAfter);
  return new Response(body, { status: STATUS[error.code] || 400, headers });
}

/** Send `frame` and resolve to the Response its answer makes; rejects when the socket fails or `signal` aborts. */
async function request(frame, signal) {
  if (signal.aborted) throw new DOMException("Aborted", "AbortError");
  const entry = await connect();
  const encoder = new TextEncoder();
  return new Promise((resolve, reject) => {
    let body = null; // the stream's controller, once its first event came
    const settle = () => {
      entry.onFrame = null;
      entry.onClose = null;
      signal.removeEventListener("abort", abort);
    };
    const fail = (error) => {
      settle();
      if (body) body.error(error);
      else reject(error);
    };
    const abort = () => {
      fail(new DOMException("Aborted", "AbortError"));
      entry.socket.close();
    };
    signal.addEventListener("abort", abort, { once: true });
    entry.onClose = () => fail(new TypeError("The WebSocket closed."));
    entry.onFrame = (text) => {
      let event;
      try {
        event = JSON.parse(text);
      } catch {
        return;
      }
      if (!event || event.type === "pong") return;
      if (!body) {
        if (event.type === "error" && !event.id) {
          settle();
          resolve(refusal(event.error || {}));
          return;
        }
        const events = new ReadableStream({ start: (controller) => { body = controller; } });
        resolve(new Response(events, { headers: { "Content-Type": "text/event-stream" } }));
      }
      body.enqueue(encoder.encode(`${event.id ? `id: ${event.id}\n` : ""}data: ${text}\n\n`));
      if (event.type === "done" || event.type === "error") {
        settle();
        body.close();
      }
    };
    entry.socket.send(JSON.stringify(frame));
  });
}

/** A chat turn (the body of POST /chat/stream) over the socket. */
export function openStream(body, signal) {
  return request({ type: "chat", ...body }, signal);
}

/** The events after lastEventId, then the stream live (a stream begun over either transport). */
export function resumeStream(streamId, lastEventId, signal) {
  return request({ type: "resume", streamId, lastEventId: lastEventId || "" }, signal);
}
