"""The job hash on a real Redis: lifecycle, progress, listing, status events, expiry, deletion."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import pipeline.ledger.record as jobs_module
from pipeline.errors import InvalidInputError, JobError, RedisUnavailableError, TooManyJobsError
from pipeline.ledger import JobStatus, JobStore
from pipeline.ledger.sink import RedisSink
from pipeline.ledger.slots import TrackSlots
from pipeline.streams import EmbeddedRedis, Keys, connect, read_events
from pipeline.streams.control import Command, send
from tests.pipeline.streams.conftest import make_result

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


def test_only_the_state_machines_changes_are_made_and_a_refusal_writes_nothing(
    redis_client: redis.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    store = JobStore(redis_client, keys)
    store.create("j", {})

    def refused(status: JobStatus, **kwargs: Any) -> None:
        before = (redis_client.hgetall(keys.job("j")), redis_client.xlen(keys.events("j")))
        with caplog.at_level(logging.WARNING, logger="pipeline.ledger.record"):
            assert store.set_status("j", status, **kwargs) is False
        assert (redis_client.hgetall(keys.job("j")), redis_client.xlen(keys.events("j"))) == before
        assert f"-> {status.value} refused" in caplog.text
        caplog.clear()

    refused(JobStatus.SUCCEEDED)  # a job that never ran does not succeed
    refused(JobStatus.QUEUED)  # queued only by creating the job
    assert store.set_status("j", JobStatus.RUNNING) is True
    assert store.set_status("j", JobStatus.RUNNING) is True  # taken up again after a restart
    refused(JobStatus.CANCELLED, only_from=[JobStatus.QUEUED])  # the API's cancel of a queued job
    assert store.set_status("j", JobStatus.CANCELLED, "cancelled on request") is True
    refused(JobStatus.SUCCEEDED)  # the first ending wins: the driver finishing it writes nothing
    refused(JobStatus.FAILED, error="late")
    refused(
        JobStatus.RUNNING, only_from=[JobStatus.QUEUED, JobStatus.RUNNING]
    )  # a start that was not asked again
    assert store.set_status("j", JobStatus.RUNNING) is True  # run again when asked
    assert store.set_status("j", JobStatus.SUCCEEDED) is True
    for status in JobStatus:  # succeeded is final
        refused(status)
    assert store.get("j").status is JobStatus.SUCCEEDED


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


def test_create_keeps_within_the_most_active_jobs_in_one_step(redis_client: redis.Redis, keys: Keys) -> None:
    """Queued and running jobs count; ended, deleted and expired ones do not; a refusal writes nothing."""
    store = JobStore(redis_client, keys)
    store.create("a", {"source": "x"}, most_active=2)
    store.create("b", {"source": "x"}, most_active=2)
    with pytest.raises(TooManyJobsError, match=r"2 jobs are queued or running, the most allowed \(2\)"):
        store.create("c", {"source": "x"}, most_active=2)
    assert not store.exists("c") and [j.job_id for j in store.list()] == ["a", "b"]
    store.set_status("a", JobStatus.RUNNING)
    store.set_status("a", JobStatus.SUCCEEDED)
    store.create("c", {"source": "x"}, most_active=2)
    redis_client.delete(keys.job("b"))  # gone under the store's feet (evicted, deleted by hand)
    store.create("d", {"source": "x"}, most_active=2)
    with pytest.raises(TooManyJobsError):
        store.create("e", {"source": "x"}, most_active=2)
    store.create("e", {"source": "x"})  # no limit given: none applies
    assert redis_client.smembers(keys.active_jobs()) == {"", "c", "d", "e"}


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


def _all_keys_written(client: redis.Redis, keys: Keys, job_id: str) -> JobStore:
    """A job with every one of its keys, each by its real writer: hash and events (the store),
    masks, state and preview (the sink), control (a command)."""
    store = JobStore(client, keys)
    store.create(job_id, {"source": "a.mp4"}, keep_s=100)
    store.set_status(job_id, JobStatus.RUNNING)
    RedisSink(client, keys, job_id).publish(make_result(0, preview=True), {"version": 1, "tracks": []})
    send(client, keys, job_id, Command("stop"))
    TrackSlots(client, keys, 64).take(job_id, 1, [])
    assert client.exists(*keys.of_job(job_id)) == len(keys.of_job(job_id))
    return store


def _ttls(client: redis.Redis, keys: Keys, job_id: str) -> list[int]:
    return [int(client.ttl(k)) for k in keys.of_job(job_id)]  # type: ignore[arg-type]


@pytest.mark.parametrize("ending", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_a_terminal_status_sets_the_ttl_of_every_key_and_not_before(
    redis_client: redis.Redis, keys: Keys, ending: JobStatus
) -> None:
    store = _all_keys_written(redis_client, keys, "j")
    assert _ttls(redis_client, keys, "j") == [-1] * len(keys.of_job("j"))  # queued, then running: no TTL
    store.set_status("j", ending, "why" if ending is not JobStatus.SUCCEEDED else None)
    # The control stream goes (an ended job reads no command; see _STATUS); every other key expires.
    assert redis_client.exists(keys.control("j")) == 0
    ttls = [int(redis_client.ttl(k)) for k in keys.of_job("j") if k != keys.control("j")]  # type: ignore[arg-type]
    assert all(90 < t <= 100 for t in ttls), ttls
    info = store.get("j")
    assert info.keep_s == 100 and info.expires == pytest.approx(info.finished + 100)  # type: ignore[operator]


def test_a_job_that_runs_again_keeps_its_keys(redis_client: redis.Redis, keys: Keys) -> None:
    store = _all_keys_written(redis_client, keys, "j")
    store.set_status("j", JobStatus.CANCELLED, "interrupted")
    store.set_status("j", JobStatus.RUNNING)  # resumed (samstream run with its id)
    kept = [k for k in keys.of_job("j") if k != keys.control("j")]  # an ended job's control stream goes
    assert [int(redis_client.ttl(k)) for k in kept] == [-1] * len(kept)  # type: ignore[arg-type]
    assert store.get("j").expires is None
    store.set_keep("j", 3600)  # the run that resumed it asked for another keep
    store.set_status("j", JobStatus.SUCCEEDED)
    assert all(3590 < int(redis_client.ttl(k)) <= 3600 for k in kept)  # type: ignore[arg-type]


def test_a_job_kept_for_ever_gets_no_ttl(redis_client: redis.Redis, keys: Keys) -> None:
    store = JobStore(redis_client, keys)
    store.create("j", {}, keep_s=None)
    store.set_status("j", JobStatus.RUNNING)
    store.set_status("j", JobStatus.SUCCEEDED)
    assert _ttls(redis_client, keys, "j")[0] == -1 and store.get("j").expires is None
    assert store.get("j").keep_s is None
    with pytest.raises(InvalidInputError, match="keep_s"):
        store.create("k", {}, keep_s=0)
    with pytest.raises(InvalidInputError, match="keep_s"):
        store.set_keep("j", -5)


@pytest.mark.slow
def test_an_expired_job_leaves_the_listing_and_no_key(redis_client: redis.Redis, keys: Keys) -> None:
    store = JobStore(redis_client, keys)
    store.create("gone", {}, keep_s=1)
    store.create("stays", {}, keep_s=1)
    store.create("again", {}, keep_s=1)
    store.set_status("gone", JobStatus.CANCELLED, "cancelled on request")
    # A frame published as the job was cancelled makes its masks stream after the TTL was set:
    # it must go with the job all the same.
    RedisSink(redis_client, keys, "gone").publish(make_result(0), None)
    store.set_status("again", JobStatus.FAILED, "x")
    store.set_status("again", JobStatus.RUNNING)
    time.sleep(2.2)
    assert [i.job_id for i in store.list()] == ["stays", "again"]
    assert redis_client.zrange(keys.jobs_index(), 0, -1) == ["stays", "again"]
    assert redis_client.exists(*keys.of_job("gone")) == 0
    with pytest.raises(JobError, match="'gone'"):
        store.get("gone")


def test_delete_removes_every_key_of_an_ended_job_only(redis_client: redis.Redis, keys: Keys) -> None:
    store = _all_keys_written(redis_client, keys, "j")
    with pytest.raises(JobError, match="running: cancel it first"):
        store.delete("j")
    assert redis_client.exists(*keys.of_job("j")) == len(keys.of_job("j"))  # refused: nothing touched
    store.create("q", {})
    with pytest.raises(JobError, match="queued: cancel it first"):
        store.delete("q")
    store.set_status("j", JobStatus.CANCELLED, "cancelled on request")
    assert store.delete("j") is True
    assert redis_client.exists(*keys.of_job("j")) == 0
    assert redis_client.zrange(keys.jobs_index(), 0, -1) == ["q"]
    assert store.delete("j") is False  # no such job
    assert [i.job_id for i in store.list()] == ["q"]


def test_status_events_are_trimmed(
    redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_module, "EVENTS_MAXLEN", 100)
    store = JobStore(redis_client, keys)
    store.create("j", {})
    for _ in range(200):
        store.set_status("j", JobStatus.RUNNING)
        store.set_status("j", JobStatus.FAILED, "x")
    n = redis_client.xlen(keys.events("j"))
    assert 100 <= n <= 100 + 200, n  # MAXLEN ~ trims whole macro-nodes (100 entries by default)
    assert [e.detail for e in read_events(redis_client, keys, "j")][-2:] == ["running", "failed"]


def test_delete_frees_a_redis_that_refuses_writes(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        client = connect(server.url)
        keys = Keys()
        store = _all_keys_written(client, keys, "old")
        store.set_status("old", JobStatus.SUCCEEDED)
        client.config_set("maxmemory", 1)  # full: noeviction refuses every write that adds data
        with pytest.raises(RedisUnavailableError, match="OOM"):
            store.create("new", {})
        assert store.delete("old") is True
        assert client.exists(*keys.of_job("old")) == 0 and client.zcard(keys.jobs_index()) == 0
        client.close()
