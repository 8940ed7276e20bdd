// A conversation's title, cut exactly as the server cuts it when it saves the first exchange, so the
// title shown while the first reply streams is the one the list shows once it is saved. The server
// titles the message as it stored it: sanitised (service/chat/safety.py: NFC, control characters other
// than newline and tab dropped), then " ".join(message.split())[:TITLE_CHARS] or "New conversation"
// (service/store/conversations.py).

export const TITLE_CHARS = 80;
export const UNTITLED = "New conversation";

const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]/g;
// Python's str.split() with no argument splits on runs of what str.isspace() accepts; JavaScript's \s
// differs (it has U+FEFF, lacks U+001C–U+001F and U+0085), so the set is spelled out.
const PYTHON_WHITESPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/;

/** The message as the server stores it. */
export function sanitise(message) {
  return String(message).normalize("NFC").replace(CONTROL, "");
}

export function conversationTitle(message) {
  const words = sanitise(message).split(PYTHON_WHITESPACE).filter(Boolean);
  // Python slices code points, not UTF-16 units: an emoji counts once and is never cut in half.
  return Array.from(words.join(" ")).slice(0, TITLE_CHARS).join("") || UNTITLED;
}
