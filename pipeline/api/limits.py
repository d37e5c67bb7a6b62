"""The API's limits: request body size (an ASGI middleware), tracks per job (a Redis set), and
active jobs (a count of the job store, made and acted on under a lock in Redis).

The numbers themselves are :class:`~pipeline.api.settings.ApiSettings` fields (``samstream serve``
options).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.internal import WatchedSend, send_json
from pipeline.errors import RedisUnavailableError
from pipeline.streams.connection import redis_errors
from pipeline.streams.keys import Keys


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, never reading more than that.

    A ``Content-Length`` over the limit is answered before the body is read; a body without one
    (chunked) is counted as it streams in, and the read that passes the limit fails with 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = (
            f"request body over {max_bytes // 1024} KB, the most this service takes (--max-body-kb)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._answer(send, 413 if length.isdigit() else 400, length)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI lets an HTTPException raised while reading the body through as it is.
                    raise HTTPException(413, self.message)
            return message

        watched = WatchedSend(send)
        try:
            await self.app(scope, counted, watched)
        except HTTPException as exc:
            if watched.started or exc.status_code != 413:
                raise
            await self._answer(send, 413, None)

    async def _answer(self, send: Send, status: int, length: str | None) -> None:
        detail = self.message if status == 413 else f"Content-Length must be a number, got {length!r}"
        await send_json(send, status, detail)


# Seeds the set with the spec's tracks the first time (``0`` keeps it alive when every track is
# removed, so it is never seeded again), then takes or frees the slot of one track.
# KEYS: the job's track set. ARGV: 'add' or 'remove', track id, most tracks, spec track ids...
# Returns {1 if done else 0, tracks counted now}.
_SLOTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SADD', KEYS[1], '0', unpack(ARGV, 4)) end
if ARGV[1] == 'remove' then
  redis.call('SREM', KEYS[1], ARGV[2])
  return {1, redis.call('SCARD', KEYS[1]) - 1}
end
local n = redis.call('SCARD', KEYS[1]) - 1
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then return {1, n} end
if n >= tonumber(ARGV[3]) then return {0, n} end
redis.call('SADD', KEYS[1], ARGV[2])
return {1, n + 1}
"""


class TrackSlots:
    """The tracks of each job, counted in Redis so that concurrent requests (in any number of API
    processes) cannot take a job past its limit: the spec's tracks, plus those added through the
    API, less those removed through it.

    A track that the job itself drops (its prompt did not fit a frame) keeps its slot until it is
    removed through the API: the count errs on the side of the limit.
    """

    def __init__(self, client: redis.Redis, keys: Keys, max_tracks: int) -> None:
        self.keys = keys
        self.max_tracks = max_tracks
        self._script = client.register_script(_SLOTS)

    def take(self, job_id: str, track: int, spec_tracks: Iterable[int]) -> tuple[bool, int]:
        """Count ``track`` in (a track counted already takes no second slot).

        Returns:
            (whether it fits, how many tracks the job has counted now).
        """
        return self._run("add", job_id, track, spec_tracks)

    def free(self, job_id: str, track: int, spec_tracks: Iterable[int]) -> int:
        """Count ``track`` out; how many tracks are left."""
        return self._run("remove", job_id, track, spec_tracks)[1]

    def _run(self, action: str, job_id: str, track: int, spec_tracks: Iterable[int]) -> tuple[bool, int]:
        args: list[Any] = [action, track, self.max_tracks, *spec_tracks]
        with redis_errors(f"counting the tracks of job {job_id!r}"):
            done, count = self._script(keys=[self.keys.tracks(job_id)], args=args)
        return bool(done), int(count)


def spec_track_ids(spec: dict[str, Any]) -> list[int]:
    """The ids of the tracks a stored job spec starts with."""
    return [int(t["id"]) for t in spec.get("tracks", []) if isinstance(t, dict) and "id" in t]


# Deletes the lock only if it is still this holder's (it may have expired and been taken since).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CreationLock:
    """One count-then-create at a time over every API process of a service (they share Redis):
    without it, two processes that both count ``max_jobs - 1`` active jobs would both create one.

    The lock is a Redis key set only if absent, with a token and an expiry (``hold_s``: a process
    that dies holding it does not block the others for longer), released only by its holder.

    Args:
        hold_s: most seconds a holder keeps it (a count and a create take milliseconds).
        wait_s: most seconds a request waits for it.
    """

    def __init__(self, client: redis.Redis, keys: Keys, hold_s: float = 10.0, wait_s: float = 5.0) -> None:
        self.client = client
        self.key = keys.creating()
        self.hold_s = hold_s
        self.wait_s = wait_s
        self._release = client.register_script(_RELEASE)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block.

        Raises:
            RedisUnavailableError: Redis fails, or the lock stays taken for ``wait_s``.
        """
        token = secrets.token_hex(16)
        deadline = time.monotonic() + self.wait_s
        pause = 0.002
        with redis_errors("taking the job creation lock"):
            while not self.client.set(self.key, token, nx=True, px=int(self.hold_s * 1000)):
                if time.monotonic() >= deadline:
                    raise RedisUnavailableError(
                        f"another API process held the job creation lock for {self.wait_s:g} s"
                    )
                time.sleep(pause)
                pause = min(2 * pause, 0.05)
        try:
            yield
        finally:
            with contextlib.suppress(redis.RedisError):  # it expires by itself
                self._release(keys=[self.key], args=[token])
