"""Blocking reads and follow() on a real Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from pipeline.errors import JobError
from pipeline.ledger import JobStatus, JobStore
from pipeline.ledger.sink import RedisSink
from pipeline.streams import Keys, MaskReader
from tests.pipeline.streams.conftest import make_result, running_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def _produce(client: redis.Redis, keys: Keys, job_id: str, frames: range, delay_s: float) -> None:
    sink, store = RedisSink(client, keys, job_id), JobStore(client, keys)
    store.set_status(job_id, JobStatus.RUNNING)
    for f in frames:
        time.sleep(delay_s)
        sink.publish(make_result(f, n_tracks=1), None)
        store.progress(job_id, f + 1, f)
    store.set_status(job_id, JobStatus.SUCCEEDED)


def test_follow_ends_when_the_job_succeeds(redis_client: redis.Redis, keys: Keys) -> None:
    JobStore(redis_client, keys).create("f1", {}, total_frames=15)
    producer = threading.Thread(target=_produce, args=(redis_client, keys, "f1", range(15), 0.01))
    producer.start()
    seen = [r.frame_index for _, r in MaskReader(redis_client, keys, "f1").follow(poll_ms=50)]
    producer.join()
    assert seen == list(range(15))


def test_follow_resumes_and_drains_a_finished_job(redis_client: redis.Redis, keys: Keys) -> None:
    JobStore(redis_client, keys).create("f2", {})
    _produce(redis_client, keys, "f2", range(6), 0.0)
    reader = MaskReader(redis_client, keys, "f2")
    assert [eid for eid, _ in reader.follow(start_after="2-1", poll_ms=20)] == ["3-1", "4-1", "5-1"]
    assert list(reader.follow(start_after="5-1", poll_ms=20)) == []


def test_follow_unknown_job(redis_client: redis.Redis, keys: Keys) -> None:
    with pytest.raises(JobError, match="'ghost'"):
        list(MaskReader(redis_client, keys, "ghost").follow(poll_ms=20))


def test_read_blocks_for_late_entries_then_stops(redis_client: redis.Redis, keys: Keys) -> None:
    sink = running_job(redis_client, keys, "r1")
    sink.publish(make_result(0), None)
    timer = threading.Timer(0.2, sink.publish, args=(make_result(1), None))
    timer.start()
    start = time.monotonic()
    frames = [r.frame_index for _, r in MaskReader(redis_client, keys, "r1").read(block_ms=800)]
    timer.join()
    assert frames == [0, 1]
    assert 0.8 <= time.monotonic() - start < 3  # waited once more after frame 1, then gave up
