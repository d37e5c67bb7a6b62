"""The track decoder stage: one job's tracks on each frame, in frame order, published exactly once.

The plain class behind the decoder worker. It owns the job's :class:`~pipeline.tracking.Tracker`,
turns each frame's masks into COCO RLE and hands the result, with the tracker's snapshot, to a
:class:`ResultSink` (Redis in production). A frame at or before the last published one is skipped,
so a retried or replayed call publishes nothing twice.

The tracker's state (a track's logits are 256 KB) is checkpointed with every ``checkpoint_every``-th
published frame, and with the frame after any track command, not with every frame. A job resumed
after a stop restores the last checkpoint and is fed again the frames after it: they go through
the tracker (the same model on the same frames gives the same state) without being published
again, so the output equals that of a job that never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.errors import InvalidInputError
from pipeline.frames import EncodedFrame, FrameResult, TrackMask
from pipeline.masks import encode_rle
from pipeline.prompts import Prompt, TrackSpec
from pipeline.tracking import Tracker, TrackEvent, TrackingConfig
from pipeline.tracking.tracker import Segmenter, TrackPromptError

# Checkpoint the tracker with every n-th published frame: at most this many frames are replayed on
# resume, and about 1/n of the state's bytes (256 KB a track) are written.
CHECKPOINT_EVERY = 30


class ResultSink(Protocol):
    """Where a job's results go."""

    def publish_many(self, items: Sequence[tuple[FrameResult, Mapping[str, Any] | None]]) -> list[bool]:
        """Publish frames' results in order, each with the tracker state after it when given (a
        checkpoint); for each, False if the frame was published before.

        The snapshot is the tracker's with ``binary=True``: the logits are raw bytes.
        """
        ...

    def resume_point(self) -> tuple[int | None, int | None, Mapping[str, Any] | None]:
        """The last published frame, the frame of the last checkpoint and its tracker snapshot."""
        ...

    def event(self, type: str, *, frame: int | None, track: int | None, detail: str | None) -> None: ...


@dataclass(frozen=True)
class FrameSummary:
    """What the driver learns about a processed frame (small: no masks)."""

    index: int
    published: bool
    capture_time: float
    publish_time: float
    active_tracks: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Prepared:
    """A frame decoded and ready to publish (``result`` None: published before)."""

    frame: EncodedFrame
    timings: dict[str, float]
    result: FrameResult | None = None
    snapshot: Mapping[str, Any] | None = None
    events: list[TrackEvent] = field(default_factory=list)
    active: int = 0


class TrackDecoder:
    """Follows a job's tracks frame after frame and publishes each frame's masks.

    Args:
        tracks: the job's tracks.
        segmenter: decodes prompts on an embedding (``MobileSam`` or a stub).
        sink: where results go; its resume point restores the tracker after a restart.
        config: tracking thresholds.
        checkpoint_every: store the tracker's state with every n-th published frame (1: each).
    """

    def __init__(
        self,
        tracks: Sequence[TrackSpec],
        segmenter: Segmenter,
        sink: ResultSink,
        config: TrackingConfig | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        if checkpoint_every < 1:
            raise InvalidInputError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        self.sink = sink
        self.tracker = Tracker(segmenter, config)
        last, checkpoint, snapshot = sink.resume_point()
        if snapshot is not None:
            self.tracker.restore(snapshot)
        else:
            checkpoint = None
            for spec in tracks:
                self.tracker.add(spec)
        self.last_published = last
        # Frames after the checkpoint and up to the last published one are replayed, not published.
        self.replay_after = checkpoint if last is not None else None
        self.every = checkpoint_every
        self.since_checkpoint: int | None = None  # published frames since the last checkpoint

    def control(self, cmd: str, track: int, prompt: Prompt | None = None) -> None:
        """Add, remove or re-prompt a track from the next processed frame on (live jobs).

        A command that cannot apply (an unknown id, an id taken) is reported as an ``error`` event,
        not raised: a live job goes on.
        """
        self.since_checkpoint = None  # the next frame's state is checkpointed
        try:
            if cmd == "add" and prompt is not None:
                self.tracker.add(track, prompt, start_frame=0)
            elif cmd == "remove":
                self.tracker.remove(track)
            elif cmd == "reprompt" and prompt is not None:
                self.tracker.reprompt(track, prompt)
            else:
                raise InvalidInputError(f"unknown track command {cmd!r}")
        except InvalidInputError as exc:
            self.sink.event("error", frame=None, track=track, detail=str(exc))

    def process(self, frames: Sequence[EncodedFrame]) -> list[FrameSummary]:
        """Decode, encode to RLE and publish each frame (in the given order, which must be increasing).

        The batch's frames are published together (one round trip to Redis), then their events.
        """
        prepared = [self._prepare(f) for f in frames]
        ready = [(p.result, p.snapshot) for p in prepared if p.result is not None]
        start = time.perf_counter()
        published = self.sink.publish_many(ready)
        took = (time.perf_counter() - start) / max(1, len(ready))
        now = time.time()
        summaries = []
        flags = iter(published)
        for p in prepared:
            if p.result is None:
                summaries.append(FrameSummary(p.frame.index, False, p.frame.capture_time, now, 0, p.timings))
                continue
            for e in p.events:
                self._event(e)
            p.timings["publish"] = took
            summaries.append(
                FrameSummary(p.frame.index, next(flags), p.frame.capture_time, now, p.active, p.timings)
            )
        return summaries

    def _prepare(self, frame: EncodedFrame) -> _Prepared:
        timings = dict(frame.timings)
        if self.last_published is not None and frame.index <= self.last_published:
            if self.replay_after is not None and frame.index > self.replay_after:
                self._step(frame, replay=True)  # published already: bring the tracker up to it
            return _Prepared(frame, timings)
        start = time.perf_counter()
        results, events = self._step(frame, replay=False)
        timings["mask_decode"] = time.perf_counter() - start

        start = time.perf_counter()
        tracks = tuple(
            TrackMask(
                r.track_id, r.status.value, float(r.score), r.box, encode_rle(r.mask, r.box or (0, 0, 0, 0))
            )
            for r in results
        )
        height, width = frame.original_size
        result = FrameResult(frame.index, frame.pts, frame.capture_time, width, height, tracks, timings)
        checkpoint = self.since_checkpoint is None or self.since_checkpoint + 1 >= self.every
        snapshot = self.tracker.snapshot(binary=True) if checkpoint else None
        self.since_checkpoint = 0 if checkpoint else (self.since_checkpoint or 0) + 1
        timings["postprocess"] = time.perf_counter() - start
        self.last_published = frame.index
        active = sum(1 for r in results if r.status.value == "active")
        return _Prepared(frame, timings, result, snapshot, events, active)

    def _step(self, frame: EncodedFrame, replay: bool) -> tuple[list[Any], list[TrackEvent]]:
        while True:
            try:
                return self.tracker.step(frame.index, frame.embedding)
            except TrackPromptError as exc:
                # A prompt that does not fit the frame (given while the job runs): drop that track,
                # say why (once: not again when replaying), and go on with the others.
                self.tracker.remove(exc.track_id)
                if not replay:
                    self.sink.event("error", frame=frame.index, track=exc.track_id, detail=str(exc))

    def _event(self, e: TrackEvent) -> None:
        self.sink.event(f"track_{e.kind}", frame=e.frame_index, track=e.track_id, detail=e.detail or None)
