"""The HTTP views, thin: auth, limits and the request schema, then a call below; the JSON error shape. One
blueprint per feature (chat, conversations, health, the page). Nothing outside the app factory imports them."""
