"""A job's events stream, and the newest frame its masks stream holds.

Frames are published by :class:`~pipeline.ledger.sink.RedisSink` only (one script: the entry, its
checkpoint, its progress and the loss check, atomically); this module writes no masks entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from pipeline.errors import InvalidInputError
from pipeline.streams.connection import redis_errors
from pipeline.streams.keys import Keys, validate_job_id
from pipeline.streams.retention import EVENTS_MAXLEN
from pipeline.streams.wire import encode_event, frame_of


class Publisher:
    """Writes one job's events stream and reads the top of its masks stream.

    Args:
        client: a Redis client (``decode_responses`` either way).
        keys: the key names.
        job_id: the job whose streams are written.
        events_maxlen: keep about this many events (``XADD MAXLEN ~``; Redis trims whole
            macro-nodes, so the stream may hold somewhat more; default
            :data:`~pipeline.streams.retention.EVENTS_MAXLEN`: a long live job's events would grow
            without end); None keeps every event.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        job_id: str,
        *,
        events_maxlen: int | None = EVENTS_MAXLEN,
    ) -> None:
        n = events_maxlen
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise InvalidInputError(f"events_maxlen must be None or an int >= 1, got {n!r}")
        self._client = client
        self._job_id = validate_job_id(job_id)
        self._masks_key = keys.masks(job_id)
        self._events_key = keys.events(job_id)
        self._events_maxlen = events_maxlen

    @property
    def job_id(self) -> str:
        return self._job_id

    def last_published_frame(self) -> int | None:
        """Index of the newest frame in the masks stream, or None if it holds no entry."""
        with redis_errors(f"reading the masks stream of job {self._job_id!r}"):
            newest: Any = self._client.xrevrange(self._masks_key, count=1)
        if not newest:
            return None
        return frame_of(newest[0][0])

    def event(
        self,
        type: str,
        *,
        frame: int | None = None,
        track: int | None = None,
        detail: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> str:
        """Append an event to the job's events stream.

        Args:
            type: what happened: ``track_lost``, ``track_found``, ``reconnect``, ``error``, ….
                (``status`` events are written by :class:`~pipeline.ledger.record.JobStore`.)
            frame: the frame index it refers to.
            track: the track id it refers to.
            detail: a short human-readable text.
            data: free JSON-serialisable details.

        Returns:
            The event's entry ID (Redis-generated).
        """
        fields = encode_event(type, frame=frame, track=track, detail=detail, data=data)
        with redis_errors(f"writing a {type!r} event of job {self._job_id!r}"):
            eid: Any = self._client.xadd(
                self._events_key, _fields(fields), maxlen=self._events_maxlen, approximate=True
            )
        return eid.decode() if isinstance(eid, bytes) else str(eid)


def _fields(fields: dict[str, str]) -> dict[Any, Any]:
    # redis-py's xadd wants Dict[FieldT, EncodableT]; dict is invariant, so a dict[str, str] is refused.
    return dict(fields)
