"""Exactly-once and resume with the tracking state of tracks that hold on: a job stopped while a
track searches for its hidden object resumes, from the checkpoint in Redis, to the same masks as a
run that never stopped (the reference segmenter on the look-alike scene)."""

from __future__ import annotations

import uuid

import redis

from pipeline.evaluation.reference import ReferenceSegmenter
from pipeline.evaluation.scenes import bench_scenes
from pipeline.frames import EncodedFrame
from pipeline.ledger import JobStore
from pipeline.ledger.resume import load
from pipeline.ledger.sink import RedisSink
from pipeline.prompts import TrackSpec
from pipeline.streams import Keys, MaskReader
from pipeline.tracking.stage import TrackDecoder

SEGMENTER = ReferenceSegmenter(1024)
SCENE = next(s for s in bench_scenes() if s.name == "lookalike")
FRAMES = range(70)


def _frames(indices: range) -> list[EncodedFrame]:
    out = []
    for i in indices:
        image, _ = SCENE.render(i)
        [embedding] = SEGMENTER.encode([image])
        out.append(EncodedFrame(i, SCENE.times[i], 1.7e9 + i, image.shape[:2], embedding, {}))
    return out


def _decoder(client: redis.Redis, keys: Keys, job: str) -> TrackDecoder:
    tracks = [TrackSpec(tid, SCENE.prompt(tid)) for tid in SCENE.tracked]
    return TrackDecoder(tracks, SEGMENTER, RedisSink(client, keys, job), checkpoint_every=10)


def _masks(client: redis.Redis, keys: Keys, job: str) -> list[tuple]:
    return [
        (r.frame_index, [(t.track_id, t.state, t.score, t.bbox, t.rle["counts"]) for t in r.tracks])
        for _, r in MaskReader(client, keys, job).read()
    ]


def test_a_job_stopped_while_searching_resumes_to_the_same_masks(redis_client: redis.Redis) -> None:
    keys = Keys(f"resume-search-{uuid.uuid4().hex[:8]}:")
    store = JobStore(redis_client, keys)
    for job in ("whole", "broken"):
        store.create(job, {"source": "lookalike.mp4"})
    frames = _frames(FRAMES)

    _decoder(redis_client, keys, "whole").process(frames)
    whole = _masks(redis_client, keys, "whole")
    states = [dict((t[0], t[1]) for t in tracks)[1] for _, tracks in whole]
    assert "searching" in states and states[-1] == "active"  # hidden behind the wall, then found

    # Stopped at frame 46 (after the checkpoint of frame 40, while the disc is hidden).
    _decoder(redis_client, keys, "broken").process(frames[:47])
    resume = load(redis_client, keys, "broken")
    assert (resume.last_published, resume.checkpoint) == (46, 40)
    assert resume.snapshot is not None
    [track] = resume.snapshot["tracks"]
    assert track["status"] == "searching" and track["memory"] is not None and track["motion"] is not None

    resumed = _decoder(redis_client, keys, "broken")
    summaries = resumed.process(frames[41:])  # the driver reads again after the checkpoint
    assert [s.published for s in summaries] == [False] * 6 + [True] * (len(FRAMES) - 47)
    assert _masks(redis_client, keys, "broken") == whole
