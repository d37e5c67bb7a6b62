"""A source host: many jobs' sources in one process, read together once per tick.

The plain class behind the source-host actor. Each job's source is a :class:`Reader` with its own
decode thread and bounded buffer (a file) or one-slot mailbox (a live feed); one :meth:`read`
call carries the ready frames of every job it names, so a stream costs a thread and a few
buffers, not a process, and the machinery's cost per frame is shared by all the frames of a tick.

A host learns of a job from the job's first read request (which carries its :class:`SourceSpec`)
and opens its source on a thread of its own: opening blocks (connecting, probing), reading never
waits on it. A host that was restarted (its process died) reopens every source from the next
request that names it: a file at the requested position, a live feed at its present.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from pipeline.errors import SamstreamError
from pipeline.frames import Frame
from pipeline.masks.preview import OFF, PreviewOptions, PreviewPacer, make_preview
from pipeline.model.detector import Detector, open_detector
from pipeline.sources.guard import NetworkGuard
from pipeline.sources.limits import MediaLimits
from pipeline.sources.reader import FileReader, LiveReader, Notify, Reader
from pipeline.sources.video import SourceInfo, VideoSource
from pipeline.tracking.discovery import detection_frame
from pipeline.tracking.tracker import DEFAULT_FPS, feed_time

log = logging.getLogger(__name__)

# Frames a file source decodes ahead of the pipeline.
FILE_QUEUE = 16
TELL_EVERY_S = 30.0  # a failing detector is told once in this long (not once a frame)


@dataclass(frozen=True)
class SourceSpec:
    """What a host needs to open a job's source.

    Attributes:
        uri: a file path or URL.
        image_size: encoder input size the frames are prepared for.
        stride: file jobs: every n-th frame.
        live: a live feed (newest frame first) rather than a file (every frame).
        give_up_s: live feeds: fail after this long without a frame.
        limits: pixels per frame (every source), frames and duration (files) it may have.
        stall_s: files and URLs: fail after this long without a frame while one is wanted.
        preview: the JPEG previews the host makes of the job's frames (see :mod:`pipeline.masks.preview`).
        detector: the job's detector, run on one frame every ``every_s`` seconds of the feed
            (None: none).
    """

    uri: str
    image_size: int
    stride: int = 1
    live: bool = False
    give_up_s: float = 30.0
    limits: MediaLimits = field(default_factory=MediaLimits)
    stall_s: float = 30.0
    preview: PreviewOptions = OFF
    detector: DetectorSpec | None = None


@dataclass(frozen=True)
class DetectorSpec:
    """A job's detector (see :mod:`pipeline.model.detector`): its file, how often it runs (seconds
    of the feed's time), its least score and the classes kept (None: all)."""

    path: str
    every_s: float
    min_score: float = 0.25
    classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ReadRequest:
    """One job's part of a read.

    Attributes:
        job_id: the job.
        source: how to open its source (used when the host does not hold it yet).
        after: the last frame the job has (None: none yet).
        count: most frames wanted (a live feed gives at most one: its newest).
        preview: make previews of these frames as the job's options say (False: a live job that
            nobody watches).
        image_size: a live job's frames are prepared for this encoder size from now on (an
            ``image_size: auto`` stream's moves); None: its source's ``image_size``.
        detect: run the job's detector on its detection frames (False: its discovery is paused,
            and the tracker would leave the boxes unused).
    """

    job_id: str
    source: SourceSpec
    after: int | None
    count: int
    preview: bool = True
    image_size: int | None = None
    detect: bool = True


@dataclass(frozen=True)
class ReadReply:
    """What a read returns for one job besides the pixels (small: the driver fetches it).

    Attributes:
        job_id: the job.
        indices: numbers of the frames returned, in order.
        end: no frame comes after these (files).
        opening: the source is still being opened; ask again.
        info: the source's size and length, in the first reply after it was opened.
        dropped: live feeds: frames dropped since the last reply.
        events: ``(kind, detail, epoch seconds)`` since the last reply: a live feed's (lost,
            restored), and a detector's failure (``detector_failed``).
        error: the source failed (one line); the job cannot go on.
    """

    job_id: str
    indices: tuple[int, ...] = ()
    end: bool = False
    opening: bool = False
    info: SourceInfo | None = None
    dropped: int = 0
    events: tuple[tuple[str, str, float], ...] = ()
    error: str | None = None


Opener = Callable[[SourceSpec, "int | None", Notify], Reader]


def open_reader(
    spec: SourceSpec, after: int | None, notify: Notify, guard: NetworkGuard | None = None
) -> Reader:
    """The reader of a job's source (blocks while connecting and probing).

    ``guard``: a service's host: every connection the source makes is checked (None: ``run``'s
    hosts, which read whatever their own user names).

    Raises:
        SamstreamError: the source cannot be opened (bad input, unreachable, blocked, not a video).
    """
    if spec.live:
        return LiveReader(
            spec.uri,
            spec.image_size,
            spec.give_up_s,
            after,
            notify,
            guard=guard,
            max_frame_pixels=spec.limits.max_frame_pixels,
        )
    opener = functools.partial(VideoSource, guard=guard) if guard is not None else VideoSource
    return FileReader(
        spec.uri,
        spec.image_size,
        spec.stride,
        FILE_QUEUE,
        notify,
        opener,
        limits=spec.limits,
        stall_s=spec.stall_s,
    )


def guarded_opener(guard: NetworkGuard | None) -> Opener:
    """:func:`open_reader` with every connection checked by ``guard`` (None: unchecked)."""
    return open_reader if guard is None else functools.partial(open_reader, guard=guard)


@dataclass
class _Slot:
    """One job's source in the host."""

    spec: SourceSpec
    reader: Reader | None = None
    error: str | None = None
    info_sent: bool = False
    thread: threading.Thread | None = field(default=None, repr=False)
    pacer: PreviewPacer | None = None
    detected_at: float | None = None  # live feeds: the time of the last frame taken
    told: float = -math.inf  # when its detector's failure was last told (monotonic)
    events: list[tuple[str, str, float]] = field(default_factory=list)  # the host's own, to tell


class SourceHost:
    """Runs many jobs' sources; one :meth:`read` takes the ready frames of all of them.

    Args:
        opener: opens a job's reader (:func:`open_reader`; tests give others).
        idle_wait_s: how long a read that found nothing at all waits for a first frame.
    """

    def __init__(self, opener: Opener = open_reader, idle_wait_s: float = 0.25) -> None:
        self._opener = opener
        self.idle_wait_s = idle_wait_s
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()  # set by any source's thread when it has something new
        self._detectors: dict[DetectorSpec, Detector] = {}  # opened once, shared by the jobs naming one

    @property
    def jobs(self) -> int:
        """Jobs whose sources this host holds."""
        with self._lock:
            return len(self._slots)

    def read(
        self, groups: Sequence[Sequence[ReadRequest]], wait_s: float = 0.04
    ) -> tuple[list[list[ReadReply]], list[list[Frame]]]:
        """The ready frames of every requested job, in groups (one per track-decoder host).

        Waits until each request has its ``count`` frames (or its end, or its error), or
        ``wait_s`` seconds have passed; a read that found nothing at all waits up to
        ``idle_wait_s`` for a first frame. Jobs not held yet are opened on threads of their own
        and answered ``opening`` meanwhile.

        Returns:
            For each group, one reply per request (same order) and the frames of the whole group
            in request order, each frame's ``job_id`` set.
        """
        start = time.monotonic()
        requests = [r for group in groups for r in group]
        slots = [self._slot(r) for r in requests]
        taken: list[list[Frame]] = [[] for _ in requests]
        ended = [False] * len(requests)
        errors: list[str | None] = [None] * len(requests)
        while True:
            self._ready.clear()
            waiting = False
            for i, (request, slot) in enumerate(zip(requests, slots, strict=True)):
                if ended[i] or errors[i] is not None or slot.error is not None:
                    continue
                if slot.reader is None:  # opening: its thread sets the event when done
                    waiting = True
                    continue
                resize = getattr(slot.reader, "resize", None)  # live readers' (files keep their size)
                if request.image_size is not None and resize is not None:
                    resize(request.image_size)
                want = request.count - len(taken[i])
                if want <= 0:
                    continue
                after = taken[i][-1].index if taken[i] else request.after
                try:
                    frames, end = slot.reader.take(after, want)
                except SamstreamError as exc:
                    errors[i] = slot.error = str(exc)
                    continue
                taken[i] += frames
                ended[i] = end
                waiting = waiting or (not end and len(taken[i]) < request.count)
            now = time.monotonic()
            any_frames = any(taken)
            limit = start + (wait_s if any_frames else max(wait_s, self.idle_wait_s))
            if not waiting or now >= limit:
                break
            self._ready.wait(limit - now)
        return self._answer(groups, requests, slots, taken, ended, errors)

    def _answer(
        self,
        groups: Sequence[Sequence[ReadRequest]],
        requests: list[ReadRequest],
        slots: list[_Slot],
        taken: list[list[Frame]],
        ended: list[bool],
        errors: list[str | None],
    ) -> tuple[list[list[ReadReply]], list[list[Frame]]]:
        replies: list[list[ReadReply]] = []
        frames: list[list[Frame]] = []
        i = 0
        for group in groups:
            group_replies: list[ReadReply] = []
            group_frames: list[Frame] = []
            for _ in group:
                request, slot = requests[i], slots[i]
                ready = self._detected(slot, taken[i]) if request.detect else taken[i]
                mine = [
                    replace(f, job_id=request.job_id)
                    for f in (_previewed(slot, ready) if request.preview else ready)
                ]
                group_frames += mine
                group_replies.append(self._reply(request, slot, mine, ended[i], errors[i] or slot.error))
                i += 1
            replies.append(group_replies)
            frames.append(group_frames)
        return replies, frames

    def _detected(self, slot: _Slot, frames: list[Frame]) -> list[Frame]:
        """``frames``, the detection frames among them carrying the job's detector's boxes (see
        :func:`~pipeline.tracking.discovery.detection_frame`). A file's frame is one by its own
        time and the frame rate, so a resumed job's are the same; a live feed's by the last frame
        taken. A detector that cannot run costs those frames their boxes, not the job: a
        ``detector_failed`` event says why (at most one a :data:`TELL_EVERY_S`)."""
        spec = slot.spec.detector
        if spec is None or not frames:
            return frames
        rate = (slot.reader.info.fps if slot.reader is not None else None) or DEFAULT_FPS
        out = []
        for f in frames:
            at = feed_time(f.index, f.pts, f.capture_time, slot.spec.live)
            before = slot.detected_at if slot.spec.live else at - slot.spec.stride / rate
            slot.detected_at = at
            if not detection_frame(at, before, spec.every_s):
                out.append(f)
                continue
            start = time.perf_counter()
            try:
                detector = self._detectors.get(spec)
                if detector is None:
                    detector = self._detectors[spec] = open_detector(spec.path, spec.min_score, spec.classes)
                found = tuple(detector.detect(f.rgb(), f.original_size))
            except Exception as exc:  # the stream goes on without boxes; the job's events say why
                _tell_failure(slot, spec, f.index, exc)
                out.append(f)
                continue
            out.append(
                replace(f, detections=found, timings={**f.timings, "detect": time.perf_counter() - start})
            )
        return out

    def _reply(
        self, request: ReadRequest, slot: _Slot, frames: list[Frame], end: bool, error: str | None
    ) -> ReadReply:
        reader = slot.reader
        if reader is None:
            return ReadReply(request.job_id, opening=error is None, error=error)
        info = None
        if not slot.info_sent:
            info, slot.info_sent = reader.info, True
        return ReadReply(
            request.job_id,
            tuple(f.index for f in frames),
            end,
            info=info,
            dropped=reader.dropped(),
            events=(*reader.events(), *_drain(slot.events)),
            error=error,
        )

    def _slot(self, request: ReadRequest) -> _Slot:
        with self._lock:
            slot = self._slots.get(request.job_id)
            if slot is None:
                slot = _Slot(request.source)
                self._slots[request.job_id] = slot
                slot.thread = threading.Thread(
                    target=self._open,
                    args=(request.job_id, slot, request.after),
                    name=f"open {request.job_id}",
                    daemon=True,
                )
                slot.thread.start()
            return slot

    def _open(self, job_id: str, slot: _Slot, after: int | None) -> None:
        try:
            reader = self._opener(slot.spec, after, self._ready.set)
        except SamstreamError as exc:
            slot.error = str(exc)
        except Exception as exc:  # a bug: the job says so rather than waiting for ever
            slot.error = f"internal error opening the source: {type(exc).__name__}: {exc}"
        else:
            with self._lock:
                gone = self._slots.get(job_id) is not slot
                if not gone:
                    slot.reader = reader
            if gone:  # closed while it was opening
                reader.close()
        self._ready.set()

    def close(self, job_ids: Iterable[str]) -> None:
        """Stop the jobs' sources (on a thread: a live feed may take its read timeout to stop)."""
        readers = []
        with self._lock:
            for job_id in job_ids:
                slot = self._slots.pop(job_id, None)
                if slot is not None and slot.reader is not None:
                    readers.append(slot.reader)
        if readers:  # on threads of their own: a feed's read may take its timeout to end
            threading.Thread(target=_close_all, args=(readers,), name="close sources", daemon=True).start()

    def shutdown(self) -> None:
        """Close every source, waiting for them."""
        with self._lock:
            readers = [s.reader for s in self._slots.values() if s.reader is not None]
            self._slots.clear()
        _close_all(readers)


def _tell_failure(slot: _Slot, spec: DetectorSpec, index: int, exc: Exception) -> None:
    """A ``detector_failed`` event for the job, unless one was told within :data:`TELL_EVERY_S`."""
    now = time.monotonic()
    if now - slot.told < TELL_EVERY_S:
        return
    slot.told = now
    name = os.path.basename(spec.path)
    why = str(exc) if isinstance(exc, SamstreamError) else f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, SamstreamError):
        log.warning("detector %s failed on frame %d", spec.path, index, exc_info=True)
    detail = f"frame {index}: {why.replace(spec.path, name)}; frames go on without its boxes"
    slot.events.append(("detector_failed", detail[:500], time.time()))


def _drain(events: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    out = list(events)
    events.clear()
    return out


def _previewed(slot: _Slot, frames: list[Frame]) -> list[Frame]:
    """``frames``, the ones due a preview (its pace: at most ``rate`` a second) carrying it."""
    options = slot.spec.preview
    if not options.enabled or not frames:
        return frames
    if slot.pacer is None:
        slot.pacer = PreviewPacer(options.rate)
    now = time.monotonic()
    out = []
    for f in frames:
        if slot.pacer.due(now):
            start = time.perf_counter()
            try:
                preview = make_preview(f.image, f.original_size, options)
            except Exception:  # a picture the viewer misses is no reason to fail the job, or the read
                log.warning("no preview of frame %d", f.index, exc_info=True)
            else:
                f = replace(f, preview=preview, timings={**f.timings, "preview": time.perf_counter() - start})
        out.append(f)
    return out


def _close_all(readers: Sequence[Reader]) -> None:
    """Close readers side by side, then have their decoders freed (see :class:`_Collector`)."""

    def close(reader: Reader) -> None:
        with contextlib.suppress(Exception):  # best effort: the source is gone either way
            reader.close()

    closing = [threading.Thread(target=close, args=(r,), daemon=True) for r in readers]
    for t in closing:
        t.start()
    for t in closing:
        t.join()
    _COLLECTOR.request()


class _Collector:
    """Runs a full garbage collection a while after sources were closed, once for all of them.

    A PyAV frame whose side data was read (the display matrix, read from the first frame of every
    connection) and its side-data container refer to each other; the frame holds the decoder's
    buffer pool, and with it the decoder's threads and buffers, until Python's cyclic collector
    frees it, which may be long after the source was closed. Collections are coalesced: at most
    one every ``delay_s``, however many sources close (one costs tens of milliseconds).
    """

    def __init__(self, delay_s: float = 1.0) -> None:
        self.delay_s = delay_s
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="collect closed sources", daemon=True)
                self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        while self._wanted.wait(timeout=60.0):
            time.sleep(self.delay_s)  # the other sources closing now are collected with these
            self._wanted.clear()
            gc.collect()


_COLLECTOR = _Collector()
