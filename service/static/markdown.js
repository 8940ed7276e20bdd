// Markdown for the model's replies: parsed by marked, cleaned by DOMPurify (both vendored, see
// scripts/vendor-js), with a copy button on each code block.
//
// The model's text is untrusted. Two layers keep its markup from running: raw HTML in the Markdown is shown as
// text (the renderer escapes it rather than passing it on), and what marked makes is then sanitised, which
// drops any script, handler or `javascript:` link that got through all the same. Images become links: the page's
// policy loads images from its own origin only, and a model's image would be a request to wherever it says.
import DOMPurify from "./vendor/purify.es.js";
import { Marked } from "./vendor/marked.esm.js";

const CARRIAGE_RETURNS = /\r\n?/g;
const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (character) => ESCAPES[character]);
}

const parser = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
    },
  },
});

const PURIFY_OPTIONS = {
  RETURN_DOM_FRAGMENT: true,
  FORBID_TAGS: ["style", "img", "form", "input", "button", "textarea", "select"],
  FORBID_ATTR: ["style"],
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

/** `text` as sanitised Markdown: a DocumentFragment, with a copy button on each code block. */
export function renderMarkdown(text) {
  return sanitised(parser.parse(text).trim());
}

function sanitised(html) {
  const fragment = DOMPurify.sanitize(html, PURIFY_OPTIONS);
  for (const code of fragment.querySelectorAll("pre > code")) addCopyButton(code);
  return fragment;
}

/**
 * A growing reply drawn into `root` block by block. Text that only grew keeps its top-level blocks but the last
 * two (later text cannot change a block that has another after it), and only the text from there is lexed; of
 * that, the blocks from the first one that changed are parsed, sanitised and swapped in: while a reply streams,
 * the last one or two. So a render costs about the same at the 4,000th token as at the 40th.
 */
export class MarkdownView {
  constructor(root) {
    this.root = root;
    this.text = "";
    this.blocks = []; // {raw, nodes}: the top-level blocks on screen, in order; their raws make up `this.text`
    this.links = {}; // reference-style link definitions seen so far
  }

  render(source) {
    const text = source.replace(CARRIAGE_RETURNS, "\n"); // as marked reads it, so the raws add up to the text
    const blocks = this.blocks;
    let settled = text.startsWith(this.text) ? Math.max(0, blocks.length - 2) : 0;
    let offset = 0;
    for (let index = 0; index < settled; index += 1) offset += blocks[index].raw.length;
    const tokens = parser.lexer(offset ? text.slice(offset) : text);
    this.links = settled ? { ...this.links, ...tokens.links } : tokens.links;
    this.text = text;
    let same = 0;
    while (same < tokens.length && settled + same < blocks.length && blocks[settled + same].raw === tokens[same].raw) {
      same += 1;
    }
    settled += same;
    for (const block of blocks.splice(settled)) for (const node of block.nodes) node.remove();
    for (let index = same; index < tokens.length; index += 1) {
      const part = [tokens[index]];
      part.links = this.links;
      const fragment = sanitised(parser.parser(part).trim());
      blocks.push({ raw: tokens[index].raw, nodes: [...fragment.childNodes] });
      this.root.append(fragment);
    }
  }
}

function addCopyButton(code) {
  const pre = code.parentElement;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy-code";
  button.textContent = "Copy";
  button.setAttribute("aria-label", "Copy this code");
  button.addEventListener("click", () => copy(code.textContent, button));
  pre.classList.add("code-block");
  pre.prepend(button);
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}
