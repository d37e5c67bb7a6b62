"""Reading a job's masks stream (in frame order, resumable) and its events stream."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import redis

from pipeline.errors import InvalidInputError
from pipeline.frames import FrameResult
from pipeline.streams.connection import redis_errors
from pipeline.streams.keys import Keys, validate_job_id
from pipeline.streams.wire import Event, MaskEntry, as_text, decode_event, decode_mask_entry

_STREAM_ID = re.compile(r"\d+(-\d+)?")
_MAX_SLICE_MS = 1000


class MaskReader:
    """Reads one job's masks stream.

    Entries come in stream order, which is frame order. Each method takes ``start_after``, an entry
    ID (``"41-1"``, i.e. :func:`~pipeline.streams.wire.entry_id` of the last frame seen), and yields
    only entries after it, so a reader that stops can resume where it left off.

    Blocking reads wait in slices of at most one second (and at most half the client's socket
    timeout), so a client made by :func:`~pipeline.streams.connection.connect` never times out
    while waiting.
    """

    def __init__(self, client: redis.Redis, keys: Keys, job_id: str) -> None:
        self._client = client
        self._job_id = validate_job_id(job_id)
        self._key = keys.masks(job_id)
        from pipeline.ledger.record import JobStore  # the ledger reads through this package

        self._jobs = JobStore(client, keys)
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._slice_ms = _MAX_SLICE_MS if not timeout else max(1, min(_MAX_SLICE_MS, int(timeout * 500)))

    def read(
        self, start_after: str | None = None, block_ms: int | None = None, count: int = 100
    ) -> Iterator[tuple[str, FrameResult]]:
        """Yield ``(entry_id, result)`` for the entries after ``start_after``, in frame order.

        Args:
            start_after: an entry ID; None starts at the first entry.
            block_ms: when caught up, wait up to this long for new entries and go on if some come;
                the iteration ends at the first wait that brings nothing. None ends as soon as caught up.
            count: entries fetched per round trip.
        """
        for entry in self.read_entries(start_after, block_ms, count):
            yield entry.entry_id, entry.result

    def read_entries(
        self, start_after: str | None = None, block_ms: int | None = None, count: int = 100
    ) -> Iterator[MaskEntry]:
        """Like :meth:`read`, yielding full :class:`MaskEntry` values (publish time, notice)."""
        last = _check_start(start_after)
        _check_positive(count, "count")
        if block_ms is not None:
            _check_positive(block_ms, "block_ms")
        while True:
            batch = self._fetch(last, count, None)
            if not batch and block_ms is not None:
                batch = self._fetch(last, count, block_ms)
            if not batch:
                return
            for entry in batch:
                last = entry.entry_id
                yield entry

    def follow(
        self, start_after: str | None = None, poll_ms: int = 1000, count: int = 100
    ) -> Iterator[tuple[str, FrameResult]]:
        """Yield every entry after ``start_after`` as it is published, until the job is over.

        Blocks between entries. Ends once the job's status is terminal (succeeded, failed, cancelled)
        and every entry published before that has been yielded; each entry is yielded once.

        Args:
            start_after: an entry ID; None starts at the first entry.
            poll_ms: how long one blocking read waits before the job's status is checked again.
            count: entries fetched per round trip.

        Raises:
            JobError: the job does not exist (checked whenever the stream is idle).
        """
        for entry in self.follow_entries(start_after, poll_ms, count):
            yield entry.entry_id, entry.result

    def follow_entries(
        self, start_after: str | None = None, poll_ms: int = 1000, count: int = 100
    ) -> Iterator[MaskEntry]:
        """Like :meth:`follow`, yielding full :class:`MaskEntry` values (publish time, notice)."""
        last = _check_start(start_after)
        _check_positive(poll_ms, "poll_ms")
        _check_positive(count, "count")
        while True:
            batch = self._fetch(last, count, poll_ms)
            if not batch:
                # Check the status first, then drain: entries published before the job turned
                # terminal are in the stream by then, so the drain cannot miss one.
                if not self._jobs.get(self._job_id).status.terminal:
                    continue
                for entry in self.read_entries(last, None, count):
                    yield entry
                return
            for entry in batch:
                last = entry.entry_id
                yield entry

    def count(self) -> int:
        """Number of entries in the masks stream now (after any trimming)."""
        with redis_errors(f"reading the masks stream of job {self._job_id!r}"):
            return int(self._client.xlen(self._key))

    def _fetch(self, last: str, count: int, block_ms: int | None) -> list[MaskEntry]:
        deadline = None if block_ms is None else time.monotonic() + block_ms / 1000
        with redis_errors(f"reading the masks stream of job {self._job_id!r}"):
            while True:
                block = None
                if deadline is not None:
                    left_ms = int((deadline - time.monotonic()) * 1000)
                    block = max(1, min(left_ms, self._slice_ms))
                reply = self._client.xread({self._key: last}, count=count, block=block)
                entries = [decode_mask_entry(eid, fields) for eid, fields in _entries(reply)]
                if entries or deadline is None or time.monotonic() >= deadline:
                    return entries


def read_events(
    client: redis.Redis, keys: Keys, job_id: str, start_after: str | None = None, count: int = 100
) -> Iterator[Event]:
    """Yield the job's events after ``start_after`` (an events entry ID), oldest first, without blocking."""
    key = keys.events(job_id)
    last = _check_start(start_after)
    _check_positive(count, "count")
    while True:
        with redis_errors(f"reading the events stream of job {job_id!r}"):
            reply = client.xread({key: last}, count=count)
        batch = [decode_event(eid, fields) for eid, fields in _entries(reply)]
        if not batch:
            return
        for event in batch:
            last = event.entry_id
            yield event


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """The (id, fields) pairs of a one-stream XREAD reply, RESP2 (list) or RESP3 (dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        (entries,) = reply.values()
        if len(entries) == 1 and isinstance(entries[0], list):  # redis-py's legacy RESP3 shape
            entries = entries[0]
        return list(entries)
    ((_key, entries),) = reply
    return list(entries)


def _check_start(start_after: str | None) -> str:
    if start_after is None:
        return "0-0"
    text = as_text(start_after)
    if _STREAM_ID.fullmatch(text) is None:
        raise InvalidInputError(f"start_after must be a stream entry ID like '41-1', got {start_after!r}")
    return text


def _check_positive(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{what} must be an int >= 1, got {value!r}")
