"""A job's results into Redis, exactly once, with the tracker state that lets a restart resume.

One Lua script per frame makes it atomic: the masks entry (XADD with the frame's own ID), the job
hash's progress and the tracker snapshot are written together or not at all. Redis refuses an
entry ID at or below the stream's newest, so a replayed frame changes nothing.

The state is a checkpoint: the decoder passes a snapshot with some frames only (see
:class:`~pipeline.tracking.stage.TrackDecoder`), and a resumed job replays the frames after it.

Exactly-once rests on Redis refusing lower IDs, which cannot catch writes Redis *lost* (a restart
from an older snapshot, a failover to a lagging replica): the stream would simply go on after a
gap. So each script is also told the newest frame the job expects in the stream, and writes
nothing when the stream's newest entry is older: the sink raises :class:`LostEntriesError`, and
the tracker host rewinds the job to the checkpoint Redis still holds (see
:mod:`pipeline.tracking.host`).

The state key holds a JSON header, a newline, then the tracks' logits as raw bytes (256 KB a
track at 1024): as base64 inside the JSON they cost more than all the rest of a frame's
publishing. The header gives each track's logits ``{"blob": [offset, length]}`` into the bytes.
A state written as plain JSON (no newline: JSON escapes them) reads too.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from pipeline.errors import RedisUnavailableError, SamstreamError
from pipeline.frames import FrameResult
from pipeline.ledger.resume import ResumePoint
from pipeline.streams.connection import redis_errors, refusal, refused, retry_of
from pipeline.streams.keys import Keys, validate_job_id
from pipeline.streams.previews import encode_preview
from pipeline.streams.publisher import Publisher
from pipeline.streams.wire import encode_entry, entry_id

# KEYS: masks stream, job hash, state key, preview stream.
# ARGV: entry id, maxlen ("" for none), state ("" for none: no checkpoint with this frame), frame
# index, now, the newest frame the job expects in the stream ("" for none, "*" unknown: no check),
# the preview's maxlen, n: the number of preview field/value arguments (0: no preview), those n,
# then the entry's field/value pairs. The preview goes in only with its frame's new entry (same ID).
# Returns 1 (added), 0 (published before), or {"lost", newest frame or -1} (Redis lost entries).
_PUBLISH = """
if redis.call('EXISTS', KEYS[2]) == 0 then return redis.error_reply('no such job') end
if ARGV[6] ~= '*' then
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  local newest = -1
  if #top > 0 then newest = tonumber(string.match(top[1][1], '^(%d+)')) end
  local want = -1
  if ARGV[6] ~= '' then want = tonumber(ARGV[6]) end
  if newest < want then return {'lost', tostring(newest)} end
end
local args = {KEYS[1]}
if ARGV[2] ~= '' then
  table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[2])
end
table.insert(args, ARGV[1])
local n = tonumber(ARGV[8])
for i = 9 + n, #ARGV do table.insert(args, ARGV[i]) end
local ok = redis.pcall('XADD', unpack(args))
if type(ok) == 'table' and ok.err then
  if string.find(ok.err, 'equal or smaller') then return 0 end
  return redis.error_reply(ok.err)
end
if n > 0 then
  local shown = redis.pcall('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], ARGV[1], unpack(ARGV, 9, 8 + n))
  if type(shown) == 'table' and shown.err and not string.find(shown.err, 'equal or smaller') then
    return redis.error_reply(shown.err)
  end
end
redis.call('HINCRBY', KEYS[2], 'frames_done', 1)
redis.call('HSET', KEYS[2], 'last_frame', ARGV[4], 'updated', ARGV[5])
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3]) end
return 1
"""
_PUBLISH_SHA = hashlib.sha1(_PUBLISH.encode()).hexdigest()
_UNCHECKED = "*"  # the sink does not know what the stream holds yet
PREVIEW_KEEP = 64  # preview entries kept by default (see pipeline.masks.preview.PreviewOptions.keep)


class LostEntriesError(SamstreamError):
    """Redis no longer holds frames the job published (restarted from an older snapshot, or failed
    over to a lagging replica): the stream's newest frame is ``newest`` (None: empty), not
    ``expected``. Nothing was written."""

    def __init__(self, job_id: str, expected: int, newest: int | None) -> None:
        had = "no frame" if newest is None else f"frame {newest}"
        super().__init__(
            f"Redis lost published frames of job {job_id!r}: its masks stream ends at {had}, "
            f"but frame {expected} was published"
        )
        self.job_id = job_id
        self.expected = expected
        self.newest = newest


class RedisSink:
    """The :class:`~pipeline.tracking.stage.ResultSink` of a job whose results live in Redis.

    Args:
        client: Redis client.
        keys: key names.
        job_id: the job.
        maxlen: trim the masks stream to about this many entries (live jobs); None keeps all.
        notice: a warning every entry carries (random weights).
        preview_keep: trim the preview stream to about this many entries.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        job_id: str,
        maxlen: int | None = None,
        notice: str | None = None,
        preview_keep: int = PREVIEW_KEEP,
    ) -> None:
        self.client = client
        self.keys = keys
        self.job_id = validate_job_id(job_id)
        self.maxlen = maxlen
        self.notice = notice
        self.preview_keep = preview_keep
        self.publisher = Publisher(client, keys, job_id)
        # The newest frame the masks stream must hold before the next publish (None: no frame);
        # learnt from the resume point, then from each publish.
        self._newest: int | str | None = _UNCHECKED

    def publish(self, result: FrameResult, snapshot: Mapping[str, Any] | None) -> bool:
        return self.publish_many([(result, snapshot)])[0]

    def publish_many(self, items: Sequence[tuple[FrameResult, Mapping[str, Any] | None]]) -> list[bool]:
        """Publish frames in order, one script each (each atomic), sent in one round trip."""
        if not items:
            return []
        done = publish_jobs(self.client, [(self, items)])[0]
        if isinstance(done, Exception):  # e.g. "no such job": that frame and the ones after it
            raise done
        return done

    def calls(self, items: Sequence[tuple[FrameResult, Mapping[str, Any] | None]]) -> list[list[Any]]:
        """The script calls (keys and arguments) that publish ``items``."""
        keys = [
            self.keys.masks(self.job_id),
            self.keys.job(self.job_id),
            self.keys.state(self.job_id),
            self.keys.preview(self.job_id),
        ]
        calls = []
        want = self._newest
        for result, snapshot in items:
            fields = encode_entry(result, self.notice)
            state = b"" if snapshot is None else pack_state(result.frame_index, snapshot)
            args: list[str | bytes] = [
                entry_id(result.frame_index),
                "" if self.maxlen is None else str(self.maxlen),
                state,
                str(result.frame_index),
                repr(time.time()),
                "" if want is None else str(want),
            ]
            preview = [] if result.preview is None else encode_preview(result)
            args += [str(self.preview_keep), str(len(preview)), *preview]
            want = result.frame_index
            args += [x for kv in fields.items() for x in kv]
            calls.append([*keys, *args])
        return calls

    def resume_point(self) -> ResumePoint:
        from pipeline.ledger.resume import load

        point = load(self.client, self.keys, self.job_id)
        self._newest = point.last_published
        return point

    def _answered(
        self, items: Sequence[tuple[FrameResult, Any]], replies: Sequence[Any]
    ) -> list[bool] | Exception:
        """The flags of ``items``' script replies, or the error that stopped them; learns what the
        stream now holds."""
        flags = []
        for (result, _), reply in zip(items, replies, strict=True):
            if isinstance(reply, Exception):
                return reply
            if isinstance(reply, list):  # ["lost", newest]: nothing of this job was written
                expected = self._newest
                self._newest = _UNCHECKED
                newest = int(reply[1])
                return LostEntriesError(
                    self.job_id,
                    expected if isinstance(expected, int) else result.frame_index,
                    None if newest < 0 else newest,
                )
            # Added or refused as published before: the stream holds this frame (or a later one).
            self._newest = result.frame_index
            flags.append(bool(reply))
        return flags

    def event(
        self,
        type: str,
        *,
        frame: int | None,
        track: int | None,
        detail: str | None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.publisher.event(type, frame=frame, track=track, detail=detail, data=data)


def publish_jobs(
    client: redis.Redis,
    batches: Sequence[tuple[RedisSink, Sequence[tuple[FrameResult, Mapping[str, Any] | None]]]],
) -> list[list[bool] | Exception]:
    """Publish several jobs' frames in one round trip: each frame by its own script (atomic), all
    sent in one pipeline. For each job, one flag per frame (False: published before), or the error
    that stopped it (``no such job``, Redis refusing writes, :class:`LostEntriesError`): one job's
    trouble is not another's.

    Raises:
        RedisUnavailableError: Redis cannot be reached (every job's frames are unpublished).
    """
    calls: list[list[Any]] = []
    spans = []
    for sink, items in batches:
        mine = sink.calls(items)
        spans.append((len(calls), len(mine)))
        calls += mine
    if not calls:
        return [[] for _ in batches]
    with redis_errors(_what(batches)):
        replies = _run(client, calls)
        replies = _retry_refused(client, calls, spans, replies)
    out: list[list[bool] | Exception] = []
    for (sink, items), (start, count) in zip(batches, spans, strict=True):
        out.append(sink._answered(items, replies[start : start + count]))
    return out


def _retry_refused(
    client: redis.Redis, calls: list[list[Any]], spans: list[tuple[int, int]], replies: list[Any]
) -> list[Any]:
    """Send again, with backoff, each job's calls from its first one Redis refused for now (out of
    memory, read-only…), within the client's retry budget (:class:`BudgetRetry`, whose outage
    clock this shares); a refusal left at the end becomes the job's
    :class:`RedisUnavailableError`. A job whose later frame went in after a refused one is not
    sent again (its frames would no longer be in order)."""
    retry = retry_of(client)
    replies = list(replies)
    delay = 0.1
    failed = False
    while True:
        again: list[int] = []
        for start, count in spans:
            mine = replies[start : start + count]
            first = next((i for i, r in enumerate(mine) if refused_reply(r)), None)
            if first is not None and not any(r == 1 for r in mine[first:]):
                again += range(start + first, start + count)
        if not again:
            if failed and retry is not None:
                retry.recovered()
            break
        failed = True
        left = retry.failed() if retry is not None else 0.0
        if left <= 0:
            break
        time.sleep(min(delay, left))
        delay = min(2 * delay, 2.0)
        for i, reply in zip(again, _run(client, [calls[i] for i in again]), strict=True):
            replies[i] = reply
    return [
        RedisUnavailableError(f"Redis refused publishing a frame: {refusal(r)}") if refused_reply(r) else r
        for r in replies
    ]


def refused_reply(reply: Any) -> bool:
    """Whether a pipeline reply is Redis refusing for now (see :func:`~pipeline.streams.connection.refused`)."""
    return isinstance(reply, redis.ResponseError) and refused(reply)


def _what(batches: Sequence[tuple[RedisSink, Sequence[tuple[FrameResult, Any]]]]) -> str:
    """What is being published, for an error message."""
    if len(batches) != 1:
        return f"publishing the frames of {len(batches)} jobs"
    sink, items = batches[0]
    first, last = items[0][0].frame_index, items[-1][0].frame_index
    frames = f"frame {first}" if first == last else f"frames {first}-{last}"
    return f"publishing {frames} of job {sink.job_id!r}"


def _run(client: redis.Redis, calls: list[list[Any]]) -> list[Any]:
    """EVALSHA each call in one pipeline (no transaction: each script is atomic on its own)."""
    replies = _pipeline(client, calls)
    if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
        # Redis lost its scripts (restarted): load it again; a NOSCRIPT call wrote nothing.
        client.script_load(_PUBLISH)
        replies = _pipeline(client, calls)
    return replies


def _pipeline(client: redis.Redis, calls: list[list[Any]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(_PUBLISH_SHA, 4, *call)
    return list(pipe.execute(raise_on_error=False))


def read_state(client: redis.Redis, keys: Keys, job_id: str) -> dict[str, Any] | None:
    """The job's last checkpoint ``{"frame", "tracker"}``, or None."""
    with redis_errors(f"reading the state of job {job_id!r}"):
        # The client decodes replies to str; the state holds raw bytes.
        raw: Any = client.execute_command("GET", keys.state(job_id), NEVER_DECODE=True)
    return None if raw is None else unpack_state(raw)


def read_state_frame(client: redis.Redis, keys: Keys, job_id: str) -> int | None:
    """The frame of the job's last checkpoint, or None: its header only (the logits stay in Redis)."""
    key = keys.state(job_id)
    with redis_errors(f"reading the state of job {job_id!r}"):
        raw: Any = client.execute_command("GETRANGE", key, 0, _HEADER_PEEK - 1, NEVER_DECODE=True)
        if not raw:
            return None
        head, newline, _ = raw.partition(b"\n")
        if not newline:  # a long header (many tracks), or a state written as plain JSON
            state = read_state(client, keys, job_id)
            return None if state is None else int(state["frame"])
    return int(json.loads(head)["frame"])


_HEADER_PEEK = 64 * 1024


# Where a track of a binary snapshot holds raw bytes (its logits, its memory's vectors).
_BLOB_PATHS = (("logits",), ("memory", "vectors"))


def pack_state(frame_index: int, snapshot: Mapping[str, Any]) -> bytes:
    """The state key's value: ``{"frame", "tracker"}`` as JSON, with the tracks' array bytes
    (logits, memory) after it."""
    blobs: list[bytes] = []
    offset = 0
    tracks = []
    for track in snapshot.get("tracks", []):
        for path in _BLOB_PATHS:
            array = _nested(track, path)
            if array is not None and isinstance(array.get("data"), bytes):
                data = array["data"]
                track = _replaced(track, path, {**array, "data": {"blob": [offset, len(data)]}})
                blobs.append(data)
                offset += len(data)
        tracks.append(track)
    header = {"frame": frame_index, "tracker": {**snapshot, "tracks": tracks}}
    return b"".join([json.dumps(header, separators=(",", ":")).encode(), b"\n", *blobs])


def unpack_state(raw: bytes) -> dict[str, Any]:
    """Inverse of :func:`pack_state`: the arrays' ``data`` come back as bytes."""
    head, _, body = raw.partition(b"\n")
    state: dict[str, Any] = json.loads(head)
    for track in state.get("tracker", {}).get("tracks", []):
        for path in _BLOB_PATHS:
            array = _nested(track, path)
            if array is not None and isinstance(array.get("data"), dict):
                start, length = array["data"]["blob"]
                array["data"] = body[start : start + length]
    return state


def _nested(track: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = track
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value if isinstance(value, Mapping) else None


def _replaced(track: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``track`` with ``value`` at ``path`` (the dicts on the way copied, not changed)."""
    head, *rest = path
    return {**track, head: _replaced(track[head], tuple(rest), value) if rest else value}
