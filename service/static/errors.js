// Errors as sentences: what a person reads for each error code of the wire contract.
//
// Pure: no DOM, no network. "network" stands for a server that could not be reached at all.

function formatWait(seconds) {
  const whole = Math.max(1, Math.ceil(seconds));
  if (whole < 90) return `${whole} second${whole === 1 ? "" : "s"}`;
  const minutes = Math.ceil(whole / 60);
  return `${minutes} minute${minutes === 1 ? "" : "s"}`;
}

/** The sentence a person sees for an error code (or "network" when the server is unreachable). */
export function describeError(code, { retryAfter = null, midStream = false, message = "" } = {}) {
  switch (code) {
    case "rate_limited":
      if (retryAfter > 0) return `You are sending messages faster than allowed. Please try again in ${formatWait(retryAfter)}.`;
      return midStream
        ? "You have used up your reply allowance for now, so this reply was cut short. Please try again later."
        : "You are sending messages faster than allowed. Please wait a moment and try again.";
    case "idle_timeout":
      return "The AI stopped responding, so the reply was cut short. Please try again.";
    case "upstream_error":
      return "The AI service ran into a problem while answering, so the reply is incomplete. Please try again.";
    case "content_filtered":
      return "The reply was stopped by the AI provider's content filter.";
    case "cancelled":
      return "The reply was cancelled before it finished.";
    case "server_shutdown":
      return "The server restarted while answering, so the reply is incomplete. Please send your message again.";
    case "internal":
      return "Something went wrong on our side. Please try again in a moment.";
    case "validation_error":
      return "This message can't be sent: it may be empty or too long. Please edit it and try again.";
    case "context_too_long":
      return "This conversation is too long for the model: start a new conversation or shorten your message.";
    case "unsafe_input":
      return "This message was blocked by a safety check. Please rephrase it.";
    case "unauthorized":
      return "You need to sign in: paste a valid access token into the Access token field.";
    case "not_found":
      return "This conversation no longer exists. Start a new one from the list.";
    case "payload_too_large":
      return "Your message is too long to send. Please shorten it.";
    case "unsupported_media_type":
      return "The server did not understand the page's request. Please reload the page.";
    case "upstream_unavailable":
      return "The AI service can't be reached right now. Please try again in a minute.";
    case "upstream_rejected":
      return "The AI service refused this request, so there is no reply. Sending it again won't help; if it keeps happening, tell whoever runs this service.";
    case "network":
      return "The server can't be reached. Check your connection and try again.";
    default:
      return message || "Something went wrong. Please try again.";
  }
}

/** Codes after which the same message can only succeed in a new conversation. */
export const NEEDS_NEW_CONVERSATION = new Set(["context_too_long"]);
