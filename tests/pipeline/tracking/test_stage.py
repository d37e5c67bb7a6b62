"""The track decoder: checkpoints of the tracker every n frames, and a resume that replays the
frames after the last checkpoint so that the output equals a run that never stopped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from pipeline.errors import InvalidInputError
from pipeline.frames import EncodedFrame, FrameResult
from pipeline.ledger.resume import ResumePoint
from pipeline.prompts import Prompt, TrackSpec
from pipeline.tracking.stage import TrackDecoder
from tests.fixtures.stub_segmenter import StubSegmenter, disc

SIZE = (240, 320)


def moving(t: int) -> tuple[float, float]:
    return 60 + 2 * t, 100 + t


class MemorySink:
    """A sink in memory: entries, the last checkpoint, and how many bytes of state were written."""

    def __init__(self) -> None:
        self.results: dict[int, FrameResult] = {}
        self.checkpoints: list[int] = []
        self.state: tuple[int, Mapping[str, Any]] | None = None
        self.events: list[tuple[str, int | None]] = []

    def publish(self, result: FrameResult, snapshot: Mapping[str, Any] | None) -> bool:
        if self.results and result.frame_index <= max(self.results):
            return False
        self.results[result.frame_index] = result
        if snapshot is not None:
            self.state = (result.frame_index, snapshot)
            self.checkpoints.append(result.frame_index)
        return True

    def publish_many(self, items: Sequence[tuple[FrameResult, Mapping[str, Any] | None]]) -> list[bool]:
        return [self.publish(result, snapshot) for result, snapshot in items]

    def resume_point(self) -> ResumePoint:
        last = max(self.results) if self.results else None
        if self.state is None:
            return ResumePoint(last)
        return ResumePoint(last, self.state[0], self.state[1])

    def event(
        self, type: str, *, frame: int | None, track: int | None, detail: str | None, data: Any = None
    ) -> None:
        self.events.append((type, frame))


def _frames(stub: StubSegmenter, indices: range) -> list[EncodedFrame]:
    return [EncodedFrame(t, t / 30, 0.0, SIZE, stub.embedding(t), {}) for t in indices]


def _tracks() -> tuple[TrackSpec, ...]:
    return (
        TrackSpec(1, Prompt(points=(moving(0),), labels=(1,))),
        TrackSpec(2, Prompt(box=(200, 20, 260, 80))),
    )


def _stub() -> StubSegmenter:
    return StubSegmenter([disc(SIZE, moving, 18), disc(SIZE, lambda t: (230, 50), 25)], SIZE)


def _masks(sink: MemorySink) -> dict[int, list[Any]]:
    return {f: [(m.track_id, m.state, m.rle["counts"]) for m in r.tracks] for f, r in sink.results.items()}


def test_the_state_is_checkpointed_every_n_frames_and_after_a_track_command() -> None:
    stub, sink = _stub(), MemorySink()
    decoder = TrackDecoder(_tracks(), stub, sink, checkpoint_every=10)
    decoder.process(_frames(stub, range(25)))
    assert sink.checkpoints == [0, 10, 20]
    decoder.control("remove", 2)
    decoder.process(_frames(stub, range(25, 27)))
    assert sink.checkpoints == [0, 10, 20, 25]


def test_resume_replays_from_the_checkpoint_and_equals_an_uninterrupted_run() -> None:
    stub = _stub()
    whole = MemorySink()
    TrackDecoder(_tracks(), stub, whole, checkpoint_every=10).process(_frames(stub, range(40)))

    stub2, broken = _stub(), MemorySink()
    TrackDecoder(_tracks(), stub2, broken, checkpoint_every=10).process(_frames(stub2, range(27)))
    assert broken.checkpoints == [0, 10, 20]
    resumed = TrackDecoder(_tracks(), stub2, broken, checkpoint_every=10)
    calls = len(stub2.calls)
    summaries = resumed.process(_frames(stub2, range(21, 40)))  # the driver reads after the checkpoint
    assert [s.published for s in summaries] == [False] * 6 + [True] * 13  # 21-26 replayed, not again
    assert len(stub2.calls) - calls == 19  # the replayed frames went through the tracker
    assert _masks(broken) == _masks(whole)
    assert sorted(broken.results) == list(range(40))


def test_checkpoint_every_must_be_positive() -> None:
    with pytest.raises(InvalidInputError):
        TrackDecoder(_tracks(), _stub(), MemorySink(), checkpoint_every=0)


def test_a_frame_of_another_size_switches_the_model_and_the_tracks_carry_over() -> None:
    """An adaptive stream's frames move between encoder sizes: each is decoded by its size's model,
    every entry says its size, and the tracks go on (their logits resampled)."""
    objects = [disc(SIZE, moving, 18), disc(SIZE, lambda t: (230, 50), 25)]
    models = {size: StubSegmenter(objects, SIZE, image_size=size) for size in (256, 512)}
    asked: list[int] = []

    def segmenters(size: int) -> StubSegmenter:
        asked.append(size)
        return models[size]

    sink = MemorySink()
    decoder = TrackDecoder(_tracks(), models[512], sink, image_size=512, segmenters=segmenters)
    sizes = {t: 512 if t < 4 or t >= 8 else 256 for t in range(12)}
    frames = [
        EncodedFrame(t, t / 30, 0.0, SIZE, models[sizes[t]].embedding(t), {}, image_size=sizes[t])
        for t in range(12)
    ]
    decoder.process(frames)
    assert asked == [256, 512]  # one switch down, one back up
    assert [sink.results[t].image_size for t in range(12)] == [sizes[t] for t in range(12)]
    assert all(m.state == "active" for r in sink.results.values() for m in r.tracks)
    # the masks match a run that stayed at 512 (the stub draws the same discs at any size)
    still = MemorySink()
    TrackDecoder(_tracks(), models[512], still, image_size=512).process(_frames(models[512], range(12)))
    assert _masks(sink) == _masks(still)
    assert models[256].calls and all(
        r.mask_input is None or r.mask_input.shape == (64, 64) for call in models[256].calls for r in call
    )
