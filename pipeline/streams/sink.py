"""A job's results into Redis, exactly once, with the tracker state that lets a restart resume.

One Lua script per frame makes it atomic: the masks entry (XADD with the frame's own ID), the job
hash's progress and the tracker snapshot are written together or not at all. Redis refuses an
entry ID at or below the stream's newest, so a replayed frame changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis

from pipeline.frames import FrameResult
from pipeline.streams.connection import redis_errors
from pipeline.streams.keys import Keys, validate_job_id
from pipeline.streams.publisher import Publisher
from pipeline.streams.wire import encode_entry, entry_id

# KEYS: masks stream, job hash, state key.
# ARGV: entry id, maxlen ("" for none), state JSON, frame index, now, then the entry's field/value pairs.
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
redis.call('SET', KEYS[3], ARGV[3])
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

    def publish(self, result: FrameResult, snapshot: Mapping[str, Any]) -> bool:
        fields = encode_entry(result, self.notice)
        state = json.dumps({"frame": result.frame_index, "tracker": snapshot}, separators=(",", ":"))
        flat: list[str] = [x for kv in fields.items() for x in kv]
        args = [entry_id(result.frame_index), "" if self.maxlen is None else str(self.maxlen), state]
        args += [str(result.frame_index), repr(time.time()), *flat]
        keys = [self.keys.masks(self.job_id), self.keys.job(self.job_id), self.keys.state(self.job_id)]
        with redis_errors(f"publishing frame {result.frame_index} of job {self.job_id!r}"):
            return bool(self._script(keys=keys, args=args))

    def resume_point(self) -> tuple[int | None, Mapping[str, Any] | None]:
        last = self.publisher.last_published_frame()
        if last is None:
            return None, None
        with redis_errors(f"reading the state of job {self.job_id!r}"):
            raw: Any = self.client.get(self.keys.state(self.job_id))
        if raw is None:
            return last, None
        state = json.loads(raw)
        return last, state.get("tracker")

    def event(self, type: str, *, frame: int | None, track: int | None, detail: str | None) -> None:
        self.publisher.event(type, frame=frame, track=track, detail=detail)
