"""The job hash: a job's spec, status, progress and timestamps, and the index of all jobs."""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from pipeline.errors import InvalidInputError, JobError
from pipeline.streams.connection import redis_errors
from pipeline.streams.keys import Keys, validate_job_id
from pipeline.streams.wire import WIRE_VERSION, as_text, encode_event

# Creates the hash only if absent, indexes it and appends the first status event, atomically.
# KEYS: job hash, jobs index, events stream. ARGV: job id, created time, n, n hash args, event args.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + n))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 4 + n))
return 1
"""

# Updates fields of an existing hash (never creates one); with a second key, appends an event.
# KEYS: job hash [, events stream]. ARGV: n, n hash args [, event args].
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2, 1 + n))
if #KEYS > 1 then redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2 + n)) end
return 1
"""

# _UPDATE for a job's last status, which must be written even when Redis is out of memory
# (maxmemory with noeviction refuses HSET and XADD). Redis lets a script that has written once go
# on writing (so that it never stops half done), and DEL is allowed when out of memory: so this
# first deletes the job's control stream, which an ended job no longer reads (a job run again
# reads only commands sent after it starts), then writes as _UPDATE does (a few hundred bytes).
# KEYS: job hash, events stream, control stream. ARGV: as _UPDATE's.
_END = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3])
local n = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2, 1 + n))
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2 + n))
return 1
"""


class JobStatus(str, Enum):
    """Where a job is in its life. ``succeeded``, ``failed`` and ``cancelled`` are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True when no more frames will be published (unless the job is resumed)."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

    @classmethod
    def parse(cls, value: object) -> JobStatus:
        """The status named by ``value``; :class:`InvalidInputError` listing the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            raise InvalidInputError(f"job status must be one of {choices}, got {value!r}") from None


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of one job hash.

    Attributes:
        job_id: the job's id.
        spec: the job spec as given to :meth:`JobStore.create` (a JSON object).
        status: the current status.
        frames_done: frames processed and published so far.
        frames_total: frames the job will process, or None if unknown (live sources, unknown length).
        last_frame: index of the last frame published, or None before the first.
        error: the error of a failed (or cancelled) job, else None.
        created: epoch seconds the job was created.
        started: epoch seconds it last entered ``running``, or None.
        finished: epoch seconds it last entered a terminal status, or None (cleared when it runs again).
        updated: epoch seconds of the last change to the hash.
    """

    job_id: str
    spec: dict[str, Any]
    status: JobStatus
    frames_done: int
    frames_total: int | None
    last_frame: int | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    updated: float


class JobStore:
    """Reads and writes job hashes (``{prefix}job:{id}``) and the jobs index.

    Every status change also appends a ``status`` event (``detail`` = the new status, ``data.error``
    when an error is given) to the job's events stream, in the same atomic step.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._create = client.register_script(_CREATE)
        self._update = client.register_script(_UPDATE)
        self._end = client.register_script(_END)

    @property
    def client(self) -> redis.Redis:
        """The Redis client this store uses."""
        return self._client

    @property
    def keys(self) -> Keys:
        """The key names this store uses."""
        return self._keys

    def create(self, job_id: str, spec: Mapping[str, Any], total_frames: int | None = None) -> JobInfo:
        """Create a ``queued`` job.

        Args:
            job_id: the new job's id (see :func:`~pipeline.streams.keys.validate_job_id`).
            spec: the job spec; stored as JSON, so it must be JSON-serialisable.
            total_frames: frames the job will process, or None if unknown.

        Raises:
            JobError: a job with this id exists already.
            InvalidInputError: bad id, spec not JSON-serialisable, or negative total.
        """
        validate_job_id(job_id)
        try:
            spec_json = json.dumps(dict(spec), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"job spec must be JSON-serialisable: {e}") from None
        if total_frames is not None:
            _check_count(total_frames, "total frames")
        now = time.time()
        hash_fields = {
            "v": str(WIRE_VERSION),
            "spec": spec_json,
            "status": JobStatus.QUEUED.value,
            "frames_done": "0",
            "frames_total": "" if total_frames is None else str(total_frames),
            "last_frame": "",
            "error": "",
            "created": repr(now),
            "started": "",
            "finished": "",
            "updated": repr(now),
        }
        event = encode_event("status", time_s=now, detail=JobStatus.QUEUED.value)
        args: builtins.list[str | int] = [job_id, repr(now), 2 * len(hash_fields)]
        args += [*_flat(hash_fields), *_flat(event)]
        keys = [self._keys.job(job_id), self._keys.jobs_index(), self._keys.events(job_id)]
        with redis_errors(f"creating job {job_id!r}"):
            created = self._create(keys=keys, args=args)
        if not created:
            raise JobError(f"job {job_id!r} exists already")
        return self.get(job_id)

    def set_status(self, job_id: str, status: JobStatus | str, error: str | None = None) -> None:
        """Set a job's status, stamp ``started``/``finished``, and append a ``status`` event.

        Any transition is allowed (a failed or cancelled job may be resumed: ``running`` again).
        ``error`` replaces the stored error; leaving it None clears it. A terminal status is
        written even when Redis is out of memory (see ``_END``); it deletes the control stream.

        Raises:
            JobError: no such job.
            InvalidInputError: ``status`` is not a :class:`JobStatus` value.
        """
        status = JobStatus.parse(status)
        now = repr(time.time())
        fields = {"status": status.value, "error": error or "", "updated": now}
        if status is JobStatus.RUNNING:
            fields.update(started=now, finished="")
        elif status.terminal:
            fields["finished"] = now
        event = encode_event(
            "status", time_s=float(now), detail=status.value, data={"error": error} if error else None
        )
        what = f"setting job {job_id!r} to {status.value}"
        self._write(job_id, fields, event, what, end=status.terminal)

    def progress(self, job_id: str, frames_done: int, last_frame: int | None) -> None:
        """Record how far a job got.

        Args:
            job_id: the job.
            frames_done: frames processed and published so far.
            last_frame: index of the last frame published, or None if none yet.

        Raises:
            JobError: no such job.
        """
        _check_count(frames_done, "frames done")
        if last_frame is not None:
            _check_count(last_frame, "last frame")
        fields = {
            "frames_done": str(frames_done),
            "last_frame": "" if last_frame is None else str(last_frame),
            "updated": repr(time.time()),
        }
        self._write(job_id, fields, None, f"recording progress of job {job_id!r}")

    def set_total(self, job_id: str, total_frames: int | None) -> None:
        """Record how many frames the job will process (learnt once its source is open)."""
        if total_frames is not None:
            _check_count(total_frames, "total frames")
        fields = {"frames_total": "" if total_frames is None else str(total_frames)}
        self._write(job_id, fields, None, f"recording the length of job {job_id!r}")

    def get(self, job_id: str) -> JobInfo:
        """The job's current state.

        Raises:
            JobError: no such job (naming the id).
        """
        key = self._keys.job(job_id)
        with redis_errors(f"reading job {job_id!r}"):
            raw = self._client.hgetall(key)
        if not raw:
            raise JobError(f"no job {job_id!r} (no hash at {key})")
        return _job_info(job_id, raw)

    def exists(self, job_id: str) -> bool:
        """Whether the job's hash exists."""
        with redis_errors(f"reading job {job_id!r}"):
            return bool(self._client.exists(self._keys.job(job_id)))

    def list(self) -> builtins.list[JobInfo]:
        """Every indexed job whose hash still exists, oldest first."""
        with redis_errors("listing jobs"):
            members: Any = self._client.zrange(self._keys.jobs_index(), 0, -1)
            ids = [as_text(i) for i in members]
            pipe = self._client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self._keys.job(job_id))
            hashes = pipe.execute()
        return [_job_info(job_id, raw) for job_id, raw in zip(ids, hashes, strict=True) if raw]

    def record_dropped(self, job_id: str, dropped: int) -> None:
        """Record how many frames a live job has dropped so far (hash field ``dropped``)."""
        _check_count(dropped, "dropped frames")
        self._write(
            job_id,
            {"dropped": str(dropped), "updated": repr(time.time())},
            None,
            f"recording drops of {job_id!r}",
        )

    def record_placement(self, job_id: str, source_host: int, tracker_host: int) -> None:
        """Record which source host and tracker host of its driver run the job (for operators)."""
        fields = {"source_host": str(source_host), "tracker_host": str(tracker_host)}
        self._write(job_id, fields, None, f"recording where job {job_id!r} runs")

    def record_dropped_many(self, dropped: Mapping[str, int]) -> None:
        """:meth:`record_dropped` for many jobs in one round trip (jobs gone meanwhile are skipped)."""
        if not dropped:
            return
        now = repr(time.time())
        pipe = self._client.pipeline(transaction=False)
        for job_id, count in dropped.items():
            _check_count(count, "dropped frames")
            fields = {"dropped": str(count), "updated": now}
            args: builtins.list[str | int] = [2 * len(fields), *_flat(fields)]
            self._update(keys=[self._keys.job(job_id)], args=args, client=pipe)
        with redis_errors("recording drops"):
            pipe.execute()

    def _write(
        self, job_id: str, fields: dict[str, str], event: dict[str, str] | None, what: str, end: bool = False
    ) -> None:
        keys = [self._keys.job(job_id)]
        args: builtins.list[str | int] = [2 * len(fields), *_flat(fields)]
        if event is not None:
            keys.append(self._keys.events(job_id))
            args.extend(_flat(event))
        script = self._update
        if end and event is not None:
            keys.append(self._keys.control(job_id))
            script = self._end
        with redis_errors(what):
            done = script(keys=keys, args=args)
        if not done:
            raise JobError(f"no job {job_id!r} (no hash at {keys[0]})")


def _job_info(job_id: str, raw: Mapping[Any, Any]) -> JobInfo:
    f = {as_text(k): as_text(v) for k, v in raw.items()}

    def opt_int(name: str) -> int | None:
        return int(f[name]) if f.get(name) else None

    def opt_float(name: str) -> float | None:
        return float(f[name]) if f.get(name) else None

    try:
        return JobInfo(
            job_id=job_id,
            spec=json.loads(f.get("spec") or "{}"),
            status=JobStatus.parse(f.get("status")),
            frames_done=int(f.get("frames_done") or 0),
            frames_total=opt_int("frames_total"),
            last_frame=opt_int("last_frame"),
            error=f.get("error") or None,
            created=float(f["created"]),
            started=opt_float("started"),
            finished=opt_float("finished"),
            updated=float(f.get("updated") or f["created"]),
        )
    except (KeyError, ValueError) as e:
        raise JobError(f"job {job_id!r} has a malformed hash: {type(e).__name__}: {e}") from None


def _check_count(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"{what} must be an int >= 0, got {value!r}")


def _flat(fields: Mapping[str, str]) -> builtins.list[str]:
    return [item for pair in fields.items() for item in pair]
