"""The job hash: a job's spec, status, progress and timestamps, and the index of all jobs."""

from __future__ import annotations

import builtins
import json
import logging
import math
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis

from pipeline.errors import InvalidInputError, JobError, TooManyJobsError
from pipeline.streams.connection import redis_errors
from pipeline.streams.keys import Keys, validate_job_id
from pipeline.streams.retention import DEFAULT_KEEP_S, EVENTS_MAXLEN, check_keep
from pipeline.streams.wire import WIRE_VERSION, as_text, encode_event

_log = logging.getLogger(__name__)

# Creates the hash only if absent and only within the most active jobs given, indexes it, adds it to
# the set of active jobs and appends the first status event, atomically: API processes side by side
# can never pass --max-jobs together. The active set holds the ids of queued and running jobs (and
# '', so that it outlives its last job): ids whose job has ended or gone are dropped here, when
# counted; a store written before the set existed has it seeded from the index once. It reads the
# hashes of the jobs it counts (a standalone Redis; not a cluster's hash slots).
# KEYS: job hash, jobs index, events stream, active set. ARGV: job id, created time, events maxlen,
# most active (-1: no limit), job hash key prefix, n, n hash args, event args.
# Returns {1, active} (created), {0, active} (the id exists) or {-1, active} (the limit is reached).
_CREATE = """
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('SADD', KEYS[4], '')
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do redis.call('SADD', KEYS[4], id) end
end
local active = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if id ~= '' then
    local s = redis.call('HGET', ARGV[5] .. id, 'status')
    if s == 'queued' or s == 'running' then active = active + 1 else redis.call('SREM', KEYS[4], id) end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, active} end
local most = tonumber(ARGV[4])
if most >= 0 and active >= most then return {-1, active} end
local n = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], unpack(ARGV, 7, 6 + n))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 7 + n))
return {1, active + 1}
"""

# Updates fields of an existing hash (never creates one). KEYS: job hash. ARGV: n, n hash args.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2, 1 + tonumber(ARGV[1])))
return 1
"""

# A status change: the hash's fields, a status event, and the job's keys' life: a terminal status
# gives every key of the job the TTL in the hash's keep_s (none: kept), any other status takes the
# TTL away again (a resumed job must not lose its keys half-way).
# A job's last status must be written even when Redis is out of memory (maxmemory with noeviction
# refuses HSET and XADD). Redis lets a script that has written once go on writing (so that it never
# stops half done), and DEL is allowed when out of memory: so a terminal status first deletes the
# job's control stream, which an ended job no longer reads (a job run again reads only commands
# sent after it starts), then writes a few hundred bytes.
# The change is made only from a status in the allowed list (the state machine's, see
# TRANSITIONS, narrowed by the caller); read before the first write, so a refusal writes nothing.
# The set of active jobs (see _CREATE), where it exists, gains a job that runs again and loses one
# that ends.
# KEYS: the job's keys in Keys.of_job's order: hash, masks, events, control, state, tracks, preview.
# ARGV: n, n hash args, terminal ('1' or '0'), events maxlen, allowed from (',a,b,'), the active
# set's key, job id, event args.
# Returns 1 (written), 0 (no hash) or the status the job has (refused).
_STATUS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[1])
local now = redis.call('HGET', KEYS[1], 'status') or ''
if not string.find(ARGV[4 + n], ',' .. now .. ',', 1, true) then return now end
if ARGV[2 + n] == '1' then redis.call('DEL', KEYS[4]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 2, 1 + n))
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3 + n], '*', unpack(ARGV, 7 + n))
if redis.call('EXISTS', ARGV[5 + n]) == 1 then
  if ARGV[2 + n] == '1' then redis.call('SREM', ARGV[5 + n], ARGV[6 + n])
  else redis.call('SADD', ARGV[5 + n], ARGV[6 + n]) end
end
local keep = nil
if ARGV[2 + n] == '1' then keep = tonumber(redis.call('HGET', KEYS[1], 'keep_s')) end
for i = 1, #KEYS do
  if keep then redis.call('EXPIRE', KEYS[i], keep) else redis.call('PERSIST', KEYS[i]) end
end
return 1
"""

# Deletes every key of a job that is not queued or running, and its index entry.
# KEYS: jobs index, then the job's keys (hash first). ARGV: job id.
# Returns the status of a job that may not go, else 1 (deleted) or 0 (there was no hash).
_DELETE = """
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'queued' or status == 'running' then return status end
local existed = redis.call('EXISTS', KEYS[2])
redis.call('DEL', unpack(KEYS, 2))
redis.call('ZREM', KEYS[1], ARGV[1])
return existed
"""

# Drops index entries whose hash has gone (expired or deleted), with whatever keys of theirs were
# written after the TTL was set. Checked here, atomically: a job made again meanwhile stays.
# KEYS: jobs index, then the same number of keys per job (Keys.of_job, hash first). ARGV: the job ids.
_PRUNE = """
local gone = 0
local per = (#KEYS - 1) / #ARGV
for i = 1, #ARGV do
  local first = 2 + per * (i - 1)
  if redis.call('EXISTS', KEYS[first]) == 0 then
    redis.call('DEL', unpack(KEYS, first, first + per - 1))
    redis.call('ZREM', KEYS[1], ARGV[i])
    gone = gone + 1
  end
end
return gone
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


# The job's state machine, written once: the statuses each status may be entered from. Every
# other change is refused (JobStore.set_status logs it and writes nothing).
# - running: a queued job starts; a running one is taken up again after its driver stopped
#   (restart, resume); a failed or cancelled one runs again when asked (``run`` with its id).
# - an ending (succeeded, failed, cancelled) comes once, to a queued or running job: the first
#   ending wins (a job cancelled while its driver ends it keeps the first one written).
# - succeeded is final: a job that succeeded never runs again.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(),  # only by creating the job
    JobStatus.RUNNING: frozenset(
        {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset({JobStatus.RUNNING}),  # only a job that ran succeeds
    JobStatus.FAILED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING}),
}


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
        keep_s: seconds its keys are kept once it has ended; None: kept until deleted.
        dropped: a live job's frames skipped to keep its latency bounded.
        requested_fps, delivered_fps, capacity_bound: a live job's rates, as the driver last
            measured them (None: not yet).
        image_size: the size a live job's frames are encoded at now (an ``auto`` stream's moves;
            None: not written yet, the spec's).
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
    keep_s: int | None = None
    dropped: int = 0
    requested_fps: float | None = None
    delivered_fps: float | None = None
    capacity_bound: bool = False
    image_size: int | None = None

    @property
    def expires(self) -> float | None:
        """Epoch seconds at which the job's keys expire: None while it runs or if kept for ever."""
        if not self.status.terminal or self.finished is None or self.keep_s is None:
            return None
        return self.finished + self.keep_s


class JobStore:
    """Reads and writes job hashes (``{prefix}job:{id}``) and the jobs index.

    Every status change also appends a ``status`` event (``detail`` = the new status, ``data.error``
    when an error is given) to the job's events stream, in the same atomic step; the events stream
    is trimmed to about :data:`~pipeline.streams.retention.EVENTS_MAXLEN` entries. A terminal status
    gives every key of the job (:meth:`Keys.of_job`) the TTL of its ``keep_s``, in that same step.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._create = client.register_script(_CREATE)
        self._update = client.register_script(_UPDATE)
        self._status = client.register_script(_STATUS)
        self._delete = client.register_script(_DELETE)
        self._prune = client.register_script(_PRUNE)

    @property
    def client(self) -> redis.Redis:
        """The Redis client this store uses."""
        return self._client

    @property
    def keys(self) -> Keys:
        """The key names this store uses."""
        return self._keys

    def create(
        self,
        job_id: str,
        spec: Mapping[str, Any],
        total_frames: int | None = None,
        keep_s: int | None = DEFAULT_KEEP_S,
        most_active: int | None = None,
    ) -> JobInfo:
        """Create a ``queued`` job, within ``most_active`` queued and running jobs when given.

        The count and the create are one atomic step in Redis: processes creating jobs side by side
        (API processes of one service) never pass the limit together.

        Args:
            job_id: the new job's id (see :func:`~pipeline.streams.keys.validate_job_id`).
            spec: the job spec; stored as JSON, so it must be JSON-serialisable.
            total_frames: frames the job will process, or None if unknown.
            keep_s: seconds its keys are kept once it has ended (hash field ``keep_s``); None: until
                deleted.
            most_active: the most jobs queued or running at once, this one included (``serve
                --max-jobs``); None: no limit.

        Raises:
            TooManyJobsError: ``most_active`` jobs are queued or running already.
            JobError: a job with this id exists already.
            InvalidInputError: bad id, spec not JSON-serialisable, negative total or bad keep.
        """
        validate_job_id(job_id)
        check_keep(keep_s)
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
            "keep_s": _keep_field(keep_s),
        }
        event = encode_event("status", time_s=now, detail=JobStatus.QUEUED.value)
        most = -1 if most_active is None else most_active
        hash_prefix = self._keys.job(job_id)[: -len(job_id)]
        args: builtins.list[str | int] = [job_id, repr(now), EVENTS_MAXLEN, most, hash_prefix]
        args += [2 * len(hash_fields), *_flat(hash_fields), *_flat(event)]
        keys = [self._keys.job(job_id), self._keys.jobs_index(), self._keys.events(job_id)]
        keys.append(self._keys.active_jobs())
        with redis_errors(f"creating job {job_id!r}"):
            reply: Any = self._create(keys=keys, args=args)
        done, active = int(reply[0]), int(reply[1])
        if done == 0:
            raise JobError(f"job {job_id!r} exists already")
        if done < 0:
            raise TooManyJobsError(active, most)
        return self.get(job_id)

    def set_status(
        self,
        job_id: str,
        status: JobStatus | str,
        error: str | None = None,
        *,
        only_from: Collection[JobStatus] | None = None,
    ) -> bool:
        """Move a job to ``status``, stamp ``started``/``finished``, and append a ``status`` event.

        Only the changes :data:`TRANSITIONS` allows are made, and of those only the ones from
        ``only_from`` when given (e.g. a job is cancelled by the API only while still queued).
        The current status is checked in the same atomic step as the write. A refused change writes
        nothing, is logged, and returns False.

        ``error`` replaces the stored error; leaving it None clears it. A terminal status sets the
        TTL of every key of the job to its ``keep_s``; any other status removes their TTL. A
        terminal status is written even when Redis is out of memory (see ``_STATUS``); it deletes
        the job's control stream, which an ended job no longer reads.

        Returns:
            True when written; False when refused (the job's status did not allow it).

        Raises:
            JobError: no such job.
            InvalidInputError: ``status`` is not a :class:`JobStatus` value.
        """
        status = JobStatus.parse(status)
        allowed = TRANSITIONS[status]
        if only_from is not None:
            allowed = allowed & frozenset(JobStatus.parse(s) for s in only_from)
        now = repr(time.time())
        fields = {"status": status.value, "error": error or "", "updated": now}
        if status is JobStatus.RUNNING:
            fields.update(started=now, finished="")
        elif status.terminal:
            fields["finished"] = now
        event = encode_event(
            "status", time_s=float(now), detail=status.value, data={"error": error} if error else None
        )
        keys = self._keys.of_job(job_id)
        args: builtins.list[str | int] = [2 * len(fields), *_flat(fields)]
        args += ["1" if status.terminal else "0", EVENTS_MAXLEN]
        froms = sorted(s.value for s in allowed)
        args += ["," + ",".join(froms) + ",", self._keys.active_jobs(), job_id, *_flat(event)]
        with redis_errors(f"setting job {job_id!r} to {status.value}"):
            done: Any = self._status(keys=list(keys), args=args)
        if done == 1:
            return True
        if done == 0:
            raise JobError(f"no job {job_id!r} (no hash at {keys[0]})")
        _log.warning(
            "job %s: %s -> %s refused (allowed from: %s)",
            job_id,
            as_text(done) or "(no status)",
            status.value,
            ", ".join(froms) or "none",
        )
        return False

    def set_keep(self, job_id: str, keep_s: int | None) -> None:
        """Keep the job's keys ``keep_s`` seconds (None: until deleted) after it next ends.

        Raises:
            JobError: no such job.
            InvalidInputError: ``keep_s`` is not None or 1 s to 100 years.
        """
        check_keep(keep_s)
        self._write(job_id, {"keep_s": _keep_field(keep_s)}, f"setting how long job {job_id!r} is kept")

    def delete(self, job_id: str) -> bool:
        """Remove every key of a job that has ended, and its index entry, at once.

        Returns:
            True if the job existed; False if it did not (its leftover keys, if any, are gone too).

        Raises:
            JobError: the job is queued or running (cancel it first).
        """
        keys = [self._keys.jobs_index(), *self._keys.of_job(job_id)]
        with redis_errors(f"deleting job {job_id!r}"):
            reply: Any = self._delete(keys=keys, args=[job_id])
        if isinstance(reply, int):
            return bool(reply)
        raise JobError(f"job {job_id!r} is {as_text(reply)}: cancel it first, then delete its data")

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
        self._write(job_id, fields, f"recording progress of job {job_id!r}")

    def set_total(self, job_id: str, total_frames: int | None) -> None:
        """Record how many frames the job will process (learnt once its source is open)."""
        if total_frames is not None:
            _check_count(total_frames, "total frames")
        fields = {"frames_total": "" if total_frames is None else str(total_frames)}
        self._write(job_id, fields, f"recording the length of job {job_id!r}")

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
        """Every indexed job whose hash still exists, oldest first.

        The ids of jobs whose hash has gone (expired) leave the index here, with any keys of theirs
        left over: whatever lists jobs (the API, the metrics, the reconciler) keeps the index clean.
        """
        with redis_errors("listing jobs"):
            members: Any = self._client.zrange(self._keys.jobs_index(), 0, -1)
            ids = [as_text(i) for i in members]
            pipe = self._client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self._keys.job(job_id))
            hashes = pipe.execute()
            gone = [job_id for job_id, raw in zip(ids, hashes, strict=True) if not raw]
            self._forget(gone)
        return [_job_info(job_id, raw) for job_id, raw in zip(ids, hashes, strict=True) if raw]

    def _forget(self, job_ids: builtins.list[str]) -> None:
        """Drop index entries (and leftover keys) of jobs whose hash has gone, a chunk a script."""
        for i in range(0, len(job_ids), 500):
            chunk = job_ids[i : i + 500]
            keys = [self._keys.jobs_index()]
            for job_id in chunk:
                keys += self._keys.of_job(job_id)
            self._prune(keys=keys, args=chunk)

    def record_dropped(self, job_id: str, dropped: int) -> None:
        """Record how many frames a live job has dropped so far (hash field ``dropped``)."""
        _check_count(dropped, "dropped frames")
        self._write(
            job_id,
            {"dropped": str(dropped), "updated": repr(time.time())},
            f"recording drops of {job_id!r}",
        )

    def record_placement(self, job_id: str, source_host: int, tracker_host: int) -> None:
        """Record which source host and tracker host of its driver run the job (for operators)."""
        fields = {"source_host": str(source_host), "tracker_host": str(tracker_host)}
        self._write(job_id, fields, f"recording where job {job_id!r} runs")

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

    def record_capacity(
        self, fps: Mapping[int, float], can_grow: bool, ttl_s: int = 30, track_frames: float | None = None
    ) -> None:
        """What the encoders take at each image size (frames a second), whether their pool may
        grow, and the track-frames a second the tracker hosts take (None: not measured): read by
        admission (:mod:`pipeline.jobs.admission`); gone ``ttl_s`` after the last write."""
        key = self._keys.encoder_capacity()
        mapping: dict[Any, Any] = {str(size): repr(float(v)) for size, v in fps.items()}
        mapping["grow"] = "1" if can_grow else "0"
        if track_frames is not None:
            mapping["track_frames"] = repr(float(track_frames))
        with redis_errors("recording the encoders' capacity"):
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, ttl_s)
            pipe.execute()

    def capacity(self) -> tuple[dict[int, float], bool, float | None] | None:
        """The capacity as last recorded (:meth:`record_capacity`; None: none recorded lately)."""
        with redis_errors("reading the encoders' capacity"):
            raw: Any = self._client.hgetall(self._keys.encoder_capacity())
        if not raw:
            return None
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        fps: dict[int, float] = {}
        for name, value in fields.items():
            try:
                if name.isdigit() and float(value) > 0:
                    fps[int(name)] = float(value)
            except ValueError:
                continue
        try:
            track_frames: float | None = float(fields["track_frames"])
        except (KeyError, ValueError):
            track_frames = None
        if track_frames is not None and not (0 < track_frames < math.inf):
            track_frames = None
        return fps, fields.get("grow") == "1", track_frames

    def record_fields_many(self, fields: Mapping[str, Mapping[str, str]]) -> None:
        """Write the given fields of many jobs' hashes in one round trip (jobs gone are skipped):
        what the driver measures of live jobs (their rates)."""
        if not fields:
            return
        now = repr(time.time())
        pipe = self._client.pipeline(transaction=False)
        for job_id, values in fields.items():
            written = {**values, "updated": now}
            args: builtins.list[str | int] = [2 * len(written), *_flat(written)]
            self._update(keys=[self._keys.job(job_id)], args=args, client=pipe)
        with redis_errors("recording stream rates"):
            pipe.execute()

    def _write(self, job_id: str, fields: dict[str, str], what: str) -> None:
        keys = [self._keys.job(job_id)]
        args: builtins.list[str | int] = [2 * len(fields), *_flat(fields)]
        with redis_errors(what):
            done = self._update(keys=keys, args=args)
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
            keep_s=opt_int("keep_s"),
            dropped=int(f.get("dropped") or 0),
            requested_fps=opt_float("requested_fps"),
            delivered_fps=opt_float("delivered_fps"),
            capacity_bound=f.get("capacity_bound") == "1",
            image_size=opt_int("image_size_now"),
        )
    except (KeyError, ValueError) as e:
        raise JobError(f"job {job_id!r} has a malformed hash: {type(e).__name__}: {e}") from None


def _keep_field(keep_s: int | None) -> str:
    # "" (or no field: jobs written before keep_s existed) keeps the job until it is deleted.
    return "" if keep_s is None else str(keep_s)


def _check_count(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"{what} must be an int >= 0, got {value!r}")


def _flat(fields: Mapping[str, str]) -> builtins.list[str]:
    return [item for pair in fields.items() for item in pair]
