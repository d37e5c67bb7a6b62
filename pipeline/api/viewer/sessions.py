"""The viewer's sessions: a signed cookie instead of the token, and the API's check of either.

The page asks for the token once and POSTs it to ``/view/login``; the answer sets an HttpOnly,
SameSite=Strict cookie whose value is ``{nonce}.{expiry}.{signature}``: an HMAC-SHA256, keyed by
a key derived from the token, of the nonce and the expiry. The token itself never leaves the
login request, and a cookie says nothing about it. A session is also recorded in Redis under its
nonce (expiring with it), so every process of a service, and a restarted one, accepts the sessions
of the others, while signing out (``/view/logout``) ends the session for good: its cookie is
refused everywhere from then on. Changing the token ends every session. A session lasts
:data:`SESSION_S`.

Failed sign-ins are counted per client address in Redis (:class:`LoginThrottle`): past
:data:`LOGIN_FAILURES` in :data:`LOGIN_WINDOW_S`, the address is answered 429 with
``Retry-After`` until the window ends, whatever token it sends.

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

import redis
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.api.internal import logged, send_json, unavailable
from pipeline.streams.keys import Keys

COOKIE = "samstream_session"
CSRF_HEADER = b"x-samstream-viewer"
SESSION_S = 12 * 3600
SAFE_METHODS = ("GET", "HEAD")
# Open without a session: the login page and form, and the page's own code and style (no data).
OPEN_PATHS = ("/view/login",)
OPEN_PREFIXES = ("/view/static/",)
LOGIN_FAILURES = 5  # failed sign-ins an address may make in a window
LOGIN_WINDOW_S = 60  # the window, from the first failure


class Sessions:
    """Makes, checks and ends session cookies for one token, recorded in Redis.

    Args:
        token: the API token.
        client: the service's Redis.
        keys: its key names.
        session_s: how long a session lasts.
    """

    def __init__(self, token: str, client: redis.Redis, keys: Keys, session_s: int = SESSION_S) -> None:
        # A key of its own: a signature is never an HMAC keyed by the raw token.
        self._key = hashlib.sha256(b"samstream viewer session\0" + token.encode()).digest()
        self._token = token.encode()
        self._client = client
        self._keys = keys
        self.session_s = session_s

    def token_ok(self, given: str) -> bool:
        """Whether ``given`` is the token (a string that is not valid text never is)."""
        try:
            encoded = given.encode()
        except UnicodeEncodeError:  # a lone surrogate from JSON's \ud800
            return False
        return hmac.compare_digest(encoded, self._token)

    def make(self, now: float | None = None) -> str:
        """A new session's cookie value, recorded until it expires."""
        nonce = secrets.token_urlsafe(16)
        expiry = int((time.time() if now is None else now) + self.session_s)
        body = f"{nonce}.{expiry}"
        self._client.set(self._keys.viewer_session(nonce), expiry, ex=self.session_s)
        return f"{body}.{self._sign(body)}"

    def signed(self, value: str, now: float | None = None) -> str | None:
        """The nonce of ``value`` if this service signed it and it has not expired, else None.
        Says nothing of whether it was signed out (see :meth:`valid`)."""
        body, _, signature = value.rpartition(".")
        nonce, _, expiry = body.rpartition(".")
        if not nonce or not expiry.isdigit():
            return None
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        return nonce if int(expiry) > (time.time() if now is None else now) else None

    def valid(self, value: str, now: float | None = None) -> bool:
        """Whether ``value`` is a live session: signed here, not expired, not signed out.

        Raises:
            redis.RedisError: Redis does not answer.
        """
        nonce = self.signed(value, now)
        return nonce is not None and bool(self._client.exists(self._keys.viewer_session(nonce)))

    def end(self, value: str) -> None:
        """Sign the session of cookie ``value`` out: it is refused from now on (nothing if it is
        no session of this service)."""
        nonce = self.signed(value)
        if nonce is not None:
            self._client.delete(self._keys.viewer_session(nonce))

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def set_cookie(self, value: str, secure: bool) -> str:
        """The ``Set-Cookie`` header of a session (``secure``: the page came over https)."""
        return f"{COOKIE}={value}; Max-Age={self.session_s}; Path=/; HttpOnly; SameSite=Strict" + (
            "; Secure" if secure else ""
        )


# KEYS: the address's counter. ARGV: the window in seconds. (EXPIRE ... NX needs Redis 7.)
_COUNT_FAILURE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class LoginThrottle:
    """Failed sign-ins per client address: at most ``failures`` in ``window_s`` seconds.

    A fixed window in Redis (shared by every API process): the first failure starts it, and an
    address that used up its failures is refused until it ends, the right token included, so that
    guessing costs a window per few tries. A successful sign-in clears the address's count.
    """

    def __init__(
        self, client: redis.Redis, keys: Keys, failures: int = LOGIN_FAILURES, window_s: int = LOGIN_WINDOW_S
    ) -> None:
        self._client = client
        self._keys = keys
        self.failures = failures
        self.window_s = window_s

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None if it may now."""
        key = self._keys.login_failures(address)
        pipe = self._client.pipeline(transaction=False)
        pipe.get(key)
        pipe.ttl(key)
        count, ttl = pipe.execute()
        if count is None or int(count) < self.failures:
            return None
        return max(1, int(ttl)) if int(ttl) > 0 else 1

    def failed(self, address: str) -> None:
        """Count a failed sign-in of ``address`` (the first one starts the window)."""
        self._client.eval(_COUNT_FAILURE, 1, self._keys.login_failures(address), self.window_s)

    def succeeded(self, address: str) -> None:
        self._client.delete(self._keys.login_failures(address))


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
    method is GET or HEAD (403 otherwise). A session is looked up in Redis: 503 when it does not
    answer.
    """

    def __init__(self, app: ASGIApp, token: str, sessions: Sessions, login_page: bytes = b"") -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.sessions = sessions
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
        if cookie is not None:
            try:
                valid = await run_in_threadpool(self.sessions.valid, cookie)
            except redis.RedisError as exc:
                error_id = logged(f"{scope.get('method')} {path}: session lookup failed", exc)
                detail = unavailable("service unavailable: its Redis does not answer", error_id)
                await send_json(send, 503, detail, [(b"retry-after", b"5")])
                return
            if valid:
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
