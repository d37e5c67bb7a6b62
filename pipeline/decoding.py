"""The track decoder stage: one job's tracks on each frame, in frame order, published exactly once.

The plain class behind the decoder worker. It owns the job's :class:`~pipeline.tracking.Tracker`,
turns each frame's masks into COCO RLE and hands the result, with the tracker's snapshot, to a
:class:`ResultSink` (Redis in production). A frame at or before the last published one is skipped,
so a retried or replayed call publishes nothing twice.
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


class ResultSink(Protocol):
    """Where a job's results go."""

    def publish(self, result: FrameResult, snapshot: Mapping[str, Any]) -> bool:
        """Publish one frame's result with the tracker state after it; False if it was published before.

        The snapshot is the tracker's with ``binary=True``: the logits are raw bytes.
        """
        ...

    def resume_point(self) -> tuple[int | None, Mapping[str, Any] | None]:
        """The last published frame and the tracker snapshot stored with it."""
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


class TrackDecoder:
    """Follows a job's tracks frame after frame and publishes each frame's masks.

    Args:
        tracks: the job's tracks.
        segmenter: decodes prompts on an embedding (``MobileSam`` or a stub).
        sink: where results go; its resume point restores the tracker after a restart.
        config: tracking thresholds.
    """

    def __init__(
        self,
        tracks: Sequence[TrackSpec],
        segmenter: Segmenter,
        sink: ResultSink,
        config: TrackingConfig | None = None,
    ) -> None:
        self.sink = sink
        self.tracker = Tracker(segmenter, config)
        last, snapshot = sink.resume_point()
        if snapshot is not None:
            self.tracker.restore(snapshot)
        else:
            for spec in tracks:
                self.tracker.add(spec)
        self.last_published = last

    def control(self, cmd: str, track: int, prompt: Prompt | None = None) -> None:
        """Add, remove or re-prompt a track from the next processed frame on (live jobs).

        A command that cannot apply (an unknown id, an id taken) is reported as an ``error`` event,
        not raised: a live job goes on.
        """
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
        """Decode, encode to RLE and publish each frame (in the given order, which must be increasing)."""
        return [self._one(f) for f in frames]

    def _one(self, frame: EncodedFrame) -> FrameSummary:
        if self.last_published is not None and frame.index <= self.last_published:
            now = time.time()
            return FrameSummary(frame.index, False, frame.capture_time, now, 0, dict(frame.timings))
        timings = dict(frame.timings)
        start = time.perf_counter()
        while True:
            try:
                results, events = self.tracker.step(frame.index, frame.embedding)
                break
            except TrackPromptError as exc:
                # A prompt that does not fit the frame (given while the job runs): drop that track,
                # say why, and go on with the others.
                self.tracker.remove(exc.track_id)
                self.sink.event("error", frame=frame.index, track=exc.track_id, detail=str(exc))
        timings["mask_decode"] = time.perf_counter() - start

        start = time.perf_counter()
        tracks = tuple(
            TrackMask(r.track_id, r.status.value, float(r.score), r.box, encode_rle(r.mask)) for r in results
        )
        height, width = frame.original_size
        result = FrameResult(frame.index, frame.pts, frame.capture_time, width, height, tracks, timings)
        timings["postprocess"] = time.perf_counter() - start

        start = time.perf_counter()
        published = self.sink.publish(result, self.tracker.snapshot(binary=True))
        for e in events:
            self._event(e)
        timings["publish"] = time.perf_counter() - start
        self.last_published = frame.index
        active = sum(1 for r in results if r.status.value == "active")
        return FrameSummary(frame.index, published, frame.capture_time, time.time(), active, timings)

    def _event(self, e: TrackEvent) -> None:
        self.sink.event(f"track_{e.kind}", frame=e.frame_index, track=e.track_id, detail=e.detail or None)
