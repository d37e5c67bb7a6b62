"""Exactly-once and resume with discovery: a file job stopped between two discovery frames, after
it has started tracks of its own, resumes from its checkpoint in Redis to the same tracks, masks and
events as a run that never stopped (the reference segmenter on objects that enter one by one)."""

from __future__ import annotations

import uuid

import pytest
import redis

from pipeline.evaluation.reference import ReferenceSegmenter
from pipeline.frames import EncodedFrame
from pipeline.ledger import JobStore
from pipeline.ledger.resume import load
from pipeline.ledger.sink import RedisSink
from pipeline.streams import Keys, MaskReader, read_events
from pipeline.tracking.discovery import DiscoveryConfig
from pipeline.tracking.stage import TrackDecoder
from tests.pipeline.tracking.test_discovery import _entering

pytestmark = pytest.mark.slow

SEGMENTER = ReferenceSegmenter(256)
SCENE = _entering(count=4, seconds=8.0)
DISCOVERY = DiscoveryConfig(every_s=0.5, grid=16, forget_s=1.0)


def _frames(indices: range) -> list[EncodedFrame]:
    out = []
    for i in indices:
        image, _ = SCENE.render(i)
        [embedding] = SEGMENTER.encode([image])
        out.append(EncodedFrame(i, SCENE.times[i], 1.7e9 + i, image.shape[:2], embedding, {}))
    return out


def _decoder(client: redis.Redis, keys: Keys, job: str) -> TrackDecoder:
    return TrackDecoder([], SEGMENTER, RedisSink(client, keys, job), checkpoint_every=10, discovery=DISCOVERY)


def _masks(client: redis.Redis, keys: Keys, job: str) -> list[tuple]:
    return [
        (r.frame_index, [(t.track_id, t.state, t.score, t.bbox, t.rle["counts"]) for t in r.tracks])
        for _, r in MaskReader(client, keys, job).read()
    ]


def _track_events(client: redis.Redis, keys: Keys, job: str) -> list[tuple]:
    return [
        (e.type, e.frame, e.track, e.data)
        for e in read_events(client, keys, job)
        if e.type.startswith("track_")
    ]


def test_a_job_stopped_after_discovering_resumes_to_the_same_tracks(redis_client: redis.Redis) -> None:
    keys = Keys(f"resume-discovery-{uuid.uuid4().hex[:8]}:")
    store = JobStore(redis_client, keys)
    for job in ("whole", "broken"):
        store.create(job, {"source": "entering.mp4"})
    frames = _frames(range(len(SCENE.times)))

    _decoder(redis_client, keys, "whole").process(frames)
    whole = _masks(redis_client, keys, "whole")
    events = _track_events(redis_client, keys, "whole")
    kinds = [e[0] for e in events]
    assert kinds.count("track_discovered") == 4 and "track_ended" in kinds, kinds

    # Stopped at frame 33 (after the checkpoint of frame 30, between the looks at 3.0 s and 3.5 s).
    _decoder(redis_client, keys, "broken").process(frames[:34])
    resume = load(redis_client, keys, "broken")
    assert (resume.last_published, resume.checkpoint) == (33, 30)
    assert resume.snapshot is not None and resume.snapshot["discovery"]["tracks"]

    resumed = _decoder(redis_client, keys, "broken")
    summaries = resumed.process(frames[31:])  # the driver reads again after the checkpoint
    assert [s.published for s in summaries] == [False] * 3 + [True] * (len(frames) - 34)
    assert _masks(redis_client, keys, "broken") == whole
    assert _track_events(redis_client, keys, "broken") == events
