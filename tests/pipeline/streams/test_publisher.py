"""A job's masks and events streams on a real Redis: each frame once, in order, resumable, trimmed.

Frames are published the one way production does (the sink's script); events by the Publisher.
"""

from __future__ import annotations

import pytest
import redis

from pipeline.errors import InvalidInputError
from pipeline.streams import EmbeddedRedis, Keys, MaskReader, Publisher, read_events
from pipeline.streams.retention import EVENTS_MAXLEN
from tests.pipeline.streams.conftest import make_result, running_job

pytestmark = pytest.mark.integration


def test_a_frame_is_published_exactly_once(redis_client: redis.Redis, keys: Keys) -> None:
    sink = running_job(redis_client, keys, "job1")
    pub = Publisher(redis_client, keys, "job1")
    assert pub.last_published_frame() is None
    assert sink.publish(make_result(5), None) is True
    assert sink.publish(make_result(5), None) is False  # replayed: Redis refuses the ID
    assert sink.publish(make_result(3), None) is False  # at or below the top: counted as published
    assert pub.last_published_frame() == 5
    entries = list(MaskReader(redis_client, keys, "job1").read())
    assert [eid for eid, _ in entries] == ["5-1"]
    assert entries[0][1] == make_result(5)


def test_frame_zero_and_order_and_resume(redis_client: redis.Redis, keys: Keys) -> None:
    sink = running_job(redis_client, keys, "job2")
    frames = [0, 1, 2, 4, 7, 8, 9]  # a stride or dropped frames leave gaps
    for f in frames:
        assert sink.publish(make_result(f), None)
    reader = MaskReader(redis_client, keys, "job2")
    assert reader.count() == len(frames)
    seen = list(reader.read(count=2))  # several round trips
    assert [eid for eid, _ in seen] == [f"{f}-1" for f in frames]
    assert [r.frame_index for _, r in seen] == frames
    assert all(r == make_result(f) for f, (_, r) in zip(frames, seen, strict=True))
    rest = list(reader.read(start_after="4-1"))
    assert [r.frame_index for _, r in rest] == [7, 8, 9]
    assert list(reader.read(start_after="9-1")) == []
    with pytest.raises(InvalidInputError, match="start_after"):
        list(reader.read(start_after="frame 4"))


def test_notice_reaches_the_reader(redis_client: redis.Redis, keys: Keys) -> None:
    running_job(redis_client, keys, "job3", notice="random weights").publish(make_result(0), None)
    running_job(redis_client, keys, "job3b").publish(make_result(0), None)
    entries = [
        *MaskReader(redis_client, keys, "job3").read_entries(),
        *MaskReader(redis_client, keys, "job3b").read_entries(),
    ]
    assert [e.notice for e in entries] == ["random weights", None]
    assert all(e.publish_time > 1.7e9 for e in entries)


def test_maxlen_trims_approximately(redis_client: redis.Redis, keys: Keys) -> None:
    sink = running_job(redis_client, keys, "live", maxlen=10)
    pipe_frames = 600
    sink.publish_many([(make_result(f, n_tracks=0), None) for f in range(pipe_frames)])
    reader = MaskReader(redis_client, keys, "live")
    n = reader.count()
    assert 10 <= n <= 10 + 200, n  # MAXLEN ~ trims whole macro-nodes (100 entries by default)
    frames = [r.frame_index for _, r in reader.read()]
    assert frames == list(range(pipe_frames - n, pipe_frames))
    assert sink.publish(make_result(0, n_tracks=0), None) is False  # trimmed, yet still refused
    with pytest.raises(InvalidInputError, match="events_maxlen"):
        Publisher(redis_client, keys, "live", events_maxlen=0)


def test_events(redis_client: redis.Redis, keys: Keys) -> None:
    pub = Publisher(redis_client, keys, "job4")
    first = pub.event("track_lost", frame=12, track=2, detail="iou below 0.5", data={"iou": 0.25})
    pub.event("reconnect", detail="rtsp://cam/1")
    events = list(read_events(redis_client, keys, "job4"))
    assert [e.type for e in events] == ["track_lost", "reconnect"]
    assert events[0].entry_id == first
    assert (events[0].frame, events[0].track, events[0].data) == (12, 2, {"iou": 0.25})
    assert [e.type for e in read_events(redis_client, keys, "job4", start_after=first)] == ["reconnect"]


def test_events_are_trimmed_by_default(redis_client: redis.Redis, keys: Keys) -> None:
    pub = Publisher(redis_client, keys, "chatty")  # a long live job: tracks lost and found for ever
    for i in range(EVENTS_MAXLEN + 300):
        pub.event("track_lost", frame=i, track=1)
    n = redis_client.xlen(keys.events("chatty"))
    assert EVENTS_MAXLEN <= n <= EVENTS_MAXLEN + 200, n  # MAXLEN ~: whole macro-nodes of 100
    newest = list(read_events(redis_client, keys, "chatty"))[-1]
    assert newest.frame == EVENTS_MAXLEN + 299
    kept = Publisher(redis_client, keys, "kept", events_maxlen=None)
    for i in range(300):
        kept.event("track_lost", frame=i)
    assert redis_client.xlen(keys.events("kept")) == 300


def test_works_with_a_bytes_client(redis_server: EmbeddedRedis, keys: Keys) -> None:
    client = redis.Redis.from_url(redis_server.url)
    assert running_job(client, keys, "job5").publish(make_result(2), None)
    assert Publisher(client, keys, "job5").last_published_frame() == 2
    assert list(MaskReader(client, keys, "job5").read()) == [("2-1", make_result(2))]
    client.close()
