"""Response headers that make the browser treat every answer as what it is and the page as locked down.

The page (``service/static/``) has no inline script or style and talks only to its own origin, so its policy can
forbid everything else: injected markup that ever slipped past the page's sanitised rendering could neither run
script nor load anything, and no other site may frame the page.
"""

from __future__ import annotations

from flask import Flask, Response, request

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # for browsers that predate frame-ancestors
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


API_PATHS = "/api/"
# Conversations and usage are private: no cache, the browser's own disk cache included, keeps a copy.
PRIVATE = "no-store"


def install_security_headers(app: Flask) -> None:
    """Add the headers to every response of ``app``, errors and event streams included."""
    app.after_request(add_security_headers)


def add_security_headers(response: Response) -> Response:
    """All of them at once, unless a view set its own policy: one scan of the headers per response, not one per
    header (this runs for every request, every stream's included)."""
    headers = response.headers
    if "Content-Security-Policy" not in headers:
        headers.extend(SECURITY_HEADERS)
    if request.path.startswith(API_PATHS) and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = PRIVATE
    return response
