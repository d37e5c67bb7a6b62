"""A job's results into Redis, exactly once, with the tracker state that lets a restart resume.

One Lua script per frame makes it atomic: the masks entry (XADD with the frame's own ID), the job
hash's progress and the tracker snapshot are written together or not at all. Redis refuses an
entry ID at or below the stream's newest, so a replayed frame changes nothing.

The state is a checkpoint: the decoder passes a snapshot with some frames only (see
:class:`~pipeline.decoding.TrackDecoder`), and a resumed job replays the frames after it.

The state key holds a JSON header, a newline, then the tracks' logits as raw bytes (256 KB a
track at 1024): as base64 inside the JSON they cost more than all the rest of a frame's
publishing. The header gives each track's logits ``{"blob": [offset, length]}`` into the bytes.
A state written as plain JSON (no newline: JSON escapes them) reads too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from pipeline.frames import FrameResult
from pipeline.streams.connection import redis_errors
from pipeline.streams.keys import Keys, validate_job_id
from pipeline.streams.publisher import Publisher
from pipeline.streams.wire import encode_entry, entry_id

# KEYS: masks stream, job hash, state key.
# ARGV: entry id, maxlen ("" for none), state ("" for none: no checkpoint with this frame), frame
# index, now, then the entry's field/value pairs.
_PUBLISH = """
if redis.call('EXISTS', KEYS[2]) == 0 then return redis.error_reply('no such job') end
local args = {KEYS[1]}
if ARGV[2] ~= '' then
  table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[2])
end
table.insert(args, ARGV[1])
for i = 6, #ARGV do table.insert(args, ARGV[i]) end
local ok = redis.pcall('XADD', unpack(args))
if type(ok) == 'table' and ok.err then
  if string.find(ok.err, 'equal or smaller') then return 0 end
  return redis.error_reply(ok.err)
end
redis.call('HINCRBY', KEYS[2], 'frames_done', 1)
redis.call('HSET', KEYS[2], 'last_frame', ARGV[4], 'updated', ARGV[5])
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3]) end
return 1
"""


class RedisSink:
    """The :class:`~pipeline.decoding.ResultSink` of a job whose results live in Redis.

    Args:
        client: Redis client.
        keys: key names.
        job_id: the job.
        maxlen: trim the masks stream to about this many entries (live jobs); None keeps all.
        notice: a warning every entry carries (random weights).
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        job_id: str,
        maxlen: int | None = None,
        notice: str | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.job_id = validate_job_id(job_id)
        self.maxlen = maxlen
        self.notice = notice
        self.publisher = Publisher(client, keys, job_id, maxlen)
        self._script = client.register_script(_PUBLISH)

    def publish(self, result: FrameResult, snapshot: Mapping[str, Any] | None) -> bool:
        return self.publish_many([(result, snapshot)])[0]

    def publish_many(self, items: Sequence[tuple[FrameResult, Mapping[str, Any] | None]]) -> list[bool]:
        """Publish frames in order, one script each (each atomic), sent in one round trip."""
        if not items:
            return []
        keys = [self.keys.masks(self.job_id), self.keys.job(self.job_id), self.keys.state(self.job_id)]
        calls = []
        for result, snapshot in items:
            fields = encode_entry(result, self.notice)
            state = b"" if snapshot is None else pack_state(result.frame_index, snapshot)
            args: list[str | bytes] = [
                entry_id(result.frame_index),
                "" if self.maxlen is None else str(self.maxlen),
                state,
                str(result.frame_index),
                repr(time.time()),
            ]
            args += [x for kv in fields.items() for x in kv]
            calls.append(args)
        first, last = items[0][0].frame_index, items[-1][0].frame_index
        frames = f"frame {first}" if first == last else f"frames {first}-{last}"
        with redis_errors(f"publishing {frames} of job {self.job_id!r}"):
            replies = self._run(keys, calls)
        out = []
        for reply in replies:
            if isinstance(reply, Exception):  # e.g. "no such job": that frame and the ones after it
                raise reply
            out.append(bool(reply))
        return out

    def _run(self, keys: list[str], calls: list[list[str | bytes]]) -> list[Any]:
        """EVALSHA each call in one pipeline (no transaction: each script is atomic on its own)."""
        replies = self._pipeline(keys, calls)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            # Redis lost its scripts (restarted): load it again; a NOSCRIPT call wrote nothing.
            self.client.script_load(_PUBLISH)
            replies = self._pipeline(keys, calls)
        return replies

    def _pipeline(self, keys: list[str], calls: list[list[str | bytes]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for args in calls:
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))

    def resume_point(self) -> tuple[int | None, int | None, Mapping[str, Any] | None]:
        last = self.publisher.last_published_frame()
        if last is None:
            return None, None, None
        state = read_state(self.client, self.keys, self.job_id)
        if state is None:
            return last, None, None
        return last, int(state["frame"]), state.get("tracker")

    def event(self, type: str, *, frame: int | None, track: int | None, detail: str | None) -> None:
        self.publisher.event(type, frame=frame, track=track, detail=detail)


def read_state(client: redis.Redis, keys: Keys, job_id: str) -> dict[str, Any] | None:
    """The job's last checkpoint ``{"frame", "tracker"}``, or None."""
    with redis_errors(f"reading the state of job {job_id!r}"):
        # The client decodes replies to str; the state holds raw bytes.
        raw: Any = client.execute_command("GET", keys.state(job_id), NEVER_DECODE=True)
    return None if raw is None else unpack_state(raw)


def resume_after(client: redis.Redis, keys: Keys, job_id: str, live: bool) -> int | None:
    """The frame a resumed job reads after (None: from the start).

    A file job goes on after its last checkpoint: the frames from there to the last published one
    are replayed through the tracker (see :class:`~pipeline.decoding.TrackDecoder`). A live job
    goes on from the feed's present, numbering its frames after the last published one.
    """
    last = Publisher(client, keys, job_id).last_published_frame()
    if last is None or live:
        return last
    state = read_state(client, keys, job_id)
    return None if state is None else min(last, int(state["frame"]))


def pack_state(frame_index: int, snapshot: Mapping[str, Any]) -> bytes:
    """The state key's value: ``{"frame", "tracker"}`` as JSON, with the logits' bytes after it."""
    blobs: list[bytes] = []
    offset = 0
    tracks = []
    for track in snapshot.get("tracks", []):
        logits = track.get("logits")
        if logits is not None and isinstance(logits.get("data"), bytes):
            data = logits["data"]
            track = {**track, "logits": {**logits, "data": {"blob": [offset, len(data)]}}}
            blobs.append(data)
            offset += len(data)
        tracks.append(track)
    header = {"frame": frame_index, "tracker": {**snapshot, "tracks": tracks}}
    return b"".join([json.dumps(header, separators=(",", ":")).encode(), b"\n", *blobs])


def unpack_state(raw: bytes) -> dict[str, Any]:
    """Inverse of :func:`pack_state`: the logits' ``data`` come back as bytes."""
    head, _, body = raw.partition(b"\n")
    state: dict[str, Any] = json.loads(head)
    for track in state.get("tracker", {}).get("tracks", []):
        logits = track.get("logits")
        if logits is not None and isinstance(logits.get("data"), dict):
            start, length = logits["data"]["blob"]
            logits["data"] = body[start : start + length]
    return state
