"""The result sink's state key: the tracker snapshot with its logits as raw bytes, read back whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis

from pipeline.frames import FrameResult
from pipeline.ledger import JobStore
from pipeline.ledger.resume import ResumePoint, load
from pipeline.ledger.sink import LostEntriesError, RedisSink, pack_state, publish_jobs, unpack_state
from pipeline.prompts import Prompt
from pipeline.streams import Keys
from pipeline.tracking.state import TrackState


def _snapshot(binary: bool) -> dict[str, object]:
    rng = np.random.default_rng(0)
    tracks = [
        TrackState(
            1, Prompt(points=((10.0, 20.0),), labels=(1,)), logits=rng.standard_normal((64, 64), "f4")
        ),
        TrackState(2, Prompt(box=(1.0, 2.0, 30.0, 40.0))),  # no logits yet
        TrackState(3, Prompt(box=(5.0, 6.0, 50.0, 60.0)), logits=rng.standard_normal((64, 64), "f4")),
    ]
    return {
        "version": 1,
        "last_frame": 7,
        "tracks": [t.to_dict(binary) for t in tracks],
        "pending_events": [{"kind": "reprompted", "track_id": 3, "detail": "a\nb"}],
    }


def test_pack_and_unpack_give_back_the_snapshot() -> None:
    snapshot = _snapshot(binary=True)
    raw = pack_state(7, snapshot)
    assert len(raw) < 2 * 64 * 64 * 4 + 1000  # the logits' bytes as they are, no base64
    assert unpack_state(raw) == {"frame": 7, "tracker": snapshot}
    restored = [TrackState.from_dict(t) for t in unpack_state(raw)["tracker"]["tracks"]]
    original = [TrackState.from_dict(t) for t in snapshot["tracks"]]  # type: ignore[attr-defined]
    for a, b in zip(restored, original, strict=True):
        assert (a.logits is None) == (b.logits is None)
        if a.logits is not None:
            np.testing.assert_array_equal(a.logits, b.logits)


def test_a_state_written_as_plain_json_still_reads() -> None:
    snapshot = _snapshot(binary=False)
    raw = json.dumps({"frame": 7, "tracker": snapshot}, separators=(",", ":")).encode()
    assert unpack_state(raw) == {"frame": 7, "tracker": snapshot}


def test_published_state_comes_back_from_redis(redis_client: redis.Redis, keys: Keys) -> None:
    JobStore(redis_client, keys).create("job", {"source": "clip.mp4"})
    sink = RedisSink(redis_client, keys, "job")
    assert sink.resume_point() == ResumePoint(None, None)
    snapshot = _snapshot(binary=True)
    assert sink.publish(FrameResult(7, 0.25, 1.0, 64, 48, (), {}), snapshot)
    assert not sink.publish(FrameResult(7, 0.25, 1.0, 64, 48, (), {}), snapshot)  # once only
    point = sink.resume_point()
    assert (point.last_published, point.checkpoint, point.snapshot) == (7, 7, snapshot)


def test_frames_without_a_snapshot_keep_the_last_checkpoint(redis_client: redis.Redis, keys: Keys) -> None:
    JobStore(redis_client, keys).create("job", {"source": "clip.mp4"})
    sink = RedisSink(redis_client, keys, "job")
    assert load(redis_client, keys, "job").read_after(live=False) is None
    snapshot = _snapshot(binary=True)
    assert sink.publish(FrameResult(3, None, 1.0, 64, 48, (), {}), snapshot)
    for frame in (4, 5, 6):
        assert sink.publish(FrameResult(frame, None, 1.0, 64, 48, (), {}), None)
    point = sink.resume_point()
    assert (point.last_published, point.checkpoint, point.snapshot) == (6, 3, snapshot)
    assert load(redis_client, keys, "job").read_after(live=False) == 3  # frames 4-6 are replayed
    assert load(redis_client, keys, "job").read_after(live=True) == 6  # a feed goes on from now
    assert JobStore(redis_client, keys).get("job").frames_done == 4


def test_a_batch_publishes_in_one_call_each_frame_once(redis_client: redis.Redis, keys: Keys) -> None:
    JobStore(redis_client, keys).create("job", {"source": "clip.mp4"})
    sink = RedisSink(redis_client, keys, "job")
    snapshot = _snapshot(binary=True)
    assert sink.publish(FrameResult(2, None, 1.0, 64, 48, (), {}), None)
    redis_client.script_flush()  # as after a Redis restart: the script is loaded again
    batch = [
        (FrameResult(f, None, 1.0, 64, 48, (), {}), snapshot if f == 4 else None) for f in (1, 2, 3, 4, 5)
    ]
    assert sink.publish_many(batch) == [False, False, True, True, True]
    entries = redis_client.xrange(keys.masks("job"))
    assert [e[0] for e in entries] == ["2-1", "3-1", "4-1", "5-1"]
    point = sink.resume_point()
    assert (point.last_published, point.checkpoint, point.snapshot) == (5, 4, snapshot)
    assert JobStore(redis_client, keys).get("job").frames_done == 4
    assert sink.publish_many([]) == []


def test_several_jobs_publish_in_one_round_trip_and_one_jobs_trouble_stays_its_own(
    redis_client: redis.Redis, keys: Keys
) -> None:
    store = JobStore(redis_client, keys)
    store.create("a", {"source": "a.mp4"})
    store.create("b", {"source": "b.mp4"})
    sinks = [RedisSink(redis_client, keys, job) for job in ("a", "gone", "b")]
    frames = [[(FrameResult(f, None, 1.0, 64, 48, (), {}), None) for f in range(n)] for n in (3, 2, 4)]
    sinks[2].publish(frames[2][0][0], None)  # b's frame 0 is there already
    done = publish_jobs(redis_client, list(zip(sinks, frames, strict=True)))
    assert done[0] == [True, True, True]
    assert isinstance(done[1], redis.ResponseError) and "no such job" in str(done[1])
    assert done[2] == [False, True, True, True]
    assert [e[0] for e in redis_client.xrange(keys.masks("b"))] == ["0-1", "1-1", "2-1", "3-1"]
    assert redis_client.xlen(keys.masks("gone")) == 0


def test_a_batch_for_a_deleted_job_fails_clearly(redis_client: redis.Redis, keys: Keys) -> None:
    sink = RedisSink(redis_client, keys, "gone")
    with pytest.raises(redis.ResponseError, match="no such job"):
        sink.publish_many([(FrameResult(0, None, 1.0, 64, 48, (), {}), None)])
    assert redis_client.xlen(keys.masks("gone")) == 0


def test_the_checkpoint_frame_is_read_without_the_logits(redis_client: redis.Redis, keys: Keys) -> None:
    from pipeline.ledger.sink import read_state_frame

    JobStore(redis_client, keys).create("job", {"source": "clip.mp4"})
    assert read_state_frame(redis_client, keys, "job") is None
    sink = RedisSink(redis_client, keys, "job")
    assert sink.publish(FrameResult(5, None, 1.0, 64, 48, (), {}), _snapshot(binary=True))
    assert read_state_frame(redis_client, keys, "job") == 5
    assert load(redis_client, keys, "job", with_snapshot=False) == ResumePoint(5, 5)
    redis_client.set(keys.state("job"), json.dumps({"frame": 3, "tracker": _snapshot(binary=False)}))
    assert read_state_frame(redis_client, keys, "job") == 3  # a state written as plain JSON


def test_a_stream_that_lost_published_frames_is_refused_and_nothing_is_written(
    redis_client: redis.Redis, keys: Keys
) -> None:
    JobStore(redis_client, keys).create("job", {"source": "clip.mp4"})
    sink = RedisSink(redis_client, keys, "job")
    sink.resume_point()
    assert (
        sink.publish_many([(FrameResult(i, i / 30, 1.0, 64, 48, (), {}), None) for i in range(5)])
        == [True] * 5
    )
    # Redis loses frames 3 and 4 (as a restart from an older snapshot would): the stream ends at 2.
    redis_client.xdel(keys.masks("job"), "3-1", "4-1")
    redis_client.execute_command("XSETID", keys.masks("job"), "2-1")
    with pytest.raises(LostEntriesError) as lost:
        sink.publish_many([(FrameResult(i, i / 30, 1.0, 64, 48, (), {}), None) for i in (5, 6)])
    assert (lost.value.expected, lost.value.newest) == (4, 2)
    assert "lost published frames" in str(lost.value)
    assert [e[0] for e in redis_client.xrange(keys.masks("job"))] == ["0-1", "1-1", "2-1"]
    # A sink that learns the stream again from the resume point goes on from what Redis holds.
    again = RedisSink(redis_client, keys, "job")
    assert again.resume_point().last_published == 2
    assert again.publish_many([(FrameResult(3, 0.1, 1.0, 64, 48, (), {}), None)]) == [True]


def test_a_frame_published_before_is_not_taken_for_a_loss(redis_client: redis.Redis, keys: Keys) -> None:
    JobStore(redis_client, keys).create("job", {"source": "clip.mp4"})
    first, second = RedisSink(redis_client, keys, "job"), RedisSink(redis_client, keys, "job")
    first.resume_point(), second.resume_point()
    frames = [(FrameResult(i, i / 30, 1.0, 64, 48, (), {}), None) for i in range(4)]
    assert first.publish_many(frames) == [True] * 4
    # A retried call (the same frames, from a sink that had seen none of them) writes nothing again.
    assert second.publish_many(frames[:2]) == [False, False]
    assert second.publish_many(frames[2:]) == [False, False]
    assert len(redis_client.xrange(keys.masks("job"))) == 4
