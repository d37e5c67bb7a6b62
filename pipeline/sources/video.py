"""Video files and http(s) URLs, decoded by PyAV on a background thread.

Frame numbers count decoded frames from 0 in presentation order (what a player shows), whatever
the container's timestamps say; ``frames(start, stride)`` yields numbers start, start+stride, ….

Display rotation: phones store the picture as captured plus a display matrix that says how to
turn it. FFmpeg's decoders attach that matrix to every frame (``DISPLAYMATRIX`` side data, which
PyAV 18 also reads as ``VideoFrame.rotation``, counterclockwise degrees). We read the matrix of
the first frame and apply it to every frame, with its mirror flips, as ``ffmpeg -autorotate``
does; sizes reported (``SourceInfo``, ``Frame.original_size``) are after that rotation. PyAV 18
exposes no stream-level side data for reading, so opening a source decodes its first frame; that
frame is kept and given to the first ``frames()`` call, which goes on from the same connection.

Bad inputs raise :class:`SourceError` with one line naming the source and the reason. A cut
file whose index lies at its end (MP4 written without ``faststart``) fails at open. A cut file
whose index comes first opens, yields every frame that decodes, then raises ``SourceError``
(``ended early``) in place of the first missing frame: a truncated file is never mistaken for a
complete one.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import queue
import re
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from pipeline.errors import InvalidInputError, SourceError
from pipeline.frames import Frame, Size
from pipeline.model.transforms import resize_longest

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

URL_SCHEMES = ("http", "https")
DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_QUEUE_SIZE = 4
_POLL_S = 0.05  # how often a blocked queue operation looks at the stop flag

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


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


@dataclass(frozen=True)
class Orientation:
    """How to turn a decoded HxWx3 picture into the one to display (a dihedral transform).

    Applied in this order: transpose the two image axes, then flip rows, then flip columns.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def from_display_matrix(cls, matrix: Sequence[int]) -> Orientation:
        """From FFmpeg's 3x3 display matrix (9 ints, row-major, 16.16 fixed point).

        FFmpeg maps a source point (x, y) to the display point x' = a·x + c·y, y' = b·x + d·y,
        with a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4] (y pointing down). Angles
        that are not a multiple of 90° snap to the nearest one.
        """
        a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
        if abs(a) + abs(d) >= abs(b) + abs(c):  # x' follows x: no transpose
            return cls(transpose=False, flip_rows=d < 0, flip_cols=a < 0)
        return cls(transpose=True, flip_rows=b < 0, flip_cols=c < 0)

    @classmethod
    def from_rotation(cls, degrees: int) -> Orientation:
        """A pure counterclockwise rotation by a multiple of 90 degrees."""
        k = round(degrees / 90) % 4
        return (cls(), cls(True, True, False), cls(False, True, True), cls(True, False, True))[k]

    @property
    def rotation(self) -> int:
        """Counterclockwise degrees of the rotation part, in {0, 90, 180, 270} (as FFmpeg reads it)."""
        # The first column of the transform's matrix, (a, b), is where the x axis goes.
        a, b = (0, -1 if self.flip_rows else 1) if self.transpose else (-1 if self.flip_cols else 1, 0)
        return round(-math.degrees(math.atan2(b, a))) % 360

    def size(self, size: Size) -> Size:
        """(H, W) after the transform of an (H, W) picture."""
        return (size[1], size[0]) if self.transpose else size

    def apply(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 → the displayed picture, as a view of ``image`` where possible."""
        if self.transpose:
            image = image.transpose(1, 0, 2)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return image


IDENTITY = Orientation()


def _display_matrix(frame: VideoFrame) -> list[int] | None:
    from av.sidedata.sidedata import Type

    side_data: Any = frame.side_data  # a SideDataContainer; PyAV 18's stub calls it a TypedDict
    data = side_data.get(Type.DISPLAYMATRIX)
    raw = bytes(data) if data is not None else b""
    return [int(v) for v in np.frombuffer(raw[:36], dtype=np.int32)] if len(raw) >= 36 else None


def orientation_of(frame: VideoFrame) -> Orientation:
    """The display orientation a decoded PyAV frame carries (identity when it has none)."""
    matrix = _display_matrix(frame)
    if matrix is not None:
        return Orientation.from_display_matrix(matrix)
    return Orientation.from_rotation(frame.rotation) if frame.rotation else IDENTITY


# -- naming and errors ------------------------------------------------------------------------


def _parse_uri(uri: str | os.PathLike[str]) -> tuple[str, bool]:
    """(text as given, is_url); raises InvalidInputError for schemes this module does not read."""
    if isinstance(uri, os.PathLike):
        return os.fspath(uri), False
    if not isinstance(uri, str):
        raise InvalidInputError(f"video source must be a path or an http(s) URL, got {type(uri).__name__}")
    if not uri.strip():
        raise InvalidInputError("video source is empty; give a file path or an http(s) URL")
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else ("file" if uri.lower().startswith("file:") else None)
    if scheme is None:
        return uri, False
    if scheme not in URL_SCHEMES:
        raise InvalidInputError(
            f"unsupported video source scheme {scheme!r} in {_redact(uri)}: "
            "expected a file path or an http:// or https:// URL"
        )
    if not urlsplit(uri).hostname:
        raise InvalidInputError(f"URL {_redact(uri)} has no host")
    return uri, True


def _redact(uri: str) -> str:
    """The URL for messages: password and query (signed URLs carry secrets there) hidden."""
    uri = re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^/@:]*):[^/@]*@", r"\1:***@", uri)
    return re.sub(r"\?.*$", "?…", uri)


def _reason(exc: BaseException, timeouts: tuple[float, float] | None) -> str:
    """One short phrase for a PyAV/FFmpeg error."""
    import av

    if isinstance(exc, av.error.ExitError) and timeouts is not None:
        return f"timed out (no answer within {timeouts[0]:g} s to open, {timeouts[1]:g} s per read)"
    if isinstance(exc, av.error.FileNotFoundError):
        return "no such file"
    if isinstance(exc, av.error.PermissionError):
        return "permission denied"
    if isinstance(exc, av.error.IsADirectoryError):
        return "is a directory, not a video file"
    if isinstance(exc, av.error.ConnectionRefusedError):
        return "connection refused (is the server running, and the port right?)"
    if isinstance(exc, av.error.TimeoutError):
        return "timed out connecting"
    if isinstance(exc, av.error.OSError) and exc.errno == errno.EIO and timeouts is not None:
        return "input/output error (host name not found, or network unreachable?)"
    text = exc.strerror if isinstance(exc, av.FFmpegError) and exc.strerror else str(exc)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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

    Example::

        with VideoSource("clip.mp4") as src:
            for frame in src.frames(stride=2, image_size=1024):
                ...  # frame.image: (h, w, 3) uint8 RGB with max(h, w) == 1024

    Raises:
        InvalidInputError: the URI has a scheme other than http/https (``file:`` included).
        SourceError: the source cannot be opened or holds no decodable video.
    """

    def __init__(
        self,
        uri: str | os.PathLike[str],
        *,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self.uri, self.is_url = _parse_uri(uri)
        self.name = _redact(self.uri) if self.is_url else self.uri
        for label, value in (("open_timeout_s", open_timeout_s), ("read_timeout_s", read_timeout_s)):
            if not value > 0:
                raise InvalidInputError(f"{label} must be > 0 seconds, got {value!r}")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise InvalidInputError(f"queue_size must be an int >= 1, got {queue_size!r}")
        self._timeouts = (float(open_timeout_s), float(read_timeout_s)) if self.is_url else None
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._readers: set[_Reader] = set()
        self._closed = False
        self._pending: _Opened | None = None

        opened = self._open()
        try:
            first = opened.next_frame()
        except _DecodeFailure as exc:
            opened.close()
            raise SourceError(f"cannot read video {self.name}: {exc.reason}") from exc.__cause__ or exc
        except BaseException:
            opened.close()
            raise
        if first is None:
            opened.close()
            raise SourceError(f"cannot read video {self.name}: no video frames in it (empty, or cut short?)")
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
            image_size: resize so that the long side is this (SAM's resize); None keeps the size.

        Yields:
            :class:`Frame` with ``index`` the source frame number, ``image`` (h, w, 3) uint8 RGB
            after display rotation and resize, ``original_size`` the (H, W) after rotation,
            ``pts`` in seconds (None if the frame has none), ``capture_time`` when it was decoded.

        Closing the generator (``close()``, or dropping it) stops its decode thread.

        Raises:
            InvalidInputError: start < 0, stride < 1 or image_size < 1 (raised by this call).
            SourceError: while iterating, when reading fails (after the frames that decoded).
        """
        for label, value, low in (("start", start, 0), ("stride", stride, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidInputError(f"{label} must be an int >= {low}, got {value!r}")
        if image_size is not None and (
            not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1
        ):
            raise InvalidInputError(f"image_size must be None or an int >= 1, got {image_size!r}")
        if self._closed:
            raise SourceError(f"video {self.name} is closed")
        return self._iterate(start, stride, image_size)

    def _iterate(self, start: int, stride: int, image_size: int | None) -> Generator[Frame, None, None]:
        reader = _Reader(self, start, stride, image_size)
        with self._lock:
            self._readers.add(reader)
        try:
            reader.start()
            while True:
                frame = reader.get()
                if frame is None:
                    return
                yield frame
        finally:  # also on GeneratorExit: an abandoned iteration stops its thread
            reader.stop()
            with self._lock:
                self._readers.discard(reader)

    def close(self) -> None:
        """Stop every decode thread and release the source. Idempotent."""
        with self._lock:
            self._closed = True
            readers = list(self._readers)
            pending, self._pending = self._pending, None
        for reader in readers:
            reader.stop()
        if pending is not None:
            pending.close()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoSource({self.name!r})"

    # -- used by readers --

    def _take_opened(self) -> _Opened:
        """The opening connection (first pass) or a fresh one (later passes)."""
        with self._lock:
            if self._closed:
                raise SourceError(f"video {self.name} is closed")
            opened, self._pending = self._pending, None
        return opened if opened is not None else self._open()

    def _open(self) -> _Opened:
        import av

        if not self.is_url:
            self._check_file()
        # "file:" stops FFmpeg from reading a path like "a:b.mp4" as protocol "a".
        target = self.uri if self.is_url else "file:" + os.path.abspath(self.uri)
        try:
            container = av.open(target, mode="r", timeout=self._timeouts)
        except av.FFmpegError as exc:
            reason = _reason(exc, self._timeouts)
            if isinstance(exc, av.error.InvalidDataError):
                reason = (
                    "incomplete or corrupt MP4/MOV file: its index cannot be read (cut short?)"
                    if not self.is_url and _looks_like_mp4(self.uri)
                    else "not a video file, or corrupt (FFmpeg cannot read its format)"
                )
            raise SourceError(f"cannot open video {self.name}: {reason}") from exc
        try:
            stream = _video_stream(container)
        except BaseException:
            container.close()
            raise
        if stream is None:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            container.close()
            raise SourceError(f"cannot read video {self.name}: it has no video stream (streams: {kinds})")
        # Slice threads only: frame threads add latency, report decode errors frames late, and a
        # source worker hosts many sources whose threads already fill its cores.
        stream.thread_type = "SLICE"
        return _Opened(self, container, stream)

    def _check_file(self) -> None:
        path = Path(self.uri)
        if not path.exists():
            raise SourceError(f"cannot open video {self.name}: no such file")
        if path.is_dir():
            raise SourceError(f"cannot open video {self.name}: is a directory, not a video file")
        if path.is_file() and path.stat().st_size == 0:
            raise SourceError(f"cannot open video {self.name}: empty file (0 bytes)")

    def _error(self, failure: _DecodeFailure, decoded: int) -> SourceError:
        """The SourceError for a read failure after ``decoded`` frames were read."""
        where = f"after frame {decoded - 1}" if decoded else "before the first frame"
        return SourceError(f"video {self.name} ended early {where}: {failure.reason}")


def _video_stream(container: InputContainer) -> VideoStream | None:
    """The first video stream that is a real video (not an attached cover picture)."""
    from av.stream import Disposition

    for stream in container.streams.video:
        if not stream.disposition & Disposition.attached_pic:
            return stream
    return None


def _make_info(
    uri: str, container: InputContainer, stream: VideoStream, first: VideoFrame, orientation: Orientation
) -> SourceInfo:
    height, width = orientation.size((first.height, first.width))
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    frame_count: int | None = stream.frames or None
    if frame_count is None and fps:
        if stream.duration and stream.time_base:
            seconds = float(stream.duration * stream.time_base)
        else:
            seconds = container.duration / 1_000_000 if container.duration else 0.0  # AV_TIME_BASE
        frame_count = round(seconds * fps) or None
    return SourceInfo(
        uri=uri,
        width=width,
        height=height,
        fps=fps,
        frame_count=frame_count,
        codec=stream.codec_context.name,
        rotation=orientation.rotation,
    )


class _DecodeFailure(Exception):
    """Internal: reading stopped before the end of the video; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Opened:
    """An open container, its video stream and decode iterator; owned by one thread at a time."""

    def __init__(self, source: VideoSource, container: InputContainer, stream: VideoStream) -> None:
        self.source = source
        self.container = container
        self.stream = stream
        self.first: VideoFrame | None = None  # decoded at open, not yet handed out
        self._decoded = self._decode()

    def next_frame(self) -> VideoFrame | None:
        """The next decoded frame, or None at the end; raises _DecodeFailure when reading fails."""
        import av

        if self.first is not None:
            frame, self.first = self.first, None
            return frame
        try:
            return next(self._decoded)
        except StopIteration:
            return None
        except av.FFmpegError as exc:
            reason = _reason(exc, self.source._timeouts)
            if isinstance(exc, av.error.InvalidDataError):
                reason = "truncated or corrupt data (FFmpeg: invalid data)"
            raise _DecodeFailure(reason) from exc

    def _decode(self) -> Iterator[VideoFrame]:
        """Every frame of the stream, then a check that the data did not end early.

        A cut file shows in one of three ways: the demuxer raises (a sample lies past the end),
        the last packet comes back short and flagged corrupt, or the index lists data past the
        end of the file. The decoder's own reaction to a short packet depends on its threading
        (frame threads swallow the error), so it is not relied on.
        """
        import av

        last_corrupt = False
        for packet in self.container.demux(self.stream):
            if packet.size:  # the final empty packet only flushes the decoder
                last_corrupt = packet.is_corrupt
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                if not (packet.is_corrupt or last_corrupt):
                    raise
                continue  # a partial packet (or the flush after it): the check below reports it
            yield from frames
        if last_corrupt:
            raise _DecodeFailure("truncated: the data ends inside a frame (file cut short?)")
        missing = self._missing_bytes()
        if missing:
            raise _DecodeFailure(
                f"truncated: {missing} bytes of indexed video data are missing (file cut short?)"
            )

    def _missing_bytes(self) -> int:
        """For a local file: how far its index points past the end of the file (0 if not)."""
        if self.source.is_url:
            return 0
        try:
            size = os.path.getsize(self.source.uri)
        except OSError:
            return 0
        end = max((e.pos + e.size for e in self.stream.index_entries if e.pos >= 0), default=0)
        return max(end - size, 0)

    def close(self) -> None:
        close = getattr(self._decoded, "close", None)
        if close is not None:
            close()
        self.container.close()


class _Reader:
    """One pass over a source: a decode thread feeding a bounded queue, read by the consumer."""

    _END = object()  # end of the pass (error or not): put by the thread, last
    _CLOSED = object()  # the pass was stopped: put by stop()

    def __init__(self, source: VideoSource, start: int, stride: int, image_size: int | None) -> None:
        self.source = source
        self.start_at, self.stride, self.image_size = start, stride, image_size
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=source._queue_size)
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.decoded = 0  # frames decoded so far (the next frame's number)
        self.thread = threading.Thread(target=self._run, name=f"decode {source.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def get(self) -> Frame | None:
        """The next frame, or None at the end; re-raises the decode thread's error, chained."""
        while True:
            if self.stopping.is_set():  # close() from elsewhere; stop() leaves a wake-up item
                raise SourceError(f"video {self.source.name} was closed while being read")
            try:
                item = self.queue.get(timeout=_POLL_S * 10)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise RuntimeError(f"decode thread of {self.source.name} died silently") from None
        if item is self._CLOSED:
            raise SourceError(f"video {self.source.name} was closed while being read")
        if item is not self._END:
            frame: Frame = item
            return frame
        error = self.error
        if error is None:
            return None
        if isinstance(error, SourceError):
            raise SourceError(str(error)) from error
        if isinstance(error, _DecodeFailure):
            raise self.source._error(error, self.decoded) from error.__cause__ or error
        raise error  # a bug, not bad input: keep its own type and traceback

    def stop(self) -> None:
        """Ask the thread to stop, unblock it, and wait for it to release the source."""
        self.stopping.set()
        while True:  # empty the queue so a blocked put sees the flag
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            read_timeout = self.source._timeouts[1] if self.source._timeouts else 0.0
            self.thread.join(timeout=read_timeout + 5.0)
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(self._CLOSED)  # wakes a reader blocked in get()

    def _put(self, item: object) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        opened: _Opened | None = None
        try:
            opened = self.source._take_opened()
            next_wanted = self.start_at
            t0 = time.perf_counter()
            while not self.stopping.is_set():
                av_frame = opened.next_frame()
                if av_frame is None:
                    break
                number, self.decoded = self.decoded, self.decoded + 1
                if number != next_wanted:
                    continue  # skipped: decoded, never converted
                next_wanted += self.stride
                if not self._put(self._convert(number, av_frame, t0)):
                    break
                t0 = time.perf_counter()
        except BaseException as exc:  # handed to the consumer, re-raised at its next read
            self.error = exc
        finally:
            try:
                if opened is not None:
                    opened.close()
            finally:
                self._put(self._END)

    def _convert(self, number: int, av_frame: VideoFrame, t0: float) -> Frame:
        """RGB, rotated, resized.

        ``timings["decode"]`` counts from ``t0`` (skipped frames included) to the rotated RGB image;
        ``timings["preprocess"]`` is the resize to the encoder's size.
        """
        capture_time = time.time()
        image = self.source._orientation.apply(av_frame.to_ndarray(format="rgb24"))
        original_size: Size = (image.shape[0], image.shape[1])
        t1 = time.perf_counter()
        if self.image_size is not None:
            image = resize_longest(np.ascontiguousarray(image), self.image_size)
        return Frame(
            index=number,
            pts=float(av_frame.time) if av_frame.time is not None else None,
            capture_time=capture_time,
            image=np.ascontiguousarray(image),
            original_size=original_size,
            timings={"decode": t1 - t0, "preprocess": time.perf_counter() - t1},
        )
