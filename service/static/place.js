// The page keeps its place: the open conversation is in the URL (?c=<id>), and a reply still streaming
// when the tab goes away is remembered in sessionStorage (per conversation) so a reload picks it up.

const PARAM = "c";
const RUNNING_PREFIX = "chat.stream.";

/** The conversation id in the address bar, or null. */
export function conversationInUrl() {
  return new URLSearchParams(window.location.search).get(PARAM) || null;
}

/** Put `id` (null: a new conversation) in the address bar; `push` makes it a new history entry. */
export function showConversationInUrl(id, { push = false } = {}) {
  if (id === conversationInUrl()) return;
  const url = new URL(window.location.href);
  if (id) url.searchParams.set(PARAM, id);
  else url.searchParams.delete(PARAM);
  const state = { conversationId: id };
  if (push) window.history.pushState(state, "", url);
  else window.history.replaceState(state, "", url);
}

/**
 * A running stream of conversation `id`: {streamId, lastEventId, messageId, message, text}, where `text`
 * is every token received up to `lastEventId` (so a resume from there draws each token once).
 */
export function rememberRunningStream(id, snapshot) {
  try {
    sessionStorage.setItem(RUNNING_PREFIX + id, JSON.stringify(snapshot));
  } catch {
    // storage full or disabled: a reload then shows the saved conversation
  }
}

export function runningStream(id) {
  try {
    const value = JSON.parse(sessionStorage.getItem(RUNNING_PREFIX + id) || "null");
    return value && typeof value.streamId === "string" && typeof value.lastEventId === "string" ? value : null;
  } catch {
    return null;
  }
}

export function forgetRunningStream(id) {
  sessionStorage.removeItem(RUNNING_PREFIX + id);
}
