"""The viewer's sessions: a signed cookie instead of the token, and the API's check of either.

The page asks for the token once and POSTs it to ``/view/login``; the answer sets an HttpOnly,
SameSite=Strict cookie whose value is ``{nonce}.{expiry}.{signature}``: an HMAC-SHA256, keyed by
a key derived from the token, of the nonce and the expiry. The token itself never leaves the
login request, a cookie says nothing about it, and the API stays stateless (every process of a
service, and a restarted one, accepts the sessions of the others; changing the token ends every
session). A session lasts :data:`SESSION_S`.

CSRF: SameSite=Strict keeps other sites' requests from carrying the cookie, and a request that
changes something (any method but GET and HEAD) must also carry :data:`CSRF_HEADER`, which a
cross-site form cannot set and a cross-site script may not without the service's consent (no
CORS here).
"""

from __future__ import annotations

import hashlib
import hmac
import http.cookies
import secrets
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.api.internal import send_json

COOKIE = "samstream_session"
CSRF_HEADER = b"x-samstream-viewer"
SESSION_S = 12 * 3600
SAFE_METHODS = ("GET", "HEAD")
# Open without a session: the login page and form, and the page's own code and style (no data).
OPEN_PATHS = ("/view/login",)
OPEN_PREFIXES = ("/view/static/",)


class Sessions:
    """Makes and checks session cookies for one token.

    Args:
        token: the API token.
        session_s: how long a session lasts.
    """

    def __init__(self, token: str, session_s: int = SESSION_S) -> None:
        # A key of its own: a signature is never an HMAC keyed by the raw token.
        self._key = hashlib.sha256(b"samstream viewer session\0" + token.encode()).digest()
        self._token = token.encode()
        self.session_s = session_s

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    def make(self, now: float | None = None) -> str:
        """A new session's cookie value."""
        expiry = int((time.time() if now is None else now) + self.session_s)
        body = f"{secrets.token_urlsafe(16)}.{expiry}"
        return f"{body}.{self._sign(body)}"

    def valid(self, value: str, now: float | None = None) -> bool:
        """Whether ``value`` is a cookie this service made and it has not expired."""
        body, _, signature = value.rpartition(".")
        _, _, expiry = body.rpartition(".")
        if not body or not expiry.isdigit():
            return False
        if not hmac.compare_digest(signature, self._sign(body)):
            return False
        return int(expiry) > (time.time() if now is None else now)

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def set_cookie(self, value: str, secure: bool) -> str:
        """The ``Set-Cookie`` header of a session (``secure``: the page came over https)."""
        return f"{COOKIE}={value}; Max-Age={self.session_s}; Path=/; HttpOnly; SameSite=Strict" + (
            "; Secure" if secure else ""
        )


def cookie_of(headers: dict[bytes, bytes]) -> str | None:
    """The session cookie's value in a request's headers, or None."""
    raw = headers.get(b"cookie")
    if not raw:
        return None
    jar = http.cookies.SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except http.cookies.CookieError:
        return None
    morsel = jar.get(COOKIE)
    return None if morsel is None else morsel.value


class BearerAuth:
    """ASGI middleware: every HTTP request needs the bearer token, or the viewer's session cookie.

    Answers 401 otherwise (docs and spec too); the viewer's HTML pages answer the login page
    instead. A request with the cookie but not the token must carry :data:`CSRF_HEADER` unless its
    method is GET or HEAD (403 otherwise).
    """

    def __init__(self, app: ASGIApp, token: str, login_page: bytes = b"") -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.sessions = Sessions(token)
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = dict(scope.get("headers") or [])
        if hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            await self.app(scope, receive, send)
            return
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        cookie = cookie_of(headers)
        if cookie is not None and self.sessions.valid(cookie):
            if scope.get("method", "GET") in SAFE_METHODS or headers.get(CSRF_HEADER) == b"1":
                await self.app(scope, receive, send)
                return
            await send_json(
                send, 403, f"a viewer session's changes need the header {CSRF_HEADER.decode()}: 1"
            )
            return
        if _is_page(path) and scope.get("method") in SAFE_METHODS:
            await _html(send, 401, self.login_page)
            return
        await send_json(
            send,
            401,
            "missing or wrong bearer token (Authorization: Bearer <token>), or no viewer session",
            [(b"www-authenticate", b"Bearer")],
        )


def _is_page(path: str) -> bool:
    """The viewer's HTML pages (the JSON routes under ``/view/api/`` answer JSON)."""
    return (path == "/view" or path.startswith("/view/")) and not path.startswith("/view/api/")


async def _html(send: Send, status: int, body: bytes) -> None:
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
