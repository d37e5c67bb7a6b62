"""The control stream of a live job (``{prefix}job:{id}:control``): add, remove, re-prompt, stop.

Each entry has a ``cmd`` field (``add``, ``remove``, ``reprompt``, ``stop``, ``pause_discovery``,
``resume_discovery``) and, for the track commands, ``track`` (the id) and ``prompt`` (JSON ``{"points": [[x, y], ...], "labels": [1, ...],
"box": [x0, y0, x1, y1], "mask": {"size": [H, W], "counts": "..."}}``, the mask a compressed COCO
RLE). A command applies from the next frame the job processes, and is
answered by an event (``track_added``, ``track_removed``, ``track_reprompted``,
``discovery_paused``, ``discovery_resumed``, ``error``).

The stream is trimmed to about :data:`~pipeline.streams.retention.CONTROL_MAXLEN` entries as
commands are sent (far more than its driver leaves unread), and lives as long as the job's hash.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from pipeline.errors import InvalidInputError, JobError
from pipeline.prompts import Prompt
from pipeline.streams.connection import redis_errors
from pipeline.streams.keys import Keys
from pipeline.streams.retention import CONTROL_MAXLEN
from pipeline.streams.wire import as_text

COMMANDS = ("add", "remove", "reprompt", "stop", "pause_discovery", "resume_discovery")
JOB_COMMANDS = ("stop", "pause_discovery", "resume_discovery")  # of the job, not of one track

# Appends a command to the control stream of a job that exists, trimmed, and gives the stream the
# hash's TTL: a command sent as the job ended must not leave a key that outlives the job.
# KEYS: job hash, control stream. ARGV: maxlen, the command's field/value pairs.
_SEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return id
"""


@dataclass(frozen=True)
class Command:
    """One control command."""

    cmd: str
    track: int | None = None
    prompt: Prompt | None = None

    def __post_init__(self) -> None:
        if self.cmd not in COMMANDS:
            raise InvalidInputError(f"control command must be one of {COMMANDS}, got {self.cmd!r}")
        if self.cmd not in JOB_COMMANDS and (self.track is None or self.track < 1):
            raise InvalidInputError(f"'{self.cmd}' needs a track id >= 1, got {self.track!r}")
        if self.cmd in ("add", "reprompt") and self.prompt is None:
            raise InvalidInputError(f"'{self.cmd}' needs a prompt")

    def fields(self) -> dict[str, str]:
        out = {"cmd": self.cmd}
        if self.track is not None:
            out["track"] = str(self.track)
        if self.prompt is not None:
            out["prompt"] = json.dumps(self.prompt.to_dict())
        return out

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> Command:
        data = {as_text(k): as_text(v) for k, v in fields.items()}
        try:
            prompt = Prompt.from_dict(json.loads(data["prompt"])) if "prompt" in data else None
            track = int(data["track"]) if "track" in data else None
            return cls(data.get("cmd", ""), track, prompt)
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidInputError(f"malformed control command {data}: {exc}") from None


def send(client: redis.Redis, keys: Keys, job_id: str, command: Command) -> str:
    """Append a command to the job's control stream; returns its entry id.

    Raises:
        JobError: no such job (nothing is written).
    """
    args: list[str | int] = [CONTROL_MAXLEN, *(x for kv in command.fields().items() for x in kv)]
    with redis_errors(f"sending {command.cmd!r} to job {job_id!r}"):
        eid: Any = client.eval(_SEND, 2, keys.job(job_id), keys.control(job_id), *args)
    if eid is None:
        raise JobError(f"no job {job_id!r} (no hash at {keys.job(job_id)})")
    return as_text(eid)


class ControlReader:
    """Reads a job's control stream without blocking, each command once.

    Args:
        everything: read the stream from its start (a job starting for the first time: commands
            sent while it was queued apply); by default only commands sent from now on.
    """

    def __init__(self, client: redis.Redis, keys: Keys, job_id: str, everything: bool = False) -> None:
        self.client = client
        self.key = keys.control(job_id)
        self.last = "$"  # only commands sent from now on
        if everything:
            self.last = "0-0"
            return
        with redis_errors(f"reading the control stream of job {job_id!r}"):
            newest: Any = client.xrevrange(self.key, count=1)
        if newest:
            self.last = as_text(newest[0][0])
        elif self.last == "$":
            self.last = "0-0"

    def poll(self) -> Iterator[Command | InvalidInputError]:
        """New commands (or the error of a malformed one, so the job can report it and go on)."""
        with redis_errors("reading a control stream"):
            entries: Any = self.client.xread({self.key: self.last}, count=100)
        for _, items in entries or []:
            for eid, fields in items:
                self.last = as_text(eid)
                try:
                    yield Command.from_fields(fields)
                except InvalidInputError as exc:
                    yield exc


class ControlBus:
    """Reads the control streams of many jobs with one ``XREAD`` per poll, each command once.

    Args:
        client: Redis client.
        keys: key names.
    """

    CHUNK = 500  # streams per XREAD

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._last: dict[str, str] = {}  # control key -> last entry id read
        self._jobs: dict[str, str] = {}  # control key -> job id

    def add(self, job_id: str, everything: bool = False) -> None:
        """Follow a job's commands: from the stream's start (``everything``: commands sent while
        it was queued apply), else those sent from now on."""
        reader = ControlReader(self.client, self.keys, job_id, everything)
        self._last[reader.key] = reader.last
        self._jobs[reader.key] = job_id

    def remove(self, job_id: str) -> None:
        key = self.keys.control(job_id)
        self._last.pop(key, None)
        self._jobs.pop(key, None)

    def poll(self) -> list[tuple[str, Command | InvalidInputError]]:
        """New commands of every followed job, in order per job: ``(job id, command)``, or the
        error of a malformed one (so that the job can report it and go on)."""
        out: list[tuple[str, Command | InvalidInputError]] = []
        streams = list(self._last.items())
        for i in range(0, len(streams), self.CHUNK):
            chunk = dict(streams[i : i + self.CHUNK])
            with redis_errors("reading the control streams"):
                entries: Any = self.client.xread(chunk, count=100)  # type: ignore[arg-type]
            for key, items in entries or []:
                key = as_text(key)
                job_id = self._jobs.get(key)
                if job_id is None:
                    continue
                for eid, fields in items:
                    self._last[key] = as_text(eid)
                    try:
                        out.append((job_id, Command.from_fields(fields)))
                    except InvalidInputError as exc:
                        out.append((job_id, exc))
        return out
