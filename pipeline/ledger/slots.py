"""The limits a job's record keeps in Redis, for every API process of a service at once: the tracks
of each job (``serve --max-tracks``, one atomic script) and the lock under which a live stream is
admitted by capacity and created (``serve --admission capacity``). ``--max-jobs`` is counted by the
script that creates a job (:meth:`~pipeline.ledger.record.JobStore.create`)."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis

from pipeline.errors import RedisUnavailableError
from pipeline.streams.connection import redis_errors
from pipeline.streams.keys import Keys

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
    """The slots a stored job spec takes from the start: its tracks' ids, and one negative id per
    track its discovery may start (``discover``'s ``max_tracks``), held for them."""
    ids = [int(t["id"]) for t in spec.get("tracks", []) if isinstance(t, dict) and "id" in t]
    discover = spec.get("discover")
    if isinstance(discover, dict):
        ids += [-(i + 1) for i in range(int(discover.get("max_tracks") or 0))]
    return ids


# Deletes the lock only if it is still this holder's (it may have expired and been taken since).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CreationLock:
    """One admit-then-create at a time over every API process of a service (they share Redis):
    without it, two processes that both find room for one more live stream would both create one.

    The lock is a Redis key set only if absent, with a token and an expiry (``hold_s``: a process
    that dies holding it does not block the others for longer), released only by its holder.

    Args:
        hold_s: most seconds a holder keeps it (an admission and a create take milliseconds).
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
