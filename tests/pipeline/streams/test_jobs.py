"""The job hash on a real Redis: lifecycle, progress, listing, status events."""

from __future__ import annotations

import time

import pytest
import redis

from pipeline.errors import InvalidInputError, JobError
from pipeline.streams import JobStatus, JobStore, Keys, read_events

pytestmark = pytest.mark.integration


def test_lifecycle(redis_client: redis.Redis, keys: Keys) -> None:
    store = JobStore(redis_client, keys)
    before = time.time()
    info = store.create("j1", {"source": "a.mp4", "tracks": [{"point": [1, 2]}]}, total_frames=50)
    assert info.status is JobStatus.QUEUED
    assert info.spec == {"source": "a.mp4", "tracks": [{"point": [1, 2]}]}
    assert (info.frames_done, info.frames_total, info.last_frame, info.error) == (0, 50, None, None)
    assert before <= info.created == info.updated <= time.time()
    assert info.started is None and info.finished is None

    store.set_status("j1", JobStatus.RUNNING)
    store.progress("j1", frames_done=10, last_frame=9)
    info = store.get("j1")
    assert (info.status, info.frames_done, info.last_frame) == (JobStatus.RUNNING, 10, 9)
    assert info.started is not None and info.finished is None and info.updated >= info.started

    store.set_status("j1", "failed", error="source lost")
    info = store.get("j1")
    assert (info.status, info.error) == (JobStatus.FAILED, "source lost")
    assert info.status.terminal and info.finished is not None

    store.set_status("j1", "running")  # resumed: error and finish time cleared
    info = store.get("j1")
    assert (info.status, info.error, info.finished) == (JobStatus.RUNNING, None, None)
    store.set_status("j1", JobStatus.SUCCEEDED)

    events = list(read_events(redis_client, keys, "j1"))
    assert [(e.type, e.detail) for e in events] == [
        ("status", "queued"),
        ("status", "running"),
        ("status", "failed"),
        ("status", "running"),
        ("status", "succeeded"),
    ]
    assert events[2].data == {"error": "source lost"}


def test_unknown_and_duplicate_jobs(redis_client: redis.Redis, keys: Keys) -> None:
    store = JobStore(redis_client, keys)
    with pytest.raises(JobError, match="'nope'"):
        store.get("nope")
    with pytest.raises(JobError, match="'nope'"):
        store.set_status("nope", "running")
    with pytest.raises(JobError, match="'nope'"):
        store.progress("nope", 1, 0)
    assert not redis_client.exists(keys.job("nope"), keys.events("nope"))  # nothing half-written
    store.create("dup", {})
    with pytest.raises(JobError, match="exists already"):
        store.create("dup", {"other": 1})
    assert store.get("dup").spec == {}


def test_bad_input(redis_client: redis.Redis, keys: Keys) -> None:
    store = JobStore(redis_client, keys)
    with pytest.raises(InvalidInputError, match="queued, running, succeeded, failed, cancelled"):
        store.set_status("x", "done")
    with pytest.raises(InvalidInputError, match="JSON"):
        store.create("x", {"f": object()})
    with pytest.raises(InvalidInputError, match="job id"):
        store.create("a:b", {})


def test_list_oldest_first(redis_client: redis.Redis, keys: Keys) -> None:
    store = JobStore(redis_client, keys)
    assert store.list() == []
    for job_id in ("b", "a", "c"):
        store.create(job_id, {"n": job_id})
    redis_client.delete(keys.job("a"))  # a hash removed by hand is skipped
    assert [(j.job_id, j.spec["n"]) for j in store.list()] == [("b", "b"), ("c", "c")]
