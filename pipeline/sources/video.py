"""Video files and http(s) URLs, decoded by PyAV on a background thread.

Frame numbers count decoded frames from 0 in presentation order (what a player shows), whatever
the container's timestamps say; ``frames(start, stride)`` yields numbers start, start+stride, ….

Display rotation (see :mod:`pipeline.sources.orientation`): the display matrix of the first frame
is applied to every frame; sizes reported (``SourceInfo``, ``Frame.original_size``) are after
that rotation. PyAV 18 exposes no stream-level side data for reading, so opening a source decodes
its first frame; that frame is kept and given to the first ``frames()`` call, which goes on from
the same connection.

Bad inputs raise :class:`SourceError` with one line naming the source and the reason. A cut
file whose index lies at its end (MP4 written without ``faststart``) fails at open. A cut file
whose index comes first opens, yields every frame that decodes, then raises ``SourceError``
(``ended early``) in place of the first missing frame: a truncated file is never mistaken for a
complete one.

Limits (:class:`~pipeline.sources.limits.MediaLimits`): frames with more pixels than allowed
fail at open, before any of them is decoded whole; a video whose container declares more frames
or seconds than allowed fails at open, and one that turns out longer raises ``SourceError``
(``stopped after frame …``) in place of the first frame past the limit.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

import numpy as np

from pipeline.errors import InvalidInputError, SourceError
from pipeline.frames import Frame, Size, Yuv420
from pipeline.model.transforms import resize_longest_fast
from pipeline.sources.decode_thread import DecodeThread, Emit, reraise
from pipeline.sources.demux import DecodeFailure, OpenedVideo
from pipeline.sources.limits import LimitExceeded, MediaLimits
from pipeline.sources.opening import (
    URL_SCHEMES,
    error_reason,
    protocol_options,
    redact,
    scheme_of,
    stream_kinds,
    video_stream,
)
from pipeline.sources.orientation import Orientation, orientation_of

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

    from pipeline.sources.guard import GuardSession, NetworkGuard

DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_QUEUE_SIZE = 4


@dataclass(frozen=True)
class SourceInfo:
    """What a video source holds, as known after opening it.

    Attributes:
        uri: the file path or URL as given.
        width, height: frame size in pixels after display rotation.
        fps: average frame rate, or None if the container does not say.
        frame_count: number of frames: exact when the container indexes them (MP4/MOV), else
            an estimate from duration × fps, or None when neither is known.
        codec: FFmpeg's decoder name (``h264``, ``hevc``, ``vp9``, …).
        rotation: display rotation, counterclockwise degrees in {0, 90, 180, 270} (PyAV's
            ``VideoFrame.rotation`` convention; a phone held upright usually gives 270).
    """

    uri: str
    width: int
    height: int
    fps: float | None
    frame_count: int | None
    codec: str
    rotation: int


# -- naming and errors ------------------------------------------------------------------------


def _parse_uri(uri: str | os.PathLike[str]) -> tuple[str, bool]:
    """(text as given, is_url); raises InvalidInputError for schemes this module does not read."""
    if isinstance(uri, os.PathLike):
        return os.fspath(uri), False
    if not isinstance(uri, str):
        raise InvalidInputError(f"video source must be a path or an http(s) URL, got {type(uri).__name__}")
    if not uri.strip():
        raise InvalidInputError("video source is empty; give a file path or an http(s) URL")
    scheme = scheme_of(uri)
    if scheme is None:
        return uri, False
    if scheme not in URL_SCHEMES:
        raise InvalidInputError(
            f"unsupported video source scheme {scheme!r} in {redact(uri)}: "
            "expected a file path or an http:// or https:// URL"
        )
    if not urlsplit(uri).hostname:
        raise InvalidInputError(f"URL {redact(uri)} has no host")
    return uri, True


def _looks_like_mp4(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp"


# -- the source --------------------------------------------------------------------------------


class VideoSource:
    """Frames of a video file or http(s) URL, decoded ahead on a background thread.

    Opening decodes the first frame (to learn the display rotation and to fail early on bad
    input). ``frames()`` may be called again for another pass; each pass reads the source anew
    (the first reuses the opening connection). Use as a context manager, or call :meth:`close`.

    ``stall_s``: a pass whose input goes on without a video frame for this long (only audio, or
    nothing at all) fails with ``no picture for … s``; None waits as long as the input goes on.

    Example::

        with VideoSource("clip.mp4") as src:
            for frame in src.frames(stride=2, image_size=1024):
                ...  # frame.image: (h, w, 3) uint8 RGB with max(h, w) == 1024

    ``limits`` bound the pixels of a frame (by default
    :data:`~pipeline.sources.limits.DEFAULT_MAX_FRAME_PIXELS`) and the video's frames and duration.

    Raises:
        InvalidInputError: the URI has a scheme other than http/https (``file:`` included).
        SourceError: the source cannot be opened, holds no decodable video, or goes past ``limits``.
    """

    def __init__(
        self,
        uri: str | os.PathLike[str],
        *,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        guard: NetworkGuard | None = None,
        limits: MediaLimits | None = None,
        stall_s: float | None = None,
    ) -> None:
        self.limits = limits if limits is not None else MediaLimits()
        self.uri, self.is_url = _parse_uri(uri)
        self.name = redact(self.uri) if self.is_url else self.uri
        for label, value in (("open_timeout_s", open_timeout_s), ("read_timeout_s", read_timeout_s)):
            if not value > 0:
                raise InvalidInputError(f"{label} must be > 0 seconds, got {value!r}")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise InvalidInputError(f"queue_size must be an int >= 1, got {queue_size!r}")
        self._timeouts = (float(open_timeout_s), float(read_timeout_s)) if self.is_url else None
        self._queue_size = queue_size
        if stall_s is not None and not stall_s > 0:
            raise InvalidInputError(f"stall_s must be > 0 seconds, got {stall_s!r}")
        self._stall_s = stall_s
        self._lock = threading.Lock()
        self._readers: set[VideoPass] = set()
        self._closed = False
        self._pending: OpenedVideo | None = None
        # A URL read for a service: every connection checked (see pipeline.sources.guard).
        self._guard: GuardSession | None = (
            guard.session(open_timeout_s, read_timeout_s) if guard is not None and self.is_url else None
        )

        try:
            opened = self._open()
        except BaseException:
            self._close_guard()
            raise
        try:
            first = opened.next_frame()
        except DecodeFailure as exc:
            opened.close()
            self._close_guard()
            reason = self._reason(exc.__cause__, exc.reason)
            raise SourceError(f"cannot read video {self.name}: {reason}") from exc.__cause__ or exc
        except LimitExceeded as exc:
            opened.close()
            self._close_guard()
            raise SourceError(f"cannot read video {self.name}: {exc.reason}") from exc
        except BaseException:
            opened.close()
            self._close_guard()
            raise
        if first is None:
            opened.close()
            self._close_guard()
            reason = self._reason(None, "no video frames in it (empty, or cut short?)")
            raise SourceError(f"cannot read video {self.name}: {reason}")
        self._orientation = orientation_of(first)
        self._info = _make_info(self.uri, opened.container, opened.stream, first, self._orientation)
        opened.first = first
        self._pending = opened

    @property
    def info(self) -> SourceInfo:
        """Size (after rotation), frame rate, frame count, codec and rotation of the video."""
        return self._info

    @property
    def orientation(self) -> Orientation:
        """The display transform applied to every frame."""
        return self._orientation

    def frames(
        self, start: int = 0, stride: int = 1, image_size: int | None = 1024
    ) -> Generator[Frame, None, None]:
        """Yield frames ``start``, ``start + stride``, … to the end of the video.

        Args:
            start: number of the first frame to yield (frames before it are decoded, not converted).
            stride: yield every ``stride``-th frame from ``start`` on.
            image_size: resize so that the long side is this (SAM's resize, by
                :func:`~pipeline.model.transforms.resize_longest_fast`); None keeps the size.

        Yields:
            :class:`Frame` with ``index`` the source frame number, ``image`` (h, w, 3) uint8 RGB
            after display rotation and resize, ``original_size`` the (H, W) after rotation,
            ``pts`` in seconds (None if the frame has none), ``capture_time`` when it was decoded.

        Closing the generator (``close()``, or dropping it) stops its decode thread.

        Raises:
            InvalidInputError: start < 0, stride < 1 or image_size < 1 (raised by this call).
            SourceError: while iterating, when reading fails (after the frames that decoded).
        """
        self._check_pass(start, stride, image_size)
        return self._iterate(start, stride, image_size)

    def _check_pass(self, start: int, stride: int, image_size: int | None) -> None:
        for label, value, low in (("start", start, 0), ("stride", stride, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidInputError(f"{label} must be an int >= {low}, got {value!r}")
        if image_size is not None and (
            not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1
        ):
            raise InvalidInputError(f"image_size must be None or an int >= 1, got {image_size!r}")
        if self._closed:
            raise SourceError(f"video {self.name} is closed")

    def _iterate(self, start: int, stride: int, image_size: int | None) -> Generator[Frame, None, None]:
        reader = self._start_pass(start, stride, image_size, None)
        try:
            while True:
                frame = reader.get()
                if frame is None:
                    return
                yield frame
        finally:  # also on GeneratorExit: an abandoned iteration stops its thread
            reader.stop()

    def open_pass(
        self,
        start: int = 0,
        stride: int = 1,
        image_size: int | None = 1024,
        on_frame: Callable[[], None] | None = None,
    ) -> VideoPass:
        """Start decoding frames ``start``, ``start + stride``, … on a thread, as :meth:`frames` does,
        but hand back the pass itself: :meth:`VideoPass.get` takes a timeout, so one caller can read
        many sources without waiting on any. ``on_frame`` is called on the decode thread after each
        frame is buffered (and at the end). Stop the pass with :meth:`VideoPass.stop`.

        Raises:
            InvalidInputError, SourceError: as :meth:`frames`.
        """
        self._check_pass(start, stride, image_size)
        return self._start_pass(start, stride, image_size, on_frame)

    def _start_pass(
        self, start: int, stride: int, image_size: int | None, on_frame: Callable[[], None] | None
    ) -> VideoPass:
        reader = VideoPass(self, start, stride, image_size, on_frame)
        with self._lock:
            self._readers.add(reader)
        reader.start()
        return reader

    def _forget_pass(self, reader: VideoPass) -> None:
        with self._lock:
            self._readers.discard(reader)

    def close(self) -> None:
        """Stop every decode thread and release the source. Idempotent."""
        with self._lock:
            self._closed = True
            readers = list(self._readers)
            pending, self._pending = self._pending, None
        for reader in readers:
            reader.thread.stop()
        if pending is not None:
            pending.close()
        self._close_guard()

    def _close_guard(self) -> None:
        if self._guard is not None:
            self._guard.close()

    def _reason(self, exc: BaseException | None, fallback: str) -> str:
        """The reason to report: ``fallback``, unless a guarded source was blocked or could not connect."""
        if self._guard is None:
            return fallback
        return self._guard.reason(exc if exc is not None else SourceError(fallback), fallback)

    def _check_guard(self) -> None:
        """Raise when the guard refused something this source tried to reach (an HLS segment, …)."""
        if self._guard is not None and self._guard.blocked:
            from pipeline.sources.addresses import BLOCKED

            raise SourceError(f"video {self.name} stopped: {BLOCKED}")

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoSource({self.name!r})"

    # -- used by readers --

    def _take_opened(self) -> OpenedVideo:
        """The opening connection (first pass) or a fresh one (later passes)."""
        with self._lock:
            if self._closed:
                raise SourceError(f"video {self.name} is closed")
            opened, self._pending = self._pending, None
        return opened if opened is not None else self._open()

    def _open(self) -> OpenedVideo:
        import av

        if not self.is_url:
            self._check_file()
        # "file:" stops FFmpeg from reading a path like "a:b.mp4" as protocol "a".
        target = self.uri if self.is_url else "file:" + os.path.abspath(self.uri)
        # The pixel limit reaches the decoders FFmpeg's probe runs while opening, too.
        options = {**protocol_options(scheme_of(target)), **self.limits.decoder_options()}
        if self._guard is not None:
            try:
                target, guarded = self._guard.prepare(target)
            except (SourceError, InvalidInputError) as exc:
                raise SourceError(f"cannot open video {self.name}: {exc}") from None
            options = {**guarded, **self.limits.decoder_options()}
        try:
            container = av.open(target, mode="r", timeout=self._timeouts, options=options)
        except av.FFmpegError as exc:
            reason = error_reason(exc, self._timeouts)
            if isinstance(exc, av.error.InvalidDataError):
                reason = (
                    "incomplete or corrupt MP4/MOV file: its index cannot be read (cut short?)"
                    if not self.is_url and _looks_like_mp4(self.uri)
                    else "not a video file, or corrupt (FFmpeg cannot read its format)"
                )
            reason = self._reason(exc, reason)
            raise SourceError(f"cannot open video {self.name}: {reason}") from exc
        try:
            stream = video_stream(container)
        except BaseException:
            container.close()
            raise
        if stream is None:
            kinds = stream_kinds(container)
            container.close()
            raise SourceError(f"cannot read video {self.name}: it has no video stream (streams: {kinds})")
        self._check_declared(container, stream)
        # Slice threads only: frame threads add latency, report decode errors frames late, and a
        # source worker hosts many sources whose threads already fill its cores.
        stream.thread_type = "SLICE"
        return OpenedVideo(
            container, stream, self._timeouts, None if self.is_url else self.uri, self.limits, self._stall_s
        )

    def _check_declared(self, container: InputContainer, stream: VideoStream) -> None:
        """Fail (closing ``container``) when what the container says goes past the limits; tell the
        decoder the pixel limit. Nothing is decoded here: the probe refused larger pictures."""
        context = stream.codec_context
        try:
            self.limits.check_size(context.width, context.height)  # 0 x 0 when the probe refused
            self.limits.check_declared(stream.frames or None, _declared_seconds(container, stream))
        except LimitExceeded as exc:
            container.close()
            raise SourceError(f"cannot read video {self.name}: {exc.reason}") from None
        context.options = {**context.options, **self.limits.decoder_options()}

    def _check_file(self) -> None:
        path = Path(self.uri)
        if not path.exists():
            raise SourceError(f"cannot open video {self.name}: no such file")
        if path.is_dir():
            raise SourceError(f"cannot open video {self.name}: is a directory, not a video file")
        if path.is_file() and path.stat().st_size == 0:
            raise SourceError(f"cannot open video {self.name}: empty file (0 bytes)")

    def _error(self, failure: DecodeFailure, decoded: int) -> SourceError:
        """The SourceError for a read failure after ``decoded`` frames were read."""
        where = f"after frame {decoded - 1}" if decoded else "before the first frame"
        return SourceError(
            f"video {self.name} ended early {where}: {self._reason(failure.__cause__, failure.reason)}"
        )

    def _limit_error(self, exceeded: LimitExceeded, decoded: int) -> SourceError:
        """The SourceError for a frame past a limit, after ``decoded`` frames were read."""
        where = f"after frame {decoded - 1}" if decoded else "before the first frame"
        return SourceError(f"video {self.name} stopped {where}: {exceeded.reason}")


# FFmpeg's colour spaces (AVColorSpace) whose matrix the encoder's device converts: BT.709, and
# BT.601 (also what FFmpeg assumes when the stream does not say).
_MATRICES = {1: "bt709", 2: "bt601", 5: "bt601", 6: "bt601"}
_YUV420 = {"yuv420p": False, "yuvj420p": True}  # pixel format → full range
# Frames up to twice the encoder size are handed on as decoded (4:2:0, 1.5 bytes a pixel); larger
# ones are made RGB and resized here, so the bytes a frame moves stay bounded.
MAX_NATIVE_SCALE = 2


def to_frame(
    av_frame: VideoFrame,
    index: int,
    orientation: Orientation,
    image_size: int | None,
    t0: float,
    capture_time: float | None = None,
) -> Frame:
    """A decoded PyAV frame → :class:`Frame`: turned for display, ready for the encoder (None: RGB as decoded).

    A 4:2:0 frame (what nearly every video decodes to) up to :data:`MAX_NATIVE_SCALE` times the
    encoder size keeps its planes (:class:`~pipeline.frames.Yuv420`): the encoder's device converts
    and resizes it. Any other frame is converted to RGB and resized here
    (:func:`~pipeline.model.transforms.resize_longest_fast`).

    ``capture_time`` defaults to now (the frame was just decoded); ``timings["decode"]`` counts
    from ``t0`` (``perf_counter``) to the turned pixels, ``timings["preprocess"]`` is what the
    source spends readying them for the encoder.
    """
    capture_time = time.time() if capture_time is None else capture_time
    pts = float(av_frame.time) if av_frame.time is not None else None
    if image_size is not None:
        t1 = time.perf_counter()
        yuv = _yuv420(av_frame, orientation, image_size)
        if yuv is not None:
            return Frame(
                index=index,
                pts=pts,
                capture_time=capture_time,
                image=yuv,
                original_size=yuv.shape[:2],
                timings={"decode": t1 - t0, "preprocess": time.perf_counter() - t1},
            )
    image = orientation.apply(av_frame.to_ndarray(format="rgb24"))
    original_size: Size = (image.shape[0], image.shape[1])
    t1 = time.perf_counter()
    if image_size is not None:
        image = resize_longest_fast(image, image_size)
    return Frame(
        index=index,
        pts=pts,
        capture_time=capture_time,
        image=np.ascontiguousarray(image),
        original_size=original_size,
        timings={"decode": t1 - t0, "preprocess": time.perf_counter() - t1},
    )


def _yuv420(av_frame: VideoFrame, orientation: Orientation, image_size: int) -> Yuv420 | None:
    """The frame's own 4:2:0 planes, turned for display (copies), or None when it must go as RGB."""
    full_range = _YUV420.get(av_frame.format.name)
    matrix = _MATRICES.get(int(av_frame.colorspace))
    if (
        full_range is None
        or matrix is None
        or max(av_frame.width, av_frame.height) > MAX_NATIVE_SCALE * image_size
    ):
        return None
    planes = []
    for plane in av_frame.planes:
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        planes.append(np.ascontiguousarray(orientation.apply(rows[:, : plane.width])))
    return Yuv420(
        planes[0], planes[1], planes[2], matrix, full_range or int(av_frame.color_range) == 2, image_size
    )


def _declared_seconds(container: InputContainer, stream: VideoStream) -> float | None:
    """The video's duration as its stream (else its container) declares it; None if neither does."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000 if container.duration else None  # AV_TIME_BASE


def _make_info(
    uri: str, container: InputContainer, stream: VideoStream, first: VideoFrame, orientation: Orientation
) -> SourceInfo:
    height, width = orientation.size((first.height, first.width))
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    frame_count: int | None = stream.frames or None
    if frame_count is None and fps:
        frame_count = round((_declared_seconds(container, stream) or 0.0) * fps) or None
    return SourceInfo(
        uri=uri,
        width=width,
        height=height,
        fps=fps,
        frame_count=frame_count,
        codec=stream.codec_context.name,
        rotation=orientation.rotation,
    )


class VideoPass:
    """One pass over a source: its decode thread feeding a bounded queue, read by the consumer."""

    def __init__(
        self,
        source: VideoSource,
        start: int,
        stride: int,
        image_size: int | None,
        on_frame: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.start_at, self.stride, self.image_size = start, stride, image_size
        self.decoded = 0  # frames decoded so far (the next frame's number)
        read_timeout = source._timeouts[1] if source._timeouts else 0.0
        self.thread: DecodeThread[Frame] = DecodeThread(
            self._produce,
            name=f"decode {source.name}",
            label=f"video {source.name}",
            capacity=source._queue_size,
            join_timeout_s=read_timeout + 5.0,
            raise_error=self._raise,
            on_item=on_frame,
        )

    def start(self) -> None:
        self.thread.start()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None at the end; re-raises the decode thread's error, chained.

        Raises:
            TimeoutError: no frame within ``timeout`` seconds (None: wait as long as it takes).
        """
        return self.thread.get(timeout)

    def stop(self) -> None:
        """Stop the decode thread and leave the source (idempotent)."""
        self.thread.stop()
        self.source._forget_pass(self)

    def _produce(self, emit: Emit[Frame], stopping: threading.Event) -> None:
        opened: OpenedVideo | None = None
        try:
            opened = self.source._take_opened()
            opened.stopping = stopping
            next_wanted = self.start_at
            t0 = time.perf_counter()
            while not stopping.is_set():
                av_frame = opened.next_frame()
                self.source._check_guard()  # a segment refused is no end of the video
                if av_frame is None:
                    break
                number, self.decoded = self.decoded, self.decoded + 1
                if number != next_wanted:
                    continue  # skipped: decoded, never converted
                next_wanted += self.stride
                # "decode" counts from t0: the skipped frames' decoding is this frame's cost.
                if not emit(to_frame(av_frame, number, self.source._orientation, self.image_size, t0)):
                    break
                t0 = time.perf_counter()
        finally:
            if opened is not None:
                opened.close()

    def _raise(self, error: BaseException) -> NoReturn:
        if isinstance(error, DecodeFailure):
            raise self.source._error(error, self.decoded) from error.__cause__ or error
        if isinstance(error, LimitExceeded):
            raise self.source._limit_error(error, self.decoded) from error
        reraise(error)
