// API calls: every request the page makes to the service (docs/protocol.md), with the access token attached.
//
// JSON calls resolve to the body or throw ApiError (the service's JSON error, or a status it would use)
// or NetworkError (nothing came back). The stream calls resolve to the raw Response, which the turn
// reads with sse.js.

const API = "/api/v1/ai";
const TOKEN_KEY = "chat.token";

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null, details = {}) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.details = details;
  }
}

export class NetworkError extends Error {}

/** The error code for any failure: the service's own, or "network" when it could not be reached. */
export function errorCode(error) {
  return error instanceof ApiError ? error.code : "network";
}

// -- the access token (kept for this tab only) -----------------------------------------------------

export function savedToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function saveToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function authHeaders() {
  const token = savedToken().trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// -- errors ------------------------------------------------------------------------------------------

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
export async function errorFromResponse(response) {
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

// -- JSON calls --------------------------------------------------------------------------------------

async function call(path, { method = "GET", body, signal } = {}) {
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

export function listConversations() {
  return call("/conversations?limit=100");
}

export function getConversation(id, signal) {
  return call(`/conversations/${encodeURIComponent(id)}`, { signal });
}

export function deleteConversation(id) {
  return call(`/conversations/${encodeURIComponent(id)}`, { method: "DELETE" });
}

/** Make the branch through `messageId` current: the conversation as GET gives it. */
export function switchBranch(id, messageId) {
  return call(`/conversations/${encodeURIComponent(id)}/current`, { method: "PUT", body: { messageId } });
}

/** The models a turn may pick: {models: [{id, default}]}. */
export function listModels() {
  return call("/models");
}

/** The whole reply as one JSON body: the fallback when streaming is impossible. */
export function chatOnce(body, signal) {
  return call("/chat", { method: "POST", body, signal });
}

// -- streams -----------------------------------------------------------------------------------------

/** POST /chat/stream: the Response (not yet read); fetch's own errors propagate. */
export function openStream(body, signal) {
  return fetch(`${API}/chat/stream`, {
    method: "POST",
    headers: { ...authHeaders(), Accept: "text/event-stream", "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal,
    cache: "no-store",
  });
}

/** GET /chat/stream/<id> with Last-Event-ID: the events after it, then the stream live. */
export function resumeStream(streamId, lastEventId, signal) {
  const headers = { ...authHeaders(), Accept: "text/event-stream" };
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  return fetch(`${API}/chat/stream/${encodeURIComponent(streamId)}`, { headers, signal, cache: "no-store" });
}

/** DELETE /chat/stream/<id>: stop the generation. keepalive lets it outlive the page. Never rejects. */
export function cancelStream(streamId) {
  return fetch(`${API}/chat/stream/${encodeURIComponent(streamId)}`, {
    method: "DELETE",
    headers: authHeaders(),
    keepalive: true,
  }).catch(() => null);
}
