"""A tracker host: many jobs' tracks in one process, decoded and published together each tick.

The plain class behind a track-decoder worker. It holds one :class:`~pipeline.tracking.stage.TrackDecoder`
per job it was given, and one model per image size. A :meth:`TrackerHost.process` call carries the
encoded frames of many jobs (in each job's frame order); the host steps every job's tracker one
frame at a time, but decodes the requests of all jobs of a round in one model call
(:func:`decode_all`), and publishes every job's results in one Redis round trip
(:func:`~pipeline.ledger.sink.publish_jobs`), each frame still by its own atomic script.

A job's decoder is made on the first call that names the job, from the call's :class:`TrackSetup`
and the job's resume point in Redis, so a host that was restarted picks its jobs up again from
their checkpoints (a file job then asks to be *rewound* to its checkpoint; see
:mod:`pipeline.tracking.stage`). One job's trouble (a bug, Redis refusing its writes) is that job's
answer, not the others'.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from pipeline.errors import SamstreamError
from pipeline.frames import EncodedFrame, TrackMask
from pipeline.ledger.resume import load
from pipeline.ledger.sink import PREVIEW_KEEP, LostEntriesError, RedisSink, publish_jobs
from pipeline.model.types import DecodeRequest, Embedding, MaskBatch
from pipeline.prompts import Prompt, TrackSpec
from pipeline.streams.keys import Keys
from pipeline.tracking import TrackEvent, TrackingConfig
from pipeline.tracking.discovery import DiscoveryConfig
from pipeline.tracking.stage import CHECKPOINT_EVERY, FrameSummary, Prepared, Step, TrackDecoder
from pipeline.tracking.tracker import Segmenter

log = logging.getLogger(__name__)

Models = Callable[[int, int], Segmenter]  # (image size, tracks of the first job) -> a model


@dataclass(frozen=True)
class TrackSetup:
    """What a tracker host needs to follow a job (small: it travels with the job's frames).

    Attributes:
        tracks: the job's tracks as specified (a resumed job's checkpoint supersedes them).
        tracking: tracking thresholds.
        image_size: encoder input size (which model decodes its prompts).
        stride: file jobs: every n-th frame.
        live: a live feed.
        maxlen: keep about this many masks entries (None: all).
        role: ``whole`` (the job's every track), or for a job split over several hosts by track,
            ``owner`` (it follows the tracks added while the job runs and those of ``tracks``, and
            publishes each frame whole with what the parts found) or ``part`` (it follows
            ``tracks`` and hands its results to the owner).
        others: the owner's: the track ids its parts follow.
        preview_keep: the job's preview stream keeps about this many entries.
        discovery: the job's discovery (the whole job's or the owner's; a part discovers nothing).
    """

    tracks: tuple[TrackSpec, ...]
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    image_size: int = 1024
    stride: int = 1
    live: bool = False
    maxlen: int | None = None
    role: str = "whole"
    others: frozenset[int] = frozenset()
    preview_keep: int = PREVIEW_KEEP
    discovery: DiscoveryConfig | None = None

    def owns(self, track_id: int) -> bool:
        """Whether this host follows ``track_id`` (of a restored checkpoint holding every track)."""
        if self.role == PART:
            return any(t.track_id == track_id for t in self.tracks)
        return track_id not in self.others


WHOLE, OWNER, PART = "whole", "owner", "part"


@dataclass(frozen=True)
class PartFrame:
    """A part's results on one frame its owner publishes (see :class:`TrackSetup`).

    Attributes:
        index: the frame.
        tracks: its tracks' masks.
        state: its tracks' state after the frame (``Tracker.snapshot`` tracks and pending events)
            when it checkpointed the frame, else None.
        events: its tracks' events of the frame.
        active: its active tracks.
    """

    index: int
    tracks: tuple[TrackMask, ...]
    state: dict[str, Any] | None
    events: tuple[TrackEvent, ...]
    active: int


@dataclass(frozen=True)
class TrackReply:
    """What a host answers for one job of a call.

    Attributes:
        job_id: the job.
        summaries: one per frame of the job in the call, in order.
        rewind: ``(after,)`` when frames of a file job went missing (its host was restarted): the
            job must be read again after frame ``after`` (None: from the start).
        error: the job cannot go on (one line); its decoder is closed.
        tracks: tracks the job has now (on this host).
        parts: a part's results, for its owner (nothing is published by a part).
    """

    job_id: str
    summaries: tuple[FrameSummary, ...] = ()
    rewind: tuple[int | None] | None = None
    error: str | None = None
    tracks: int = 0
    parts: tuple[PartFrame, ...] = ()


def decode_all(segmenter: Any, items: Sequence[tuple[Embedding, Sequence[DecodeRequest]]]) -> list[MaskBatch]:
    """Masks for the requests of several frames (of any jobs): one call where the model can batch
    across frames (``decode_many``), else one call per frame."""
    many = getattr(segmenter, "decode_many", None)
    if many is not None:
        return list(many(items))
    return [segmenter.decode(embedding, requests) for embedding, requests in items]


class TrackerHost:
    """Follows the tracks of many jobs and publishes their masks.

    Args:
        models: makes the model for an image size (called once per size).
        client: Redis client every job publishes through.
        keys: Redis key names.
        checkpoint_every: checkpoint each job's tracker with every n-th published frame.
    """

    def __init__(
        self,
        models: Models,
        client: redis.Redis,
        keys: Keys,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self._models = models
        self._segmenters: dict[int, Any] = {}
        self.client = client
        self.keys = keys
        self.every = checkpoint_every
        self._decoders: dict[str, TrackDecoder] = {}
        self._sinks: dict[str, RedisSink] = {}
        self._commands: dict[str, list[tuple[str, int, Prompt | None]]] = {}

    @property
    def jobs(self) -> int:
        return len(self._decoders)

    @property
    def tracks(self) -> int:
        return sum(d.tracks for d in self._decoders.values())

    def prepare(self, image_size: int, tracks: int) -> None:
        """Load the model of ``image_size`` now (for ``tracks`` tracks a frame), its mask decoder
        prepared, before any frame asks."""
        warm = getattr(self._segmenter(image_size, tracks), "warm", None)
        if warm is not None:
            warm(decoder=True)

    def _segmenter(self, image_size: int, tracks: int) -> Any:
        if image_size not in self._segmenters:
            self._segmenters[image_size] = self._models(image_size, tracks)
        return self._segmenters[image_size]

    def _decoder(self, job_id: str, setup: TrackSetup) -> TrackDecoder:
        decoder = self._decoders.get(job_id)
        if decoder is None:
            segmenter = self._segmenter(setup.image_size, len(setup.tracks))
            notice = getattr(segmenter, "notice", None)
            sink = RedisSink(self.client, self.keys, job_id, setup.maxlen, notice, setup.preview_keep)
            decoder = TrackDecoder(
                setup.tracks,
                segmenter,
                sink,
                setup.tracking,
                self.every,
                stride=setup.stride,
                live=setup.live,
                owned=None if setup.role == WHOLE else setup.owns,
                image_size=setup.image_size,
                segmenters=functools.partial(self._segmenter, tracks=len(setup.tracks)),
                discovery=setup.discovery if setup.role != PART else None,
            )
            self._decoders[job_id] = decoder
            self._sinks[job_id] = sink
            for cmd, track, prompt in self._commands.pop(job_id, []):
                decoder.control(cmd, track, prompt)
        return decoder

    def control(self, job_id: str, cmd: str, track: int, prompt: Prompt | None = None) -> None:
        """A track command for a job, applied from its next processed frame (kept until the job's
        decoder exists, when the host has not met the job yet)."""
        decoder = self._decoders.get(job_id)
        if decoder is None:
            self._commands.setdefault(job_id, []).append((cmd, track, prompt))
        else:
            decoder.control(cmd, track, prompt)

    def close(self, job_ids: Iterable[str]) -> None:
        """Forget jobs (their results are in Redis)."""
        for job_id in job_ids:
            self._decoders.pop(job_id, None)
            self._sinks.pop(job_id, None)
            self._commands.pop(job_id, None)

    def process(
        self,
        setups: Mapping[str, TrackSetup],
        frames: Sequence[EncodedFrame],
        parts: Mapping[str, Sequence[TrackReply]] | None = None,
    ) -> list[TrackReply]:
        """Track, publish and summarise ``frames`` (many jobs' frames, each job's in frame order).

        A split job's owner is given its parts' replies to the same frames in ``parts``; a frame is
        published only whole (a part that lacks it makes the owner ask for a rewind).

        Returns:
            One reply per job named by the frames and by ``setups``, in the order they first appear.
        """
        queues: dict[str, deque[EncodedFrame]] = {}
        errors: dict[str, str] = {}
        for f in frames:
            if f.job_id in setups:  # a job without a setup has ended: its frames are left alone
                queues.setdefault(f.job_id, deque()).append(f)
                if f.error is not None:  # the encoder could not encode this job's frames
                    errors.setdefault(f.job_id, f.error)
        decoders: dict[str, TrackDecoder] = {}
        for job_id in queues:
            if job_id in errors:
                continue
            try:
                decoders[job_id] = self._decoder(job_id, setups[job_id])
            except SamstreamError as exc:
                errors[job_id] = str(exc)
            except Exception as exc:  # a bug: that job fails, saying so; the others go on
                log.exception("opening the tracker of job %s", job_id)
                errors[job_id] = f"internal error: {type(exc).__name__}: {exc}"
        prepared: dict[str, list[Prepared]] = {job_id: [] for job_id in decoders}
        self._rounds(queues, decoders, prepared, errors)
        answered: dict[str, TrackReply] = {}
        elsewhere: dict[str, int] = {}  # an owner's job's tracks that its parts follow
        for job_id, decoder in decoders.items():
            if job_id in errors:
                continue
            role = setups[job_id].role
            if role == PART:
                answered[job_id] = _part_reply(job_id, decoder, prepared.pop(job_id))
            elif role == OWNER:
                mine = (parts or {}).get(job_id, ())
                error = _join_parts(decoder, prepared[job_id], mine)
                if error is not None:
                    errors[job_id] = error
                elsewhere[job_id] = sum(p.tracks for p in mine)
        return self._publish(queues, decoders, prepared, errors, answered, elsewhere)

    def _rounds(
        self,
        queues: dict[str, deque[EncodedFrame]],
        decoders: dict[str, TrackDecoder],
        prepared: dict[str, list[Prepared]],
        errors: dict[str, str],
    ) -> None:
        """Step every job one frame per round; one model call per round and image size."""
        while True:
            steps: list[tuple[str, TrackDecoder, Step]] = []
            for job_id, queue in queues.items():
                if not queue or job_id in errors:
                    continue
                frame = queue.popleft()
                decoder = decoders[job_id]
                try:
                    steps.append((job_id, decoder, decoder.begin(frame)))
                except Exception as exc:
                    self._fail(job_id, exc, errors)
            if not steps:
                return
            by_model: dict[int, list[tuple[str, TrackDecoder, Step]]] = {}
            for item in steps:
                by_model.setdefault(id(item[1].segmenter), []).append(item)
            for group in by_model.values():
                wanted = [s for s in group if s[2].plan is not None and s[2].plan.requests]
                try:
                    batches = decode_all(
                        group[0][1].segmenter,
                        [(s.frame.embedding, s.plan.requests) for _, _, s in wanted if s.plan is not None],
                    )
                except Exception as exc:  # the model failed for the whole round: its jobs fail
                    for job_id, _, _ in group:
                        self._fail(job_id, exc, errors)
                    continue
                masks = {id(s): b for (_, _, s), b in zip(wanted, batches, strict=True)}
                for job_id, decoder, step in group:
                    if job_id in errors:
                        continue
                    try:
                        prepared[job_id].append(decoder.finish(step, masks.get(id(step))))
                    except Exception as exc:
                        self._fail(job_id, exc, errors)

    def _fail(self, job_id: str, exc: BaseException, errors: dict[str, str]) -> None:
        if isinstance(exc, SamstreamError):
            errors[job_id] = str(exc)
        else:
            log.error("job %s failed in the tracker", job_id, exc_info=exc)
            errors[job_id] = f"internal error: {type(exc).__name__}: {exc}"

    def _publish(
        self,
        queues: dict[str, deque[EncodedFrame]],
        decoders: dict[str, TrackDecoder],
        prepared: dict[str, list[Prepared]],
        errors: dict[str, str],
        answered: dict[str, TrackReply],
        elsewhere: dict[str, int],
    ) -> list[TrackReply]:
        ready = [job_id for job_id in prepared if job_id not in errors]
        start = time.perf_counter()
        try:
            published = publish_jobs(
                self.client, [(self._sinks[j], decoders[j].to_publish(prepared[j])) for j in ready]
            )
        except SamstreamError as exc:  # Redis unreachable: every job's frames are unpublished
            published = [exc] * len(ready)
        took = time.perf_counter() - start
        replies: dict[str, TrackReply] = dict(answered)
        for job_id, flags in zip(ready, published, strict=True):
            decoder = decoders[job_id]
            if isinstance(flags, LostEntriesError):
                replies[job_id] = self._lost(decoder, flags)
                continue
            if isinstance(flags, Exception):
                errors[job_id] = str(flags)
                continue
            try:
                summaries = decoder.summaries(prepared[job_id], flags, took)
            except SamstreamError as exc:  # its events could not be written
                errors[job_id] = str(exc)
                continue
            rewind, decoder.rewind = decoder.rewind, None
            tracks = decoder.tracks + elsewhere.get(job_id, 0)
            replies[job_id] = TrackReply(job_id, tuple(summaries), rewind, None, tracks)
        for job_id, error in errors.items():
            replies[job_id] = TrackReply(job_id, error=error)
        self.close(errors)
        return [replies[job_id] for job_id in queues]

    def _lost(self, decoder: TrackDecoder, lost: LostEntriesError) -> TrackReply:
        """Redis lost frames the job had published: its tracker starts again from the checkpoint
        Redis still holds. A file job is read again after it and republishes the lost frames (no
        gap, no duplicate); a live feed cannot be read again, so a live job goes on from the present."""
        job_id = lost.job_id
        sink = self._sinks[job_id]
        self.close([job_id])  # the next call makes its decoder again, from Redis's resume point
        try:
            point = load(self.client, self.keys, job_id, with_snapshot=False)
            after = point.read_after(live=decoder.live)
            first = 0 if lost.newest is None else lost.newest + 1
            if decoder.live:
                then = "a live feed cannot be read again: the job goes on from the present"
            else:
                since = "the start" if after is None else f"the checkpoint at frame {after}"
                then = f"they are published again, from {since}"
            sink.publisher.event(
                "redis_lost",
                frame=first,
                detail=f"Redis lost published frames {first}-{lost.expected} (restarted from an older "
                f"snapshot, or failed over); {then}",
                data={"first": first, "last": lost.expected, "after": after},
            )
        except SamstreamError as exc:
            return TrackReply(job_id, error=str(exc))
        log.warning("%s; rewinding to frame %s", lost, after)
        return TrackReply(job_id, rewind=None if decoder.live else (after,), tracks=decoder.tracks)


def _part_reply(job_id: str, decoder: TrackDecoder, prepared: list[Prepared]) -> TrackReply:
    """A part's results for its owner: each frame it would publish, with its tracks' state."""
    frames = []
    for p in prepared:
        if p.result is None:
            continue
        state = None
        if p.snapshot is not None:
            state = {
                "tracks": list(p.snapshot["tracks"]),
                "pending_events": list(p.snapshot["pending_events"]),
            }
        frames.append(PartFrame(p.frame.index, p.result.tracks, state, tuple(p.events), p.active))
    rewind, decoder.rewind = decoder.rewind, None
    return TrackReply(job_id, rewind=rewind, tracks=decoder.tracks, parts=tuple(frames))


def _join_parts(decoder: TrackDecoder, prepared: list[Prepared], parts: Sequence[TrackReply]) -> str | None:
    """Make each of the owner's frames whole with its parts' results, in place; the error of a part.

    A frame that a part lacks (its host restarted, or missed frames), or whose checkpoint a part
    did not take, is not published: the owner asks for a rewind, and the driver starts every share
    of the job again from its last checkpoint.
    """
    for part in parts:
        if part.error is not None:
            return part.error
        if part.rewind is not None:
            decoder.rewind = decoder.rewind or part.rewind
    found = [{f.index: f for f in part.parts} for part in parts]
    for i, p in enumerate(prepared):
        if p.result is None:
            continue
        mine = [by_index.get(p.frame.index) for by_index in found]
        whole = all(f is not None for f in mine) and (
            p.snapshot is None or all(f is not None and f.state is not None for f in mine)
        )
        if not whole:
            decoder.rewind = decoder.rewind or (decoder.tracker.last_frame,)
            for later in prepared[i:]:
                later.result, later.snapshot = None, None
            return None
        frames = [f for f in mine if f is not None]
        tracks = p.result.tracks + tuple(t for f in frames for t in f.tracks)
        p.result = replace(p.result, tracks=tracks)
        if p.snapshot is not None:
            snapshot = dict(p.snapshot)
            snapshot["tracks"] = [
                *snapshot["tracks"],
                *(t for f in frames if f.state for t in f.state["tracks"]),
            ]
            snapshot["pending_events"] = [
                *snapshot["pending_events"],
                *(e for f in frames if f.state for e in f.state["pending_events"]),
            ]
            p.snapshot = snapshot
        p.events = [*p.events, *(e for f in frames for e in f.events)]
        p.active += sum(f.active for f in frames)
    return None
