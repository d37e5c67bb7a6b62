"""Security headers on every answer of the API and the viewer (an ASGI middleware).

No page of the service may be framed by another site (clickjacking: ``X-Frame-Options: DENY`` and
CSP ``frame-ancestors 'none'``), no answer may be sniffed as another type than it says
(``nosniff``), and no URL of the service leaves it as a referrer. The viewer's pages (``/view``)
also get a content security policy that allows only their own files: scripts, styles and requests
to this origin, pictures from it and from ``data:`` (the previews are base64 JPEG).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALWAYS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
FRAME_ANCESTORS = b"frame-ancestors 'none'"
VIEWER_POLICY = (
    b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    b"form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """ASGI middleware: adds the headers above to every HTTP answer, replacing any of the same name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        policy = VIEWER_POLICY if path == "/view" or path.startswith("/view/") else FRAME_ANCESTORS
        added = [*ALWAYS, (b"content-security-policy", policy)]
        names = {name for name, _ in added}

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + added}
            await send(message)

        await self.app(scope, receive, with_headers)
