"""The driver: one loop that moves the frames of many jobs through the stages, tick after tick.

Each source host is read by one call at a time, carrying the requests of every job it holds
(grouped by the tracker host that follows each job). When a read's replies come, each group's
frames go to the encoders as one call, and — once those embeddings exist, in the order the
groups were read — to their tracker host as one call. So the machinery costs three calls a
tick whatever the number of jobs, and the driver fetches only small replies: pixels and
embeddings go from stage to stage (see :mod:`pipeline.jobs.transport`).

Per job:

* a **file** job has at most ``file_window`` frames in flight (backpressure: nothing is dropped,
  memory is bounded) and reads up to ``batch_frames`` at a time; it ends when its source has ended
  and every frame is back.
* a **live** job has at most ``live_in_flight`` frames in flight; its host gives the newest frame
  of the feed at each read and counts the others as dropped, so latency stays bounded.
* while live jobs run, reads are **paced** (:mod:`pipeline.jobs.pacing`): a frame is read only
  when an encoder can take it as it arrives, so frames never wait in the encoders' queue and a
  live frame's latency stays about one service interval however many streams there are. The
  frames the encoders can take go to the jobs in **fair shares** (weighted fair queueing on the
  frames each job was given: a live job's ``weight``, up to its ``max_fps``; a file job counts
  ``file_weight`` of a stream, so it never starves and never pushes a live frame back). Without
  live jobs (or with ``pacing`` off) file jobs read as far ahead as ``file_window``, live jobs
  first, round-robin, within ``max_frames_in_flight``.
* commands from its control stream (all jobs' streams read in one call, every
  ``control_poll_s``): ``stop`` ends reading, track commands go to its tracker host ordered
  before the frames read after them.
* a tracker host that was restarted asks for a *rewind* of a file job (see
  :mod:`pipeline.tracking.stage`): the job reads again after the frame it names.

The job lifecycle (status, resume point, the checks made when a source opens) is
:mod:`pipeline.ledger.lifecycle`'s; the driver calls it.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from pipeline.errors import InvalidInputError, JobError, SamstreamError
from pipeline.jobs.pacing import Pacer, TrackerLoad
from pipeline.jobs.placement import Placement
from pipeline.jobs.sizing import SizePlanner, Stream
from pipeline.jobs.transport import Handle, Transport
from pipeline.ledger.lifecycle import Ending, Lifecycle, Start
from pipeline.masks.preview import PreviewOptions
from pipeline.metrics import Metrics, NullMetrics
from pipeline.sources.host import DetectorSpec, ReadReply, ReadRequest, SourceSpec
from pipeline.sources.limits import MediaLimits
from pipeline.spec import AutoSize, discovered_at_most
from pipeline.streams.control import Command, ControlBus
from pipeline.tracking.discovery import DiscoveryConfig
from pipeline.tracking.host import OWNER, PART, TrackReply, TrackSetup
from pipeline.tracking.stage import FrameSummary

log = logging.getLogger(__name__)
# How often the driver asks Redis which live jobs a viewer shows (their previews start within it).
WATCH_POLL_S = 1.0
# An encoder is counted busy this share of the time at most when the live jobs' demand is said.
DEMAND_UTILISATION = 0.85


@dataclass(frozen=True)
class DriverOptions:
    """How the driver paces and places jobs.

    Attributes:
        batch_frames: most frames of one file job per read.
        file_window: most frames of one file job in flight.
        live_in_flight: most frames of one live job in flight.
        max_frames_in_flight: most frames in flight over all jobs (live jobs first).
        tick_s: how long a read gathers frames before it answers.
        control_poll_s: how often the control streams are read.
        streams_per_host: jobs a source host takes before another host is started.
        tracks_per_tracker: tracks a tracker host takes before another one is started.
        max_hosts: most source hosts (None: no limit; a full host then takes more jobs).
        max_decoders: most tracker hosts (None: no limit).
        drain_s: most time an ending job waits for its frames in flight.
        host_idle_s: a host started for more jobs stops once it held none for this long.
        drops_every_s: how often live jobs' drop counts are written to their hashes (and the
            gauges of jobs, tracks and frames in flight set).
        media: what every job's source may hold (pixels per frame; a file's frames and duration).
        stall_s: a file or URL job fails when its source gives no frame for this long.
        stop_s: most time a stopped job (cancel) waits for its read and frames in flight before
            its status is written, whatever its source or host does.
        read_timeout_s: a source host that leaves a read unanswered this long is given up: its
            jobs fail and it is replaced (generous: a new host may wait for a node to start).
        preview: the JPEG previews of every job's frames (see :mod:`pipeline.masks.preview`).
        pacing: pace reads to the encoders' measured cost while live jobs run (see above).
        file_weight: a file job's share beside a live stream's (weight 1) while reads are paced.
    """

    batch_frames: int = 8
    file_window: int = 24
    live_in_flight: int = 2
    max_frames_in_flight: int = 512
    tick_s: float = 0.04
    control_poll_s: float = 0.05
    streams_per_host: int = 64
    tracks_per_tracker: int = 256
    max_hosts: int | None = None
    max_decoders: int | None = None
    drain_s: float = 60.0
    host_idle_s: float = 60.0
    drops_every_s: float = 1.0
    media: MediaLimits = field(default_factory=MediaLimits)
    stall_s: float = 30.0
    stop_s: float = 3.0
    read_timeout_s: float = 120.0
    preview: PreviewOptions = field(default_factory=PreviewOptions)
    pacing: bool = True
    file_weight: float = 0.25

    def __post_init__(self) -> None:
        for name in ("batch_frames", "file_window", "live_in_flight", "max_frames_in_flight"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"driver {name} must be >= 1, got {getattr(self, name)}")
        if self.streams_per_host < 1 or self.tracks_per_tracker < 1:
            raise InvalidInputError("streams per host and tracks per decoder must be >= 1")
        if self.tick_s <= 0 or self.control_poll_s <= 0 or self.drain_s <= 0:
            raise InvalidInputError("tick, control poll and drain times must be > 0 seconds")
        if not self.file_weight > 0:
            raise InvalidInputError(f"driver file_weight must be > 0, got {self.file_weight}")
        for name in ("stall_s", "stop_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"driver {name} must be > 0 seconds, got {getattr(self, name)}")


class Listener:
    """What the driver tells its owner (no-op by default)."""

    def frames(self, job_id: str, summaries: Sequence[FrameSummary]) -> None:
        """A job's frames came back (published, or replayed)."""

    def ended(self, job_id: str, status: str, error: str | None) -> None:
        """A job ended with ``status`` (``succeeded``, ``failed``, ``cancelled``)."""


@dataclass
class _Job:
    start: Start
    source: SourceSpec
    setup: TrackSetup
    host: int
    decoder: int
    after: int | None
    in_flight: int = 0
    end: bool = False
    opened: bool = False
    ending: tuple[Ending, str | None] | None = None
    ending_since: float = 0.0
    epoch: int = 0  # replies of reads before this one do not rewind the job again
    tracks: int = 0
    dropped: int = 0
    dropped_written: int = 0
    parts: list[tuple[int, TrackSetup]] = field(default_factory=list)  # a split job's other shares
    commands: list[Command] = field(default_factory=list)  # a split job's, held to a group boundary
    joining: int = 0  # groups whose parts were asked and whose owner was not yet
    weight: float = 1.0  # share of the paced frames (a file job: DriverOptions.file_weight)
    max_fps: float | None = None  # a live job's most frames a second
    vtime: float = 0.0  # fair queueing: frames given over weight (the least goes first)
    next_read: float = 0.0  # max_fps: not read again before this (monotonic seconds)
    requested_fps: float | None = None  # its feed's rate (up to max_fps), once known
    refused: int = 0  # turns it wanted a frame and the encoders had no room (since the last write)
    published: int = 0  # frames published since the last write
    rates_written: tuple[float | None, float, bool, int] | None = None
    size: int = 0  # the size its frames are read at now (an auto stream's moves)
    auto: AutoSize | None = None  # image_size auto: the sizes it may move over, and its target
    delivered_fps: float | None = None  # over the last window
    bound: bool = False  # the encoders held it back in the last window
    discovery_paused: bool = False  # told to pause discovery: its source host runs no detector

    @property
    def job_id(self) -> str:
        return self.start.job_id

    @property
    def decoders(self) -> list[int]:
        """Every tracker host that follows some of the job's tracks, the owner first."""
        return [self.decoder, *(d for d, _ in self.parts)]

    @property
    def live(self) -> bool:
        return self.source.live


@dataclass
class _Group:
    """One tracker host's share of a read: its frames, then their embeddings, then its replies."""

    seq: int
    host: int
    decoder: int
    frames: Handle
    counts: dict[str, int] = field(default_factory=dict)  # frames per job
    embeddings: Handle | None = None
    parts: dict[str, list[Handle]] = field(default_factory=dict)  # split jobs: their parts' replies
    replies: Handle | None = None


@dataclass
class _Read:
    seq: int
    host: int
    meta: Handle
    groups: list[_Group]
    jobs: frozenset[str] = frozenset()
    since: float = field(default_factory=time.monotonic)
    paced: list[Hashable] = field(default_factory=list)  # its keys in the pacer


class JobDriver:
    """Drives many jobs through a :class:`Transport` from one thread.

    Args:
        transport: the stages.
        lifecycle: job status transitions (one place for ``run`` and ``serve``).
        control: reads the jobs' control streams.
        events: ``events(job_id, kind, detail)`` writes a job event (source lost, stop requested…).
        options: pacing and placement.
        metrics: where timings and counts go.
        listener: told of frames and endings.
    """

    def __init__(
        self,
        transport: Transport,
        lifecycle: Lifecycle,
        control: ControlBus,
        events: Callable[[str, str, str | None], None],
        options: DriverOptions | None = None,
        metrics: Metrics | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.transport = transport
        self.lifecycle = lifecycle
        self.control = control
        self.events = events
        self.options = options or DriverOptions()
        self.metrics = metrics or NullMetrics()
        self.listener = listener or Listener()
        self.jobs: dict[str, _Job] = {}
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._queued: set[str] = set()  # submitted, not yet taken up (read from other threads)
        self._reads: dict[int, _Read] = {}  # source host -> its read in flight
        self._lanes: dict[tuple[int, int], deque[_Group]] = {}  # (host, decoder) -> groups to decode
        self._decoding: dict[Handle, _Group] = {}
        self._seq = 0
        self._turn = 0  # round-robin offset of the jobs served first
        self._polled = 0.0
        self._watch_polled = 0.0
        self._watched: set[str] = set()  # live jobs a viewer shows now (their previews are made)
        self._drops_at = 0.0
        self._rates_at = time.monotonic()
        self._vclock = 0.0  # fair queueing's clock: the least vtime among jobs that read
        self.pacer = Pacer()
        self.trackers = TrackerLoad()
        self.sizes = SizePlanner()
        self._demanding = False  # live jobs' demand was said (0 is said once after the last)
        self._encoding: dict[Handle, list[Hashable]] = {}  # encode calls in the pacer
        self.placement = Placement(transport, self.options)
        self._stop = threading.Event()

    # -- from any thread --

    def submit(self, job_id: str, again: bool = False) -> None:
        """Run (or resume) a job kept in Redis; taken up by the loop's next turn.

        ``again``: run it even if it failed or was cancelled (see :meth:`Lifecycle.begin`).
        """
        self._queued.add(job_id)
        self._inbox.put(("again" if again else "job", job_id))

    def holds(self, job_id: str) -> bool:
        """Whether the job runs here, or was submitted and is about to be taken up."""
        return job_id in self.jobs or job_id in self._queued

    def held(self) -> set[str]:
        """Every job :meth:`holds` (for reconciling: an unfinished job not in it has no runner)."""
        return set(self.jobs.copy()) | self._queued.copy()  # copies: atomic against the loop's changes

    def stop(self) -> None:
        """Make :meth:`run` return after its current turn."""
        self._stop.set()

    # -- the loop --

    def run(self, until_idle: bool = True, wait_s: float = 0.02) -> None:
        """Turn the loop until :meth:`stop`, or (``until_idle``) until no job is left."""
        while not self._stop.is_set():
            self.turn(wait_s)
            if until_idle and not self.jobs and self._inbox.empty():
                return

    def add(self, start: Start) -> None:
        """Take up a job that :meth:`Lifecycle.begin` started.

        A job with more tracks than a tracker host follows (``tracks_per_tracker``) is split by
        track over several: the first share's host (the owner) publishes each frame whole. A job
        that discovers is not split: its discovery must see every track's mask.

        Raises:
            RedisUnavailableError: its control stream cannot be read (nothing was taken up; the
                job, left ``running``, is resumed by the next reconcile).
        """
        # First, so that a job is never held without its commands (a cancel) reaching it.
        self.control.add(start.job_id, everything=start.first_run)
        spec = start.spec
        size = self.options.tracks_per_tracker
        shares = [spec.tracks[i : i + size] for i in range(0, len(spec.tracks), size)] or [()]
        if spec.discover is not None:  # one host sees every mask: discovery never doubles an object
            shares = [spec.tracks]
        found = discovered_at_most(spec.discover)  # the owner's to follow
        host, decoders = self.placement.place(
            [len(share) + (found if i == 0 else 0) for i, share in enumerate(shares)]
        )
        setup = TrackSetup(
            spec.tracks,
            spec.tracking_config(),
            spec.image_size,
            spec.stride,
            spec.live,
            spec.maxlen,
            preview_keep=self.options.preview.keep,
            discovery=spec.discover,
        )
        parts = []
        if len(shares) > 1:
            others = frozenset(t.track_id for share in shares[1:] for t in share)
            parts = [
                (d, replace(setup, tracks=share, role=PART))
                for d, share in zip(decoders[1:], shares[1:], strict=True)
            ]
            setup = replace(setup, tracks=shares[0], role=OWNER, others=others)
        job = _Job(
            start,
            SourceSpec(
                spec.source,
                spec.image_size,
                spec.stride,
                spec.live,
                spec.give_up_s,
                limits=self.options.media,
                stall_s=self.options.stall_s,
                preview=self.options.preview,
                detector=detector_spec(spec.discover),
            ),
            setup,
            host,
            decoders[0],
            start.read_after,
            tracks=len(spec.tracks),
            parts=parts,
            weight=spec.weight if spec.live else self.options.file_weight,
            max_fps=spec.max_fps if spec.live else None,
            vtime=self._vclock,  # a new job starts level with the others: no burst, no wait
            size=spec.image_size,
            auto=spec.auto_size if spec.live else None,
        )
        self.jobs[start.job_id] = job
        try:
            self.lifecycle.placed(start.job_id, host, decoders[0])
        except SamstreamError as exc:  # informational only
            log.warning("job %s: recording its hosts: %s", start.job_id, exc)

    def turn(self, wait_s: float) -> None:
        """One turn: new jobs, commands, reads; then whatever came back within ``wait_s``."""
        self._take_inbox()
        now = time.monotonic()
        if now - self._polled >= self.options.control_poll_s:
            self._polled = now
            self._poll_control()
        if now - self._watch_polled >= WATCH_POLL_S:
            self._watch_polled = now
            self._poll_watched()
        self._submit_reads()
        handles = [r.meta for r in self._reads.values()]
        for lane in self._lanes.values():
            for g in lane:
                handles += [g.embeddings, *(h for hs in g.parts.values() for h in hs)]
        handles += list(self._decoding)
        ready = self.transport.wait(handles, wait_s) if handles else set()
        if not handles:
            time.sleep(wait_s)
        for host, read in list(self._reads.items()):
            if read.meta in ready:
                del self._reads[host]
                for key in read.paced:
                    self.pacer.read_done(key, time.monotonic())
                self._read_done(read)
            elif time.monotonic() - read.since > self.options.read_timeout_s:
                for key in read.paced:
                    self.pacer.read_done(key, None)
                self._give_up_host(read)
        for handle in [h for h in self._encoding if h in ready]:
            for key in self._encoding.pop(handle):
                self.pacer.encode_done(key, time.monotonic())
        for lane in self._lanes.values():  # split jobs' parts returned (measured once: done pops)
            for handle in (h for g in lane for hs in g.parts.values() for h in hs if h in ready):
                self.trackers.done(handle, time.monotonic())
        self._submit_decodes(ready)
        for handle in [h for h in self._decoding if h in ready]:
            self._decode_done(self._decoding.pop(handle), handle)
        self._end_jobs()
        if now - self._drops_at >= self.options.drops_every_s:
            self._drops_at = now
            self._write_drops()
            self._write_rates(now)
            self._measure_capacity(now)
            busy = {g.decoder for g in self._decoding.values()}
            self.placement.retire_idle(now, set(self._reads), busy)
            in_flight = sum(j.in_flight for j in self.jobs.values())
            self.metrics.set_queue_depth("frames_in_flight", in_flight)
            self.metrics.set_active(len(self.jobs), sum(j.tracks for j in self.jobs.values()))

    def _take_inbox(self) -> None:
        while True:
            try:
                kind, value = self._inbox.get_nowait()
            except queue.Empty:
                return
            try:
                if value not in self.jobs:
                    start = self.lifecycle.begin(value, again=kind == "again")
                    if start is not None:
                        self.add(start)
            except SamstreamError as exc:  # left as it was, or running: the reconciler resumes it
                log.warning("job %s cannot start: %s", value, exc)
            finally:  # only once it is in self.jobs: holds() is never False in between
                self._queued.discard(value)

    # -- reads --

    def _submit_reads(self) -> None:
        opts = self.options
        now = time.monotonic()
        budget = opts.max_frames_in_flight - sum(j.in_flight for j in self.jobs.values())
        jobs = list(self.jobs.values())
        if jobs:
            k = self._turn % len(jobs)
            jobs = jobs[k:] + jobs[:k]
        self._turn += 1
        paced = opts.pacing and any(j.live and j.ending is None and not j.end for j in jobs)
        if paced:
            self.pacer.slots, _ = self.transport.encoder_slots()
            # Fair queueing: the jobs given the fewest frames for their weight go first.
            order = sorted(jobs, key=lambda j: j.vtime)
            passes: tuple[bool | None, ...] = (None,)
        else:
            order, passes = jobs, (True, False)  # live jobs first: file jobs take what is left
        room: dict[int, float] = {}  # image size -> frames the encoders can take in time
        coming = self._coming() if paced else {}  # tracker host -> frames on their way to it
        wanted: dict[int, dict[int, list[ReadRequest]]] = {}
        reserved: dict[int, dict[int, int]] = {}  # host -> image size -> paced frames
        least: float | None = None
        for live_pass in passes:
            for job in order:
                if live_pass is not None and job.live != live_pass:
                    continue
                if job.ending is not None or job.end or job.host in self._reads:
                    continue
                if job.live:
                    count = 1 if job.in_flight < opts.live_in_flight and now >= job.next_read else 0
                else:
                    count = min(opts.batch_frames, opts.file_window - job.in_flight)
                count = min(count, budget)
                if count <= 0:
                    continue
                if paced:
                    least = job.vtime if least is None else least
                    size = job.size
                    if self._tracker_late(job, coming, now):
                        job.refused += job.live
                        continue
                    if size not in room:
                        room[size] = self.pacer.room(size, now, _sum_sizes(reserved))
                    count = int(min(count, room[size]))
                    if count <= 0:
                        job.refused += job.live
                        continue
                    room[size] -= count
                    for decoder in job.decoders:
                        coming[decoder] = coming.get(decoder, 0) + count
                    for other in [s for s in room if s != size]:
                        del room[other]  # the same encoders: asked again, with these frames
                    host_sizes = reserved.setdefault(job.host, {})
                    host_sizes[size] = host_sizes.get(size, 0) + count
                    job.vtime = max(job.vtime, self._vclock) + count / job.weight
                if job.live and job.max_fps:
                    job.next_read = now + 1.0 / job.max_fps
                budget -= count
                request = ReadRequest(
                    job.job_id,
                    job.source,
                    job.after,
                    count,
                    self._previews(job),
                    job.size if job.auto else None,
                    detect=not job.discovery_paused,
                )
                wanted.setdefault(job.host, {}).setdefault(job.decoder, []).append(request)
        if least is not None:
            self._vclock = max(self._vclock, least)
        for host, by_decoder in wanted.items():
            decoders = list(by_decoder)
            groups = [by_decoder[d] for d in decoders]
            meta, frames = self.transport.read(host, groups, opts.tick_s)
            self._seq += 1
            keys: list[Hashable] = []
            for size, count in reserved.get(host, {}).items():
                keys.append(("read", self._seq, size))
                self.pacer.read_sent(keys[-1], count, size, now)
            self._reads[host] = _Read(
                self._seq,
                host,
                meta,
                [_Group(self._seq, host, d, f) for d, f in zip(decoders, frames, strict=True)],
                frozenset(r.job_id for g in groups for r in g),
                paced=keys,
            )

    def _coming(self) -> dict[int, int]:
        """Frames read or encoded and not yet given to their tracker hosts, per tracker host: a
        split job's frames go to each host that follows a share of its tracks."""
        out: dict[int, int] = {}
        for (_, decoder), lane in self._lanes.items():
            for group in lane:
                for job_id, count in group.counts.items():
                    job = self.jobs.get(job_id)
                    # a job ended, or whose parts' calls were sent (TrackerLoad holds them): the owner's
                    hosts = job.decoders if job is not None and job_id not in group.parts else [decoder]
                    for d in hosts:
                        out[d] = out.get(d, 0) + count
        return out

    def _tracker_late(self, job: _Job, coming: Mapping[int, int], now: float) -> bool:
        """Whether a frame of ``job`` read now would wait at one of its tracker hosts (see
        :class:`~pipeline.jobs.pacing.TrackerLoad`; a split job's every share's host): it gets
        there after the read and its encode."""
        p = self.pacer
        reach = p.lead + p.overhead + (p.estimate(job.size) or 0.0) + p.slack_s
        return any(self.trackers.late(d, coming.get(d, 0), reach, now) for d in job.decoders)

    def _read_done(self, read: _Read) -> None:
        try:
            replies: list[list[ReadReply]] = self.transport.get(read.meta)
        except Exception as exc:  # the host failed for good: its jobs cannot read
            text = _reason(exc, f"source host {read.host} failed")
            for failed in self.jobs.values():
                if failed.host == read.host:
                    self._finish(failed, Ending.FAILED, text)
            return
        for group, group_replies in zip(read.groups, replies, strict=True):
            for reply in group_replies:
                job = self.jobs.get(reply.job_id)
                if job is not None:
                    self._apply_read(job, reply, group)
            if sum(group.counts.values()):
                group.embeddings = self.transport.encode(group.frames)
                self.metrics.encoder_batch(sum(group.counts.values()))
                sizes: dict[int, int] = {}
                for job_id, count in group.counts.items():
                    if job_id in self.jobs:
                        size = self.jobs[job_id].size
                        sizes[size] = sizes.get(size, 0) + count
                keys: list[Hashable] = []
                for size, count in sizes.items():
                    keys.append(("encode", id(group), size))
                    self.pacer.encode_sent(keys[-1], count, size, time.monotonic())
                self._encoding[group.embeddings] = keys
                self._lanes.setdefault((group.host, group.decoder), deque()).append(group)

    def _give_up_host(self, read: _Read) -> None:
        """A host that does not answer: its jobs fail now, and later jobs go to another host."""
        text = f"source host {read.host} did not answer for {self.options.read_timeout_s:g} s"
        log.warning("%s; its jobs fail and it is replaced", text)
        del self._reads[read.host]
        for job in [j for j in self.jobs.values() if j.host == read.host]:
            self._end(job, (Ending.FAILED, text))
        self.placement.forget_host(read.host)
        try:
            self.transport.remove_host(read.host)
        except Exception as exc:  # it is gone either way
            log.warning("stopping source host %s: %s", read.host, exc)

    def _apply_read(self, job: _Job, reply: ReadReply, group: _Group) -> None:
        for kind, detail, _ in reply.events:
            self._event(job.job_id, kind, detail)
        if reply.dropped:
            job.dropped += reply.dropped
            self.metrics.frames_dropped(reply.dropped)
        if reply.info is not None and not job.opened:
            job.opened = True
            fps = reply.info.fps
            job.requested_fps = min(fps, job.max_fps or fps) if fps else job.max_fps
            try:
                self.lifecycle.opened(job.start, reply.info)
            except SamstreamError as exc:
                self._finish(job, Ending.FAILED, str(exc))
        if reply.indices:
            job.in_flight += len(reply.indices)
            group.counts[job.job_id] = len(reply.indices)
        stale = group.seq < job.epoch  # read before a rewind: its frames go by, unused
        if reply.indices and not stale:
            job.after = reply.indices[-1]
        if reply.end and not stale:
            job.end = True
        if reply.error is not None and job.ending is None:
            self._finish(job, Ending.FAILED, reply.error)

    # -- decodes --

    def _submit_decodes(self, ready: set[Handle]) -> None:
        """Each lane's groups to their tracker host in read order, once their embeddings exist. A
        group with split jobs goes in two steps: their parts first, then, with the parts' replies,
        the owner (which publishes each frame whole)."""
        for key, lane in list(self._lanes.items()):
            if not lane:  # hosts come and go: a lane is kept only while it has groups
                del self._lanes[key]
                continue
            while lane and lane[0].embeddings in ready:
                group = lane[0]
                split = [self.jobs[j] for j in group.counts if j in self.jobs and self.jobs[j].parts]
                if split and not group.parts:
                    for job in split:
                        job.joining += 1
                        handles = group.parts[job.job_id] = []
                        for d, setup in job.parts:
                            handles.append(self.transport.decode(d, {job.job_id: setup}, group.embeddings))
                            count = group.counts[job.job_id]
                            self.trackers.sent(handles[-1], d, count, time.monotonic(), count * _load(setup))
                if not all(h in ready for handles in group.parts.values() for h in handles):
                    break
                lane.popleft()
                # A job that ended meanwhile has no setup: the host leaves its frames alone.
                setups = {j: self.jobs[j].setup for j in group.counts if j in self.jobs}
                group.replies = self.transport.decode(group.decoder, setups, group.embeddings, group.parts)
                self._decoding[group.replies] = group
                tracks = sum(n * _load(setups[j]) for j, n in group.counts.items() if j in setups)
                self.trackers.sent(
                    group.replies, group.decoder, sum(group.counts.values()), time.monotonic(), tracks
                )
                for job in split:
                    job.joining -= 1
                    if not job.joining:
                        self._send_commands(job)

    def _decode_done(self, group: _Group, handle: Handle) -> None:
        try:
            replies: list[TrackReply] = self.transport.get(handle)
        except Exception as exc:
            self.trackers.done(handle, None)
            text = _reason(exc, f"tracker host {group.decoder} failed")
            for job_id, count in group.counts.items():
                job = self.jobs.get(job_id)
                if job is not None:
                    job.in_flight -= count
                    self.metrics.frame_failed(count)
                    self._finish(job, Ending.FAILED, text)
            return
        self.trackers.done(handle, time.monotonic())
        for reply in replies:
            job = self.jobs.get(reply.job_id)
            if job is None:
                continue
            job.in_flight -= group.counts.get(reply.job_id, 0)
            if reply.error is not None:  # its frames of the group were not published
                self.metrics.frame_failed(group.counts.get(reply.job_id, 0))
                self._finish(job, Ending.FAILED, reply.error)
                continue
            job.tracks = reply.tracks
            if reply.rewind is not None and group.seq >= job.epoch and not job.live:
                self._rewind(job, reply.rewind[0])
            self._record(job, reply.summaries)

    def _rewind(self, job: _Job, after: int | None) -> None:
        """Read the job again after frame ``after``: frames went missing on a tracker host. A split
        job's every share starts again from the job's checkpoint (they must step the same frames)."""
        if job.parts:
            for decoder in job.decoders:
                self.transport.forget(decoder, job.job_id)
            try:
                after = self.lifecycle.resume_point(job.job_id).read_after(live=False)
            except SamstreamError as exc:
                self._finish(job, Ending.FAILED, str(exc))
                return
        job.after = after
        job.end = False
        job.epoch = self._seq + 1

    def _record(self, job: _Job, summaries: Sequence[FrameSummary]) -> None:
        m = self.metrics
        for s in summaries:
            batch = s.timings.get("encode_batch")
            if batch and "encode" in s.timings:
                # an auto stream's frames in flight across a change are of the size they were read at
                size = (s.image_size or job.size) if job.auto else job.size
                self.pacer.cost_seen(size, s.timings["encode"] / batch)
            if not s.published:
                continue
            job.published += 1
            m.frame_published()
            for stage, seconds in s.timings.items():
                if stage != "encode_batch":
                    m.observe_stage(stage, seconds)
            m.observe_end_to_end(s.publish_time - s.capture_time)
        if summaries:
            self.listener.frames(job.job_id, summaries)

    # -- control, events, endings --

    def _previews(self, job: _Job) -> bool:
        """Whether a read makes previews of the job's frames: a file job's always (they cost one
        frame in many), a live job's while a viewer shows it or when asked for all the time."""
        return not job.live or self.options.preview.live_always or job.job_id in self._watched

    def _poll_watched(self) -> None:
        """Which live jobs a viewer shows now (one Redis round trip for all of them)."""
        live = [j for j, job in self.jobs.items() if job.live]
        if not live or self.options.preview.live_always or not self.options.preview.enabled:
            self._watched = set()
            return
        store = self.lifecycle.store
        try:
            pipe = store.client.pipeline(transaction=False)
            for job_id in live:
                pipe.exists(store.keys.watched(job_id))
            found = pipe.execute()
        except redis.RedisError as exc:  # the previews can wait; the job's own writes report Redis
            log.debug("could not read which jobs are watched: %s", exc)
            return
        self._watched = {j for j, n in zip(live, found, strict=True) if n}

    def _poll_control(self) -> None:
        if not self.jobs:
            return
        try:
            commands = self.control.poll()
        except SamstreamError as exc:
            log.warning("reading control streams: %s", exc)
            return
        for job_id, command in commands:
            job = self.jobs.get(job_id)
            if job is None:
                continue
            if isinstance(command, InvalidInputError):
                self._event(job_id, "error", str(command))
            elif command.cmd == "stop":
                if job.ending is None:
                    self._event(job_id, "stop_requested", None)
                    self._finish(job, Ending.STOPPED, None)
            elif job.ending is None:
                self._command(job, command)

    def _command(self, job: _Job, command: Command) -> None:
        if command.cmd in ("pause_discovery", "resume_discovery"):
            job.discovery_paused = command.cmd == "pause_discovery"
        job.commands.append(command)
        if not job.joining:  # a split job's shares take it between the same two groups
            self._send_commands(job)

    def _send_commands(self, job: _Job) -> None:
        """Track commands to the tracker host following the track (a new track: the owner); a
        split job's other shares are told to checkpoint the same next frame."""
        for command in job.commands:
            track = command.track or 0  # a discovery command: the owner's, who discovers
            target = job.decoder
            for decoder, setup in job.parts:
                if any(t.track_id == track for t in setup.tracks) and command.cmd != "add":
                    target = decoder
            for decoder in job.decoders:
                if decoder == target:
                    self.transport.control(decoder, job.job_id, command.cmd, track, command.prompt)
                else:
                    self.transport.control(decoder, job.job_id, "checkpoint", 0, None)
        job.commands = []

    def _finish(self, job: _Job, ending: Ending, error: str | None) -> None:
        """Decide how the job ends; it ends once its frames in flight are back."""
        if job.ending is None:
            job.ending = (ending, error)
            job.ending_since = time.monotonic()

    def _end_jobs(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.ending is None and job.end and job.in_flight == 0:
                job.ending = (Ending.FINISHED, None)
            if job.ending is None:
                continue
            # A cancel is obeyed within stop_s whatever the source or its host does.
            limit = self.options.stop_s if job.ending[0] is Ending.STOPPED else self.options.drain_s
            draining = now - job.ending_since < limit
            # A read that names the job is answered first: its source is released after it, or
            # the host would open it again for that read, and keep it.
            reading = any(job.job_id in r.jobs for r in self._reads.values())
            if draining and (job.in_flight > 0 or reading):
                continue
            self._end(job)

    def _end(self, job: _Job, ending: tuple[Ending, str | None] | None = None) -> None:
        kind, error = ending or job.ending or (Ending.FAILED, "ended")
        del self.jobs[job.job_id]
        self.control.remove(job.job_id)
        self.placement.release(
            job.host, [(job.decoder, _load(job.setup)), *((d, len(s.tracks)) for d, s in job.parts)]
        )
        for decoder, _ in job.parts:
            self.transport.forget(decoder, job.job_id)
        self.transport.release(job.job_id, job.host, job.decoder)
        self._write_drops([job])
        if job.live:
            self.metrics.stream_ended(job.job_id)
        try:
            status = self.lifecycle.end(job.job_id, job.start.spec, kind, error)
        except SamstreamError as exc:  # Redis gone: the job stays "running" and resumes later
            log.warning("job %s ended (%s) but its status could not be written: %s", job.job_id, kind, exc)
            return
        self.listener.ended(job.job_id, status.value, error)

    def interrupt(self, error: str | None = None) -> None:
        """End every job now as interrupted (resumable), without waiting for frames in flight."""
        for job in list(self.jobs.values()):
            self._end(job, (Ending.INTERRUPTED, error))

    def _event(self, job_id: str, kind: str, detail: str | None) -> None:
        """Write a job event; one that cannot be written (Redis refusing) is logged, not fatal."""
        try:
            self.events(job_id, kind, detail)
        except SamstreamError as exc:
            log.warning("job %s: writing its %s event: %s", job_id, kind, exc)

    def _write_capacity(self, fps: dict[int, float]) -> None:
        """What the encoders and the tracker hosts of the jobs take, for admission
        (:mod:`pipeline.jobs.admission`)."""
        hosts = {d for job in self.jobs.values() for d in job.decoders}
        try:
            self.lifecycle.store.record_capacity(
                fps,
                can_grow=self.transport.encoder_slots()[1],
                track_frames=self.trackers.track_frames(hosts),
            )
        except (SamstreamError, JobError) as exc:
            log.warning("recording the encoders' capacity: %s", exc)

    def _write_rates(self, now: float) -> None:
        """Each live job's requested and delivered rates, and whether the encoders bound it, to its
        hash and the metrics (written when they change)."""
        elapsed = now - self._rates_at
        if elapsed <= 0:
            return
        self._rates_at = now
        changed: dict[str, dict[str, str]] = {}
        for job in self.jobs.values():
            delivered = job.delivered_fps = round(job.published / elapsed, 2)
            bound = job.bound = job.refused > 0
            job.published = job.refused = 0
            if not job.live:
                continue
            self.metrics.stream_rates(job.job_id, job.requested_fps, delivered, bound)
            rates = (job.requested_fps, delivered, bound, job.size)
            if rates != job.rates_written:
                job.rates_written = rates
                changed[job.job_id] = {
                    "requested_fps": "" if job.requested_fps is None else f"{job.requested_fps:g}",
                    "delivered_fps": f"{delivered:g}",
                    "capacity_bound": "1" if bound else "0",
                    "image_size_now": str(job.size),
                }
        if not changed:
            return
        try:
            self.lifecycle.store.record_fields_many(changed)
        except (SamstreamError, JobError) as exc:
            log.warning("recording stream rates: %s", exc)

    def _measure_capacity(self, now: float) -> None:
        """What the encoders take at each size in use and on an auto stream's ladder (estimated
        where a size is not measured yet): the metrics (measured sizes), the store (for admission)
        and the auto streams' sizes planned from it."""
        used = {j.size for j in self.jobs.values()}
        ladders = {z for j in self.jobs.values() if j.auto is not None for z in j.auto.sizes}
        capacity: dict[int, float] = {}
        for size in used | ladders:
            fps = self.pacer.capacity(size, estimated=True)
            if not math.isfinite(fps):
                continue
            capacity[size] = fps
            if size in used and size in self.pacer.cost:
                self.metrics.encoder_capacity(size, fps)
        if capacity:  # admission counts auto streams at their smallest size: estimated, maybe
            self._write_capacity(capacity)
        self._plan_sizes(capacity, now)
        self._tell_demand()

    def _tell_demand(self) -> None:
        """The encoders the live jobs need (each one's rate, an auto stream's target, at its size's
        cost per frame), for an autoscaled pool: paced reads keep about one call in flight per
        encoder, so the calls in flight no longer say it (see :mod:`workers.demand`). Said once a
        window while live jobs run (0 once they have gone); a job whose rate or cost is not known
        yet adds nothing."""
        live = [j for j in self.jobs.values() if j.live and j.ending is None and not j.end]
        if not live and not self._demanding:
            return
        work = 0.0
        for job in live:
            cost = self.pacer.estimate(job.size)
            rate = job.requested_fps
            if rate and job.auto is not None and job.auto.target_fps is not None:
                rate = min(rate, job.auto.target_fps)  # an auto stream wants its target, at its size
            if rate and cost:
                work += rate * cost
        replicas = math.ceil(max(0.0, work) / DEMAND_UTILISATION - 1e-9)
        self._demanding = bool(live)
        try:
            self.transport.encoder_demand(replicas)
        except Exception as exc:  # the pool's own measure stands
            log.warning("telling the encoder pool its demand: %s", exc)

    def _plan_sizes(self, capacity: dict[int, float], now: float) -> None:
        """Move ``image_size: auto`` streams over their sizes (:mod:`pipeline.jobs.sizing`); each
        change is an ``image_size`` event, and the job's next reads bring frames of the new size."""
        if not any(j.auto for j in self.jobs.values()):
            return
        streams = [
            Stream(
                j.job_id,
                j.weight,
                j.size,
                j.requested_fps if j.live else None,
                j.auto,
                j.delivered_fps,
                j.bound,
            )
            for j in self.jobs.values()
            if j.ending is None and not j.end
        ]
        for change in self.sizes.plan(streams, capacity, now):
            job = self.jobs[change.key]
            job.size = change.new
            log.info("job %s: image size %s", job.job_id, change.detail())
            self._event(job.job_id, "image_size", change.detail())

    def _write_drops(self, jobs: Sequence[_Job] | None = None) -> None:
        changed = {
            j.job_id: j.dropped
            for j in (self.jobs.values() if jobs is None else jobs)
            if j.dropped != j.dropped_written
        }
        if not changed:
            return
        try:
            self.lifecycle.store.record_dropped_many(changed)
        except (SamstreamError, JobError) as exc:
            log.warning("recording drops: %s", exc)
            return
        for j in self.jobs.values() if jobs is None else jobs:
            j.dropped_written = j.dropped


def _sum_sizes(reserved: dict[int, dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for sizes in reserved.values():
        for size, count in sizes.items():
            out[size] = out.get(size, 0) + count
    return out


def _reason(exc: BaseException, what: str) -> str:
    inner = getattr(exc, "cause", None) or exc
    if isinstance(inner, SamstreamError):
        return str(inner)
    return f"{what}: {type(inner).__name__}: {inner}"


def detector_spec(discover: DiscoveryConfig | None) -> DetectorSpec | None:
    """What a job's source host needs to run its detector (None: it has none)."""
    if discover is None or discover.detector is None:
        return None
    return DetectorSpec(discover.detector, discover.every_s, discover.detector_score, discover.classes)


def _load(setup: TrackSetup) -> int:
    """The tracks a job's owner (or whole) host was placed for: its own, and those its discovery
    may start."""
    return len(setup.tracks) + discovered_at_most(setup.discovery)
