"""Publishing a job's per-frame results and events to its Redis streams, exactly once per frame."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from pipeline.errors import InvalidInputError
from pipeline.frames import FrameResult
from pipeline.streams.connection import redis_errors
from pipeline.streams.keys import Keys, validate_job_id
from pipeline.streams.retention import EVENTS_MAXLEN
from pipeline.streams.wire import encode_entry, encode_event, entry_id, frame_of

# Redis's reply to an XADD whose explicit ID is not above the stream's last ID. The last ID is kept
# even when entries are trimmed or deleted, so a trimmed frame is still refused.
_ID_TOO_SMALL = "equal or smaller than the target stream top item"


class Publisher:
    """Writes one job's masks stream (one entry per frame) and events stream.

    The entry ID of frame ``i`` is ``"{i}-1"``, so Redis refuses any frame at or below the last one
    published: a frame replayed after a restart is dropped by Redis itself. Frames must therefore be
    published in increasing index order (a skipped frame cannot be published later).

    Args:
        client: a Redis client (``decode_responses`` either way).
        keys: the key names.
        job_id: the job whose streams are written.
        maxlen: keep about this many masks entries (``XADD MAXLEN ~``; Redis trims whole macro-nodes,
            so the stream may hold somewhat more); None keeps every entry.
        events_maxlen: the same for the events stream (default
            :data:`~pipeline.streams.retention.EVENTS_MAXLEN`: a long live job's events would grow
            without end); None keeps every event.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        job_id: str,
        maxlen: int | None = None,
        *,
        events_maxlen: int | None = EVENTS_MAXLEN,
    ) -> None:
        for name, value in (("maxlen", maxlen), ("events_maxlen", events_maxlen)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"{name} must be None or an int >= 1, got {value!r}")
        self._client = client
        self._job_id = validate_job_id(job_id)
        self._masks_key = keys.masks(job_id)
        self._events_key = keys.events(job_id)
        self._maxlen = maxlen
        self._events_maxlen = events_maxlen

    @property
    def job_id(self) -> str:
        return self._job_id

    def publish(self, result: FrameResult, notice: str | None = None) -> bool:
        """Append the frame's entry to the masks stream unless it was published before.

        Args:
            result: the frame's result (see :func:`~pipeline.streams.wire.encode_entry`).
            notice: a warning carried with the entry (e.g. random weights).

        Returns:
            True if the entry was added; False if this frame (or a later one) is already in the
            stream, in which case nothing is written.

        Raises:
            WireFormatError: the result cannot be encoded.
            RedisUnavailableError: the connection failed.
        """
        fields = encode_entry(result, notice)
        eid = entry_id(result.frame_index)
        with redis_errors(f"publishing frame {result.frame_index} of job {self._job_id!r}"):
            try:
                self._client.xadd(
                    self._masks_key,
                    _fields(fields),
                    id=eid,
                    maxlen=self._maxlen,
                    approximate=True,
                )
            except redis.ResponseError as e:
                if _ID_TOO_SMALL in str(e):
                    return False
                raise
        return True

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
                (``status`` events are written by :class:`~pipeline.streams.jobs.JobStore`.)
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
