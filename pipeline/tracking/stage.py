"""The tracker stage of one job: its tracks on each frame, in frame order, published exactly once.

A :class:`TrackDecoder` owns one job's :class:`~pipeline.tracking.Tracker`, turns each frame's
masks into COCO RLE and hands the result, with the tracker's snapshot, to a :class:`ResultSink`
(Redis in production). What happens to a frame of a resumed job is the resume rule's
(:mod:`pipeline.ledger.resume`): published frames after the checkpoint are replayed, not published
again; a frame already stepped is ignored, so a retried call publishes nothing twice.

A file job's frames must reach the tracker without a gap (frame t+1 is prompted by frame t's
mask). A decoder that was restarted resumes from the checkpoint, and the first frame it is then
given may lie past it; it answers with a *rewind* (the frame after which the job must be read
again) and ignores frames until the missing ones come.

The tracker's state (a track's logits are 256 KB) is checkpointed with every
``checkpoint_every``-th published frame, and with the frame after any track command.

Processing is split in two so that a host following many jobs decodes all of them together
(:class:`~pipeline.tracking.tracker.StepPlan`): :meth:`TrackDecoder.begin` says what a frame
needs from the model, :meth:`TrackDecoder.finish` takes the masks and readies the result.
:meth:`TrackDecoder.process` does both for a job alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.errors import InvalidInputError
from pipeline.frames import EncodedFrame, FrameResult, TrackMask
from pipeline.ledger.resume import Action, ResumePoint
from pipeline.masks.rle import encode_rle
from pipeline.model.types import MaskBatch
from pipeline.prompts import Prompt, TrackSpec
from pipeline.tracking import StepPlan, Tracker, TrackEvent, TrackingConfig
from pipeline.tracking.discovery import DiscoveryConfig
from pipeline.tracking.tracker import Segmenter, TrackPromptError, feed_time

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

    def resume_point(self) -> ResumePoint:
        """How far the job got: the last published frame and the last checkpoint."""
        ...

    def event(
        self,
        type: str,
        *,
        frame: int | None,
        track: int | None,
        detail: str | None,
        data: Mapping[str, Any] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class FrameSummary:
    """What the driver learns about a processed frame (small: no masks).

    ``published`` is False for a frame published before (replayed or ignored).
    """

    index: int
    published: bool
    capture_time: float
    publish_time: float
    active_tracks: int
    timings: dict[str, float] = field(default_factory=dict)
    image_size: int = 0  # the size it was encoded at (0: not said)


@dataclass
class Step:
    """A frame on its way through :meth:`TrackDecoder.begin` and :meth:`TrackDecoder.finish`.

    ``plan`` is None for a frame that needs no decoding (skipped, ignored, out of order).
    """

    frame: EncodedFrame
    action: Action
    plan: StepPlan | None
    timings: dict[str, float]
    started: float = 0.0


@dataclass
class Prepared:
    """A frame decoded and ready to publish (``result`` None: nothing to publish)."""

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
        sink: where results go.
        config: tracking thresholds.
        checkpoint_every: store the tracker's state with every n-th published frame (1: each).
        stride: the job's stride (file jobs: the next frame after ``t`` is ``t + stride``).
        live: a live job: frames come with gaps (the newest of the feed), and none is re-read.
        resume: how far the job got; None asks the sink.
        owned: for a job split over several decoders, which track ids this one follows (it
            keeps only those of a restored checkpoint, which holds every track of the job).
        image_size: the encoder size ``segmenter`` decodes for (0: not said).
        segmenters: the segmenter of another encoder size (an adaptive stream's frames move
            between sizes: a frame of another size switches the tracker to that size's model,
            its tracks carried over); None: every frame is ``segmenter``'s.
        discovery: find objects without prompts (see :mod:`pipeline.tracking.discovery`).
    """

    def __init__(
        self,
        tracks: Sequence[TrackSpec],
        segmenter: Segmenter,
        sink: ResultSink,
        config: TrackingConfig | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
        *,
        stride: int = 1,
        live: bool = False,
        resume: ResumePoint | None = None,
        owned: Callable[[int], bool] | None = None,
        image_size: int = 0,
        segmenters: Callable[[int], Segmenter] | None = None,
        discovery: DiscoveryConfig | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise InvalidInputError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        if stride < 1:
            raise InvalidInputError(f"stride must be >= 1, got {stride}")
        self.sink = sink
        self.segmenter = segmenter
        self.size = image_size
        self.segmenters = segmenters
        self.tracker = Tracker(segmenter, config, discovery)
        resume = sink.resume_point() if resume is None else resume
        if resume.snapshot is not None:
            self.tracker.restore(resume.snapshot)
            self.tracker.use(segmenter)  # a checkpoint of an adaptive stream may be of another size
            if owned is not None:
                self.tracker.keep_only(owned)
        else:
            resume = ResumePoint(resume.last_published)  # no checkpoint: the prompts, before frame 0
            for spec in tracks:
                self.tracker.add(spec)
        self.resume = ResumePoint(resume.last_published, resume.checkpoint)  # the snapshot is spent
        self.every = checkpoint_every
        self.stride = stride
        self.live = live
        self.since_checkpoint: int | None = None  # published frames since the last checkpoint
        self.rewind: tuple[int | None] | None = None  # (read after,) when frames went missing

    @property
    def tracks(self) -> int:
        """Tracks the job has now."""
        return len(self.tracker.tracks)

    def control(self, cmd: str, track: int, prompt: Prompt | None = None) -> None:
        """Add, remove or re-prompt a track from the next processed frame on.

        A command that cannot apply (an unknown id, an id taken) is reported as an ``error`` event,
        not raised: the job goes on. ``checkpoint`` changes no track: the next frame's state is
        checkpointed (a job split over several decoders sends it to those a command does not reach,
        so that they all checkpoint the same frames).
        """
        self.since_checkpoint = None  # the next frame's state is checkpointed
        if cmd == "checkpoint":
            return
        if cmd in ("pause_discovery", "resume_discovery"):
            self._discovery(cmd == "resume_discovery")
            return
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

    def _discovery(self, on: bool) -> None:
        """Pause or resume the job's discovery (the tracks it found go on either way)."""
        if self.tracker.discovery is None:
            self.sink.event(
                "error", frame=None, track=None, detail="this job does not discover (no discover)"
            )
            return
        self.tracker.discovering = on
        self.sink.event(
            "discovery_resumed" if on else "discovery_paused", frame=None, track=None, detail=None
        )

    def process(self, frames: Sequence[EncodedFrame]) -> list[FrameSummary]:
        """Decode, encode to RLE and publish each frame (in the given order, which must be increasing).

        The batch's frames are published together (one round trip to Redis), then their events.
        """
        prepared = []
        for frame in frames:
            step = self.begin(frame)
            batch = None
            if step.plan is not None and step.plan.requests:
                batch = self.segmenter.decode(frame.embedding, step.plan.requests)
            prepared.append(self.finish(step, batch))
        items = self.to_publish(prepared)
        start = time.perf_counter()
        flags = self.sink.publish_many(items)
        return self.summaries(prepared, flags, time.perf_counter() - start)

    def begin(self, frame: EncodedFrame) -> Step:
        """What frame ``frame`` needs: its decode requests (``step.plan``), or nothing.

        A prompt that does not fit the frame (given while the job runs) drops that track, says why
        in an ``error`` event (once: not again when replaying), and the others go on.
        """
        timings = dict(frame.timings)
        if frame.image_size and frame.image_size != self.size and self.segmenters is not None:
            self.segmenter = self.segmenters(frame.image_size)
            self.tracker.use(self.segmenter)
            self.size = frame.image_size
        if not self.live and not self._in_order(frame.index):
            return Step(frame, Action.SKIP, None, timings)
        action = self.resume.action(frame.index)
        if action is Action.SKIP:
            return Step(frame, action, None, timings)
        if action is Action.PUBLISH and not self.live and not self.resume.caught_up(self.tracker.last_frame):
            self._ask_rewind()
            return Step(frame, Action.SKIP, None, timings)
        started = time.perf_counter()
        while True:
            try:
                plan = self.tracker.plan(
                    frame.index, frame.embedding, self.frame_time(frame), frame.detections
                )
                return Step(frame, action, plan, timings, started)
            except TrackPromptError as exc:
                self.tracker.remove(exc.track_id)
                if action is Action.PUBLISH:
                    self.sink.event("error", frame=frame.index, track=exc.track_id, detail=str(exc))

    def frame_time(self, frame: EncodedFrame) -> float:
        """The frame's time for the tracker, seconds (see :func:`~pipeline.tracking.tracker.feed_time`)."""
        return feed_time(frame.index, frame.pts, frame.capture_time, self.live)

    def _in_order(self, index: int) -> bool:
        """Whether ``index`` is the file job's next frame; a gap asks for a rewind, an old frame is ignored."""
        last = self.tracker.last_frame
        expected = 0 if last is None else last + self.stride
        if index > expected:
            self._ask_rewind()
        return index == expected

    def _ask_rewind(self) -> None:
        self.rewind = (self.tracker.last_frame,)

    def finish(self, step: Step, batch: MaskBatch | None) -> Prepared:
        """Move the tracker on with the masks of ``step``'s requests; the frame's result to publish."""
        frame, timings = step.frame, step.timings
        if step.plan is None:
            return Prepared(frame, timings)
        results, events = self.tracker.commit(step.plan, batch)
        if step.action is not Action.PUBLISH:
            return Prepared(frame, timings)  # replayed: the tracker is up to it, nothing is published
        self.rewind = None
        timings["mask_decode"] = time.perf_counter() - step.started
        start = time.perf_counter()
        tracks = tuple(
            TrackMask(
                r.track_id,
                r.status.value,
                float(r.score),
                r.box,
                encode_rle(r.mask, r.box or (0, 0, 0, 0)),
                r.label,
            )
            for r in results
        )
        height, width = frame.original_size
        result = FrameResult(
            frame.index,
            frame.pts,
            frame.capture_time,
            width,
            height,
            tracks,
            timings,
            frame.preview,
            frame.image_size or self.size,
        )
        checkpoint = self.since_checkpoint is None or self.since_checkpoint + 1 >= self.every
        snapshot = self.tracker.snapshot(binary=True) if checkpoint else None
        self.since_checkpoint = 0 if checkpoint else (self.since_checkpoint or 0) + 1
        timings["postprocess"] = time.perf_counter() - start
        self.resume = ResumePoint(frame.index, frame.index if checkpoint else self.resume.checkpoint)
        active = sum(1 for r in results if r.status.value == "active")
        return Prepared(frame, timings, result, snapshot, events, active)

    @staticmethod
    def to_publish(prepared: Sequence[Prepared]) -> list[tuple[FrameResult, Mapping[str, Any] | None]]:
        """The results to publish, with their checkpoints, in order."""
        return [(p.result, p.snapshot) for p in prepared if p.result is not None]

    def summaries(
        self, prepared: Sequence[Prepared], published: Sequence[bool], took: float
    ) -> list[FrameSummary]:
        """Each frame's summary once its results were published (``published``: the sink's answers,
        ``took``: the publishing time, shared by the frames); writes the frames' events."""
        per_frame = took / max(1, len(published))
        now = time.time()
        out = []
        flags = iter(published)
        for p in prepared:
            if p.result is None:
                out.append(
                    FrameSummary(
                        p.frame.index, False, p.frame.capture_time, now, 0, p.timings, p.frame.image_size
                    )
                )
                continue
            for e in p.events:
                job_wide = e.kind.startswith("discovery")  # of the job's discovery, not of a track
                self.sink.event(
                    e.kind if job_wide else f"track_{e.kind}",
                    frame=e.frame_index,
                    track=None if job_wide else e.track_id,
                    detail=e.detail or None,
                    data=e.data,
                )
            p.timings["publish"] = per_frame
            out.append(
                FrameSummary(
                    p.frame.index,
                    next(flags),
                    p.frame.capture_time,
                    now,
                    p.active,
                    p.timings,
                    p.frame.image_size,
                )
            )
        return out
