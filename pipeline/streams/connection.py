"""Connecting to Redis from a URL, with one-line errors that never show the password."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import SplitResult, unquote, urlsplit

import redis

from pipeline.errors import InvalidInputError, RedisUnavailableError

SCHEMES = ("redis", "rediss", "unix")


def connect(url: str, timeout_s: float = 5) -> redis.Redis:
    """Open a client for ``url`` and check it with one PING.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS) or
            ``unix://[[user]:password@]/path/to/socket[?db=N]``. Query options of redis-py's
            ``from_url`` (e.g. ``ssl_cert_reqs``) pass through.
        timeout_s: seconds allowed to connect and for any one reply; blocking reads in
            :mod:`pipeline.streams.reader` wait in shorter slices so they never hit it.

    Returns:
        A client that returns ``str`` (``decode_responses=True``).

    Raises:
        InvalidInputError: the URL has another scheme or cannot be parsed.
        RedisUnavailableError: the server cannot be reached or refuses the credentials; the message
            is one line naming ``host:port`` (or the socket path) and never the password.
    """
    parts = _split(url)
    where = describe(url)
    if timeout_s <= 0:
        raise InvalidInputError(f"Redis timeout must be > 0 seconds, got {timeout_s}")
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, decode_responses=True
        )
    except ValueError as e:
        raise InvalidInputError(f"invalid Redis URL for {where}: {_scrub(str(e), parts)}") from None
    try:
        client.ping()
    except redis.RedisError as e:
        client.close()
        raise RedisUnavailableError(
            f"cannot use Redis at {where}: {_scrub(_reason(e), parts)}"
        ) from None  # the chained exception could carry the URL
    return client


def describe(url: str) -> str:
    """Where ``url`` points, for messages: ``host:port/db`` or the socket path, without credentials."""
    parts = _split(url)
    if parts.scheme == "unix":
        return parts.path or "(no socket path)"
    try:
        port = parts.port or 6379
    except ValueError:
        port_text = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise InvalidInputError(f"Redis URL has an invalid port {port_text!r}") from None
    db = parts.path.strip("/") or "0"
    tls = " (TLS)" if parts.scheme == "rediss" else ""
    return f"{parts.hostname or 'localhost'}:{port}/{db}{tls}"


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, safe to print or log."""
    parts = _split(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Turn a lost connection inside the block into :class:`RedisUnavailableError` (one line).

    Args:
        what: what was being done, e.g. ``"publishing frame 12 of job 'a'"``.
    """
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise RedisUnavailableError(f"Redis failed while {what}: {_reason(e)}") from e


def _split(url: str) -> SplitResult:
    if not isinstance(url, str):
        raise InvalidInputError(f"Redis URL must be a string, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise InvalidInputError(
            f"Redis URL must start with redis://, rediss:// or unix://, got scheme {parts.scheme!r}"
        )
    return parts


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"


def _scrub(text: str, parts: SplitResult) -> str:
    if parts.password:
        for secret in {parts.password, unquote(parts.password)}:
            text = text.replace(secret, "***")
    return text
