"""Connecting to Redis from a URL, with one-line errors that never show the password."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from pipeline.errors import InvalidInputError, RedisUnavailableError

SCHEMES = ("redis", "rediss", "unix")
# How long the workers of a job retry Redis when it is unreachable or refuses writes for now.
DEFAULT_RETRY_S = 30.0
# Replies of a Redis that is up but refuses for now: out of memory (maxmemory with noeviction),
# a replica (failover under way), a failed snapshot (MISCONF), loading its data, a master down.
REFUSALS = ("OOM command not allowed", "READONLY", "MISCONF", "LOADING", "MASTERDOWN")
T = TypeVar("T")


# redis-py takes these codes off the message and raises a class of its own for them.
_CODES = {
    redis.exceptions.OutOfMemoryError: "OOM",
    redis.exceptions.ReadOnlyError: "READONLY",
    redis.exceptions.BusyLoadingError: "LOADING",
}


def refusal(error: BaseException) -> str | None:
    """Redis's refusal-for-now in ``error`` (see :data:`REFUSALS`) as one line from its code on
    (``OOM command not allowed when used memory > 'maxmemory'.``); None for any other error."""
    text = " ".join(str(error).split())
    for kind, code in _CODES.items():
        if isinstance(error, kind):
            return f"{code} {text}"
    if isinstance(error, redis.ResponseError):  # a script's error carries the refusal inside
        for r in REFUSALS:
            at = text.find(r)
            if at >= 0:
                return text[at:]
    return None


def refused(error: BaseException) -> bool:
    """Whether ``error`` is Redis refusing for now (see :data:`REFUSALS`), worth trying again."""
    return refusal(error) is not None


class BudgetRetry(Retry):
    """redis-py's retry bounded by time, not by count: a command whose connection is lost or
    refused, or that Redis refuses for now (:func:`refused`), is tried again with backoff (0.1 s
    doubling to 2 s) until ``budget_s`` after the *outage* began, then its last error is raised.

    An outage begins with a failure and ends when a failed call goes through, or after
    ``QUIET_S`` without failures. Every call of the client shares it (redis-py copies the retry
    into each connection: the copy is this object), so Redis refusing for good fails a job after
    ``budget_s`` however many calls were waiting, not after ``budget_s`` each. redis-py nests
    retries (connecting inside a command): only the outermost one retries.
    """

    QUIET_S = 5.0
    _depth = threading.local()

    def __init__(self, budget_s: float) -> None:
        if not budget_s >= 0:
            raise InvalidInputError(f"Redis retry time must be >= 0 seconds, got {budget_s}")
        errors = (redis.ConnectionError, redis.TimeoutError, socket.timeout, redis.ResponseError)
        super().__init__(ExponentialBackoff(cap=2.0, base=0.1), -1, errors)
        self.budget_s = budget_s
        self._lock = threading.Lock()
        self._since: float | None = None  # when the outage began
        self._last = 0.0  # the last failure

    def __deepcopy__(self, memo: dict[int, Any]) -> BudgetRetry:
        return self  # one outage clock for every connection

    def failed(self) -> float:
        """A call failed: the seconds left of the outage's budget (<= 0: give up)."""
        now = time.monotonic()
        with self._lock:
            if self._since is None or now - self._last > self.QUIET_S:
                self._since = now
            self._last = now
            return self._since + self.budget_s - now

    def recovered(self) -> None:
        """A call that had failed went through: the outage is over."""
        with self._lock:
            self._since = None

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        depth = getattr(self._depth, "n", 0)
        self._depth.n = depth + 1
        try:
            failures = 0
            while True:
                try:
                    result = do()
                except self._supported_errors as error:
                    if isinstance(error, redis.ResponseError) and not refused(error):
                        raise  # a wrong command or script: trying again changes nothing
                    if is_retryable is not None and not is_retryable(error):
                        raise
                    failures += 1
                    fail(error, failures) if with_failure_count else fail(error)
                    left = self.failed()
                    if depth or left <= 0:
                        raise
                    time.sleep(min(self._backoff.compute(failures), left))
                else:
                    if failures:
                        self.recovered()
                    return result
        finally:
            self._depth.n = depth


def retry_of(client: redis.Redis) -> BudgetRetry | None:
    """The client's :class:`BudgetRetry` (None when it was connected without ``retry_s``)."""
    retry = client.get_retry()
    return retry if isinstance(retry, BudgetRetry) else None


def connect(url: str, timeout_s: float = 5, retry_s: float | None = None) -> redis.Redis:
    """Open a client for ``url`` and check it with one PING.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS) or
            ``unix://[[user]:password@]/path/to/socket[?db=N]``. Query options of redis-py's
            ``from_url`` (e.g. ``ssl_cert_reqs``) pass through.
        timeout_s: seconds allowed to connect and for any one reply; blocking reads in
            :mod:`pipeline.streams.results` wait in shorter slices so they never hit it.
        retry_s: retry every command whose connection fails, or that Redis refuses for now (out
            of memory, read-only, MISCONF, loading), with backoff for this long (see
            :class:`BudgetRetry`): what a job's workers pass, so that a Redis restart or a short
            refusal does not fail the job. None: redis-py's few quick retries (API requests
            answer 503 at once). The first PING is not retried: a wrong URL fails at once.

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
    if retry_s is not None:
        client.set_retry(BudgetRetry(retry_s))
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


def redact_redis_url(url: str) -> str:
    """The Redis ``url`` with its password replaced by ``***``, safe to print or log (a source's
    URL is :func:`pipeline.sources.opening.redact`'s: it hides the query too)."""
    parts = _split(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Turn a lost connection, or Redis refusing for now (:func:`refused`: out of memory,
    read-only…), inside the block into :class:`RedisUnavailableError` (one line).

    Args:
        what: what was being done, e.g. ``"publishing frame 12 of job 'a'"``.
    """
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise RedisUnavailableError(f"Redis failed while {what}: {_reason(e)}") from e
    except redis.ResponseError as e:
        if not refused(e):
            raise
        raise RedisUnavailableError(f"Redis refused {what}: {refusal(e)}") from e


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
