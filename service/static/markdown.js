// Markdown for the model's replies: parsed by marked, cleaned by DOMPurify (both vendored, see
// scripts/vendor-js), with a copy button on each code block.
//
// The model's text is untrusted. Two layers keep its markup from running: raw HTML in the Markdown is shown as
// text (the renderer escapes it rather than passing it on), and what marked makes is then sanitised, which
// drops any script, handler or `javascript:` link that got through all the same. Images become links: the page's
// policy loads images from its own origin only, and a model's image would be a request to wherever it says.
import DOMPurify from "./vendor/purify.es.js";
import { Marked } from "./vendor/marked.esm.js";

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
  const html = parser.parse(text).trim();
  const fragment = DOMPurify.sanitize(html, PURIFY_OPTIONS);
  for (const code of fragment.querySelectorAll("pre > code")) addCopyButton(code);
  return fragment;
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
