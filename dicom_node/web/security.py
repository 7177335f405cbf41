"""Response headers that keep a browser from leaking or framing the page.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware) so it adds headers without
buffering responses such as file downloads.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Scripts, styles and images only from the node itself, never inline: the one script is
# ``static/live.js`` (the study page's refresh). data: images are not needed (Grad-CAM
# comes from an authenticated endpoint), so they are not allowed.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


class SecurityHeaders:
    """Add the headers above to every response, and ``Cache-Control: no-store`` to all but
    the static files: pages, images and API answers carry patient data, which must not stay
    in a browser or proxy cache after logout."""

    def __init__(self, app: ASGIApp, static_prefix: str = "/static/", hsts: bool = False) -> None:
        self.app = app
        self.static_prefix = static_prefix
        # Only when served over TLS: HSTS on plain HTTP would lock browsers out of the page.
        self.headers = dict(HEADERS)
        if hsts:
            self.headers["Strict-Transport-Security"] = "max-age=31536000"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_static = str(scope.get("path", "")).startswith(self.static_prefix)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
                if is_static:
                    headers.setdefault("Cache-Control", "private, max-age=3600")
                else:
                    headers["Cache-Control"] = "no-store"
                    headers["Pragma"] = "no-cache"
            await send(message)

        await self.app(scope, receive, send_with_headers)
