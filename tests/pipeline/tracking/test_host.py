"""The tracker host: many jobs' tracks decoded together, published in one round trip, each job apart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import pytest
import redis

from pipeline.frames import EncodedFrame
from pipeline.ledger import JobStore
from pipeline.model.types import DecodeRequest, Embedding, MaskBatch
from pipeline.streams import EmbeddedRedis, Keys, MaskReader, connect
from pipeline.tracking.host import TrackerHost, TrackSetup
from tests.pipeline.jobs.conftest import SIZE, stub, tracks


class Batching:
    """The stub segmenter with a ``decode_many``: records how many frames each call carried."""

    def __init__(self) -> None:
        self.inner = stub()
        self.low_res_size = self.inner.low_res_size
        self.calls: list[int] = []

    def decode(self, embedding: Embedding, requests: Sequence[DecodeRequest]) -> MaskBatch:
        raise AssertionError("a host decodes a round's frames together")

    def decode_many(self, items: Sequence[tuple[Embedding, Sequence[DecodeRequest]]]) -> list[MaskBatch]:
        self.calls.append(len(items))
        return [self.inner.decode(e, r) for e, r in items]


@pytest.fixture
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobStore]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        client = connect(server.url)
        yield JobStore(client, Keys(prefix=f"test-{uuid.uuid4().hex[:8]}:"))
        client.close()


def _frames(job: str, indices: range) -> list[EncodedFrame]:
    s = stub()
    return [EncodedFrame(t, t / 30, 0.0, SIZE, s.embedding(t), {}, job) for t in indices]


def _entries(client: redis.Redis, keys: Keys, job: str) -> list[int]:
    return [e.frame_index for _, e in MaskReader(client, keys, job).read()]


def test_a_round_decodes_every_jobs_frame_in_one_call_and_publishes_each_job(store: JobStore) -> None:
    model = Batching()
    host = TrackerHost(lambda size, n: model, store.client, store.keys)
    setups = {}
    for job in ("a", "b", "c"):
        store.create(job, {"source": job})
        setups[job] = TrackSetup(tracks(), image_size=256)
    frames = _frames("a", range(0, 4)) + _frames("b", range(0, 4)) + _frames("c", range(0, 2))
    replies = host.process(setups, frames)
    assert [r.job_id for r in replies] == ["a", "b", "c"]
    assert [[s.index for s in r.summaries] for r in replies] == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1]]
    assert all(s.published for r in replies for s in r.summaries)
    assert model.calls == [3, 3, 2, 2]  # one call a round: the first frame of every job, then the next…
    for job, n in (("a", 4), ("b", 4), ("c", 2)):
        assert _entries(store.client, store.keys, job) == list(range(n))
    # Frames of a job the call has no setup for (it ended) are left alone.
    replies = host.process({"a": setups["a"]}, _frames("a", range(4, 6)) + _frames("b", range(4, 6)))
    assert [r.job_id for r in replies] == ["a"]
    assert _entries(store.client, store.keys, "b") == list(range(4))


def test_one_jobs_trouble_is_its_own(store: JobStore) -> None:
    host = TrackerHost(lambda size, n: stub(), store.client, store.keys)
    store.create("ok", {"source": "ok"})
    setups = {"ok": TrackSetup(tracks(), image_size=256), "gone": TrackSetup(tracks(), image_size=256)}
    replies = host.process(setups, _frames("gone", range(3)) + _frames("ok", range(3)))
    by_job = {r.job_id: r for r in replies}
    assert by_job["gone"].error and "no such job" in by_job["gone"].error
    assert by_job["ok"].error is None and [s.index for s in by_job["ok"].summaries] == [0, 1, 2]
    assert _entries(store.client, store.keys, "ok") == [0, 1, 2]


def test_a_new_host_asks_file_jobs_to_rewind_to_their_checkpoint(store: JobStore) -> None:
    store.create("job", {"source": "job"})
    setups = {"job": TrackSetup(tracks(), image_size=256)}
    first = TrackerHost(lambda size, n: stub(), store.client, store.keys, checkpoint_every=10)
    first.process(setups, _frames("job", range(25)))  # checkpoints at 0, 10, 20
    again = TrackerHost(lambda size, n: stub(), store.client, store.keys, checkpoint_every=10)
    (reply,) = again.process(setups, _frames("job", range(25, 30)))
    assert reply.rewind == (20,) and not any(s.published for s in reply.summaries)
    (reply,) = again.process(setups, _frames("job", range(21, 30)))  # read again after frame 20
    assert reply.rewind is None
    assert [s.index for s in reply.summaries if s.published] == list(range(25, 30))
    assert _entries(store.client, store.keys, "job") == list(range(30))


def test_commands_for_a_job_the_host_has_not_met_wait_for_it(store: JobStore) -> None:
    from pipeline.prompts import Prompt

    store.create("live", {"source": "live"})
    host = TrackerHost(lambda size, n: stub(), store.client, store.keys)
    host.control("live", "add", 3, Prompt(box=(200, 20, 260, 80)))
    setups = {"live": TrackSetup(tracks(), image_size=256, live=True)}
    (reply,) = host.process(setups, _frames("live", range(0, 10, 3)))
    assert reply.tracks == 3
    ids = [[t.track_id for t in e.tracks] for _, e in MaskReader(store.client, store.keys, "live").read()]
    assert ids == [[1, 2, 3]] * 4


def test_a_split_jobs_owner_publishes_each_frame_whole_or_not_at_all(store: JobStore) -> None:
    from dataclasses import replace

    from pipeline.tracking.host import OWNER, PART

    store.create("job", {"source": "job"})
    every = tracks(4)
    whole = TrackSetup(every, image_size=256)
    owner = replace(whole, tracks=every[:2], role=OWNER, others=frozenset({3, 4}))
    part = replace(whole, tracks=every[2:], role=PART)
    owner_host = TrackerHost(lambda size, n: stub(), store.client, store.keys, checkpoint_every=10)
    part_host = TrackerHost(lambda size, n: stub(), store.client, store.keys, checkpoint_every=10)
    parts = part_host.process({"job": part}, _frames("job", range(12)))
    assert parts[0].parts and not _entries(store.client, store.keys, "job")  # a part publishes nothing
    (reply,) = owner_host.process({"job": owner}, _frames("job", range(12)), {"job": parts})
    assert [s.index for s in reply.summaries if s.published] == list(range(12))
    assert reply.tracks == 4  # the owner's two and the part's two
    entries = list(MaskReader(store.client, store.keys, "job").read())
    assert [[t.track_id for t in e.tracks] for _, e in entries] == [[1, 2, 3, 4]] * 12
    # A part that lacks frames: those are not published, and the owner asks for a rewind.
    parts = part_host.process({"job": part}, _frames("job", range(12, 15)))
    (reply,) = owner_host.process({"job": owner}, _frames("job", range(12, 18)), {"job": parts})
    assert [s.index for s in reply.summaries if s.published] == [12, 13, 14]
    assert reply.rewind is not None
    assert _entries(store.client, store.keys, "job") == list(range(15))


def test_frames_the_encoder_could_not_encode_fail_their_job_alone(store: JobStore) -> None:
    host = TrackerHost(lambda size, n: stub(), store.client, store.keys)
    for job in ("ok", "bad"):
        store.create(job, {"source": job})
    setups = {job: TrackSetup(tracks(), image_size=256) for job in ("ok", "bad")}
    error = "the encoder cannot encode this job's frames: image size must be a multiple of 16"
    bad = [EncodedFrame(t, t / 30, 0.0, SIZE, None, {}, "bad", error) for t in range(3)]
    replies = host.process(setups, _frames("ok", range(3)) + bad)
    by_job = {r.job_id: r for r in replies}
    assert by_job["bad"].error == error and by_job["bad"].summaries == ()
    assert by_job["ok"].error is None and [s.index for s in by_job["ok"].summaries] == [0, 1, 2]
    assert _entries(store.client, store.keys, "ok") == [0, 1, 2]
    assert _entries(store.client, store.keys, "bad") == []
