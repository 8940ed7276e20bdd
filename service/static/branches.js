// Branches: a conversation is a tree of messages (GET /api/v1/ai/conversations/<id> gives `allMessages`, each
// with its `parentId`, and `currentMessageId`). Regenerating a reply or editing a message adds a sibling; the
// thread shows the current branch, and "‹ 2 / 3 ›" moves between the siblings of a message (docs/protocol.md,
// *Branches*). This module holds the tree and draws each message's controls; page.js acts on them.
import { element } from "./reply-view.js";

const ROOT = ""; // the parent key of first messages

export class ConversationTree {
  constructor(data) {
    this.byId = new Map();
    this.children = new Map(); // parent id (ROOT for none) -> messages, oldest first
    const all = data.allMessages || data.messages || [];
    for (const message of all) this.add(message);
    const branch = data.messages || [];
    this.currentId = data.currentMessageId || (branch.length ? branch[branch.length - 1].id : null);
  }

  add(message) {
    this.byId.set(message.id, message);
    const key = message.parentId || ROOT;
    if (!this.children.has(key)) this.children.set(key, []);
    this.children.get(key).push(message);
  }

  has(id) {
    return this.byId.has(id);
  }

  /** The message and its siblings (itself included), oldest first. */
  siblings(message) {
    return this.children.get(message.parentId || ROOT) || [message];
  }

  /** The current branch, oldest first. */
  branch() {
    const line = [];
    const seen = new Set();
    let at = this.byId.get(this.currentId);
    while (at && !seen.has(at.id)) {
      seen.add(at.id);
      line.push(at);
      at = at.parentId ? this.byId.get(at.parentId) : null;
    }
    return line.reverse();
  }

  /** The newest model that wrote a reply on the current branch, or "". */
  lastModel() {
    const replies = this.branch().filter((message) => message.role === "assistant" && message.model);
    return replies.length ? replies[replies.length - 1].model : "";
  }
}

function button(className, text, label, run) {
  const node = element("button", className, text);
  node.type = "button";
  if (label) node.setAttribute("aria-label", label);
  node.addEventListener("click", run);
  return node;
}

/**
 * The controls under a saved message: "‹ i / n ›" when it has siblings, Edit on the user's messages and
 * Regenerate on replies. actions: show(sibling), edit(message), regenerate(message).
 */
export function messageControls(message, tree, actions) {
  const bar = element("div", "message-actions");
  const siblings = tree.siblings(message);
  const index = siblings.findIndex((item) => item.id === message.id);
  if (siblings.length > 1 && index !== -1) {
    const nav = element("span", "branch-nav");
    const previous = button("branch-previous", "‹", "Previous version", () => actions.show(siblings[index - 1]));
    const next = button("branch-next", "›", "Next version", () => actions.show(siblings[index + 1]));
    previous.disabled = index === 0;
    next.disabled = index === siblings.length - 1;
    const position = element("span", "branch-position", `${index + 1} / ${siblings.length}`);
    position.setAttribute("aria-label", `version ${index + 1} of ${siblings.length}`);
    nav.append(previous, position, next);
    bar.append(nav);
  }
  if (message.role === "user") bar.append(button("message-edit", "Edit", "Edit this message", () => actions.edit(message)));
  else bar.append(button("message-regenerate", "Regenerate", "Write this reply again", () => actions.regenerate(message)));
  return bar;
}

/** An inline editor in place of a user message's text: resolves to the new text, or null when cancelled. */
export function editInPlace(node, text) {
  return new Promise((resolve) => {
    const body = node.querySelector(".body");
    const form = element("form", "edit-form");
    const field = element("textarea", "edit-text");
    field.value = text;
    field.rows = 3;
    field.setAttribute("aria-label", "Edit your message");
    const save = element("button", "button primary", "Send");
    save.type = "submit";
    const cancel = button("button secondary", "Cancel", null, () => finish(null));
    const bar = element("div", "edit-actions");
    bar.append(cancel, save);
    form.append(field, bar);
    const finish = (value) => {
      form.remove();
      body.hidden = false;
      resolve(value);
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = field.value.trim();
      if (value) finish(value);
    });
    field.addEventListener("keydown", (event) => {
      if (event.key === "Escape") finish(null);
      else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    body.hidden = true;
    body.after(form);
    field.focus();
  });
}
