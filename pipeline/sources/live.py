"""Live feeds (RTSP, UDP, TCP, HTTP streams, local cameras), read by PyAV on a background thread.

A live source never makes the encoder wait for old pictures: its reader thread drains the feed
at the feed's own rate and keeps only the newest decoded frame, in a one-slot mailbox.
:meth:`LiveSource.latest` takes that frame; every frame overwritten before anyone took it is
counted as dropped. Memory stays flat whatever the consumer's speed.

The first connection is made by the constructor, which fails fast (about ``open_timeout_s``)
with a :class:`SourceError` when the feed cannot be reached or holds no video. After that, a
feed that ends, fails, or stalls (no frame for ``stall_timeout_s``) is reconnected with bounded
exponential backoff, reported through ``on_event("source_lost" | "source_restored", detail)``;
with no frame for ``give_up_s`` the source gives up and the next :meth:`LiveSource.latest`
raises ``SourceError`` (``… lost for 30 s: <last error>``).

Frame numbers (``Frame.index``) count the frames received, from 0, across reconnects; ``pts`` is
the stream's own and may restart when the source reconnects. ``capture_time`` is when the frame
was decoded here (wall clock), the start of the end-to-end latency.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pipeline.errors import InvalidInputError, SourceError
from pipeline.frames import Frame
from pipeline.sources.decode_thread import DecodeThread, Emit
from pipeline.sources.opening import error_reason, redact, scheme_of, scrubbed, stream_kinds, video_stream
from pipeline.sources.orientation import Orientation, orientation_of
from pipeline.sources.video import SourceInfo, to_frame

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

LIVE_SCHEMES = ("rtsp", "rtsps", "udp", "tcp", "http", "https")
SOURCE_LOST = "source_lost"
SOURCE_RESTORED = "source_restored"
DEFAULT_OPEN_TIMEOUT_S = 5.0
DEFAULT_STALL_TIMEOUT_S = 5.0
DEFAULT_GIVE_UP_S = 30.0
DEFAULT_BACKOFF_S = (0.5, 5.0)  # first wait between reconnect attempts, and the most

EventCallback = Callable[[str, str], None]

_DEVICE = re.compile(r"^/dev/(video\d+|v4l/by-[a-z]+/[^/]+)$")
# FFmpeg options per kind of input. Measured on loopback MPEG-TS: a 0.5 s analysis opens in about
# 0.6 s (FFmpeg's default 5 s: 0.75 s here, longer on real cameras); ``fflags nobuffer`` made the
# first frame later (it drops the packets read while probing, so decoding waits for the next
# keyframe) and is not used. Frame threads would add a frame of latency each: slice threads only.
_NETWORK_OPTIONS = {"analyzeduration": "500000"}
_SCHEME_OPTIONS: dict[str, dict[str, str]] = {
    "rtsp": {"rtsp_transport": "tcp"},  # no lost RTP packets, and it passes NAT and firewalls
    "rtsps": {"rtsp_transport": "tcp"},
    "udp": {"overrun_nonfatal": "1"},  # a slow reader loses datagrams, not the connection
}


class _Lost(Exception):
    """Internal: the connection stopped giving frames; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Received:
    """A decoded frame waiting in the mailbox, not yet converted to RGB."""

    av_frame: VideoFrame
    index: int
    orientation: Orientation
    decode_s: float  # time the decoder took for it
    capture_time: float  # wall clock when it came out of the decoder


_Decoded = tuple["VideoFrame", float]  # a decoded frame, and perf_counter before its decoding


class _Connection:
    """One open connection: its container, video stream and packet iterator (one thread at a time)."""

    def __init__(self, container: InputContainer, stream: VideoStream) -> None:
        self.container = container
        self.stream = stream
        self.packets = container.demux(stream)

    def close(self) -> None:
        close = getattr(self.packets, "close", None)  # a generator: closing it frees its packet
        if close is not None:
            close()
        self.container.close()


_Start = tuple[_Connection, Iterator[_Decoded], _Decoded]  # the first connection, handed to the thread


class LiveSource:
    """The newest frame of a live feed, read on a background thread; reconnects by itself.

    Args:
        uri: ``rtsp://``, ``rtsps://``, ``udp://``, ``tcp://``, ``http(s)://`` URL (MJPEG, HLS,
            MPEG-TS, … as FFmpeg reads them) or a V4L2 camera ``/dev/videoN``.
        image_size: resize so that the long side is this (SAM's resize); None keeps the size.
        open_timeout_s: most time to connect and to get the first frame (each reconnect too).
        stall_timeout_s: a connection that gives no frame for this long is dropped and made anew.
        give_up_s: with no frame for this long, stop reconnecting; :meth:`latest` then raises.
        backoff_s: (first, most) seconds between reconnect attempts; the wait doubles.
        on_event: ``on_event(kind, detail)`` with kind ``source_lost`` or ``source_restored``,
            called on the reader thread (keep it quick; an exception it raises ends the source
            and is re-raised by :meth:`latest`).
        options: FFmpeg options, over this module's defaults (``rtsp_transport``, …).

    Example::

        with LiveSource("rtsp://cam.local/stream", image_size=1024) as src:
            while True:
                frame = src.latest(timeout_s=1.0)  # the newest frame, or None
                ...

    Raises:
        InvalidInputError: another scheme or path, or a bad option value.
        SourceError: the first connection fails (unreachable, refused, timed out, not a video).
    """

    def __init__(
        self,
        uri: str | os.PathLike[str],
        *,
        image_size: int | None = 1024,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        give_up_s: float = DEFAULT_GIVE_UP_S,
        backoff_s: tuple[float, float] = DEFAULT_BACKOFF_S,
        on_event: EventCallback | None = None,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.uri, self.is_device = _parse_live_uri(uri)
        self.name = redact(self.uri)
        for label, value in (
            ("open_timeout_s", open_timeout_s),
            ("stall_timeout_s", stall_timeout_s),
            ("give_up_s", give_up_s),
        ):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise InvalidInputError(f"{label} must be > 0 seconds, got {value!r}")
        if image_size is not None and (
            not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1
        ):
            raise InvalidInputError(f"image_size must be None or an int >= 1, got {image_size!r}")
        if len(backoff_s) != 2 or not 0 < backoff_s[0] <= backoff_s[1]:
            raise InvalidInputError(
                f"backoff_s must be (first, most) with 0 < first <= most, got {backoff_s!r}"
            )
        self.image_size = image_size
        self.open_timeout_s, self.stall_timeout_s = float(open_timeout_s), float(stall_timeout_s)
        self.give_up_s = float(give_up_s)
        self.backoff_s = (float(backoff_s[0]), float(backoff_s[1]))
        self._on_event = on_event
        self._options = {**self._default_options(), **(dict(options) if options else {})}
        self._reconnects = 0
        self._next_index = 0

        started = time.monotonic()
        try:
            connection = self._connect(self.open_timeout_s)
        except _Lost as exc:
            raise SourceError(f"cannot open live source {self.name}: {exc.reason}") from exc.__cause__
        frames = self._frames(connection, self.open_timeout_s - (time.monotonic() - started))
        try:
            first = next(frames)
        except _Lost as exc:
            connection.close()
            raise SourceError(f"cannot read live source {self.name}: {exc.reason}") from exc.__cause__ or exc
        except BaseException:
            connection.close()
            raise
        self._info = _make_info(self.uri, connection.stream, first[0])
        self._start: _Start | None = (connection, frames, first)  # the thread takes it
        # Most time the thread may need to notice a stop: a blocking open or read ends only by
        # its own timeout (PyAV offers no way to interrupt one).
        join_s = max(2 * self.open_timeout_s, self.stall_timeout_s) + 1.0
        self._thread: DecodeThread[_Received] = DecodeThread(
            self._produce,
            name=f"live {self.name}",
            label=f"live source {self.name}",
            capacity=1,
            drop_oldest=True,
            join_timeout_s=join_s,
        )
        self._thread.start()

    @property
    def info(self) -> SourceInfo:
        """Size (after rotation), frame rate, codec and rotation, as of the first connection.

        ``frame_count`` is None. A feed that comes back with another size keeps this info; its
        frames carry their own ``original_size``.
        """
        return self._info

    @property
    def dropped(self) -> int:
        """Frames received but overwritten by a newer one before :meth:`latest` took them."""
        return self._thread.counts()[2]

    def stats(self) -> dict[str, int]:
        """Counters: ``received``, ``delivered``, ``dropped`` frames and ``reconnects`` made.

        ``received == delivered + dropped`` (+1 while a frame waits in the mailbox);
        ``reconnects`` counts the times the feed came back after it was lost.
        """
        received, delivered, dropped = self._thread.counts()
        return {
            "received": received,
            "delivered": delivered,
            "dropped": dropped,
            "reconnects": self._reconnects,
        }

    def latest(self, timeout_s: float | None = None) -> Frame | None:
        """The newest frame not returned before, waiting up to ``timeout_s`` for one.

        Args:
            timeout_s: seconds to wait (0: do not wait); None waits until a frame comes or the
                source gives up.

        Returns:
            A :class:`Frame`: ``image`` (h, w, 3) uint8 RGB after display rotation and resize,
            ``original_size`` (H, W) after rotation, ``index`` counting every frame received;
            None when no new frame came within ``timeout_s``.

        After a loss, the last frame received before it may still be returned once: its
        ``capture_time`` tells how old it is.

        Raises:
            SourceError: the feed was lost for ``give_up_s``, or the source is closed.
        """
        if timeout_s is not None and not timeout_s >= 0:
            raise InvalidInputError(f"timeout_s must be None or >= 0 seconds, got {timeout_s!r}")
        try:
            received = self._thread.get(timeout_s)
        except TimeoutError:
            return None
        if received is None:  # the thread ends only when stopped or failing
            raise SourceError(f"live source {self.name} is closed")
        # Converted here, not on the reader thread: RGB and resize (15 ms for 1080p → 1024) are
        # paid only for frames taken, not for the ones a slow consumer lets drop.
        t0 = time.perf_counter() - received.decode_s  # "decode" = decoding + conversion to RGB
        return to_frame(
            received.av_frame,
            received.index,
            received.orientation,
            self.image_size,
            t0,
            received.capture_time,
        )

    def close(self) -> None:
        """Stop the reader thread and release the feed. Idempotent.

        Returns at once while frames flow; a thread inside a blocking open or read is waited for
        until that call's own timeout (``open_timeout_s`` or ``stall_timeout_s``) ends it.
        """
        self._thread.stop()

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LiveSource({self.name!r})"

    # -- connecting and reading --

    def _default_options(self) -> dict[str, str]:
        if self.is_device:
            return {}
        return {**_NETWORK_OPTIONS, **_SCHEME_OPTIONS.get(scheme_of(self.uri) or "", {})}

    def _connect(self, open_s: float) -> _Connection:
        """Open the feed and find its video stream; raises _Lost (PyAV's error as its cause) if not."""
        import av

        try:
            container = av.open(
                self.uri,
                mode="r",
                format="v4l2" if self.is_device else None,
                options=self._options,
                timeout=(open_s, self.stall_timeout_s),
            )
        except av.FFmpegError as exc:
            raise _Lost(self._reason(exc, open_s)) from scrubbed(exc)
        stream = video_stream(container)
        if stream is None:
            kinds = stream_kinds(container)
            container.close()
            raise _Lost(f"it has no video stream (streams: {kinds})")
        stream.thread_type = "SLICE"
        return _Connection(container, stream)

    def _reason(self, exc: BaseException, open_s: float | None = None) -> str:
        """One phrase for an FFmpeg error while opening (``open_s`` given) or reading."""
        import av

        if isinstance(exc, av.error.ExitError):
            if open_s is not None:
                return f"timed out: nothing received within {open_s:.3g} s (is the sender running, and the address right?)"
            return f"timed out: nothing received for {self.stall_timeout_s:g} s"
        if isinstance(exc, av.error.InvalidDataError):
            if scheme_of(self.uri) in ("rtsp", "rtsps"):
                return "no RTSP answer (the server closed the connection, or does not speak RTSP)"
            return "not a video stream, or corrupt (FFmpeg cannot read its format)"
        if self.is_device and isinstance(exc, av.error.FileNotFoundError):
            return "no such camera device"
        return error_reason(exc, (open_s or self.open_timeout_s, self.stall_timeout_s))

    def _frames(self, connection: _Connection, first_within_s: float) -> Iterator[_Decoded]:
        """(decoded frame, perf_counter before its decoding) of the connection, while it lasts.

        Raises:
            _Lost: the stream ended, failed, or gave no frame for ``stall_timeout_s`` (the first
                one: for ``first_within_s``).
        """
        import av

        limit, last, seen = first_within_s, time.monotonic(), False
        try:
            for packet in connection.packets:
                t0 = time.perf_counter()
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError:
                    decoded = []  # a damaged packet (datagrams lost): the decoder resyncs later
                for av_frame in decoded:
                    yield av_frame, t0
                    limit, last, seen = self.stall_timeout_s, time.monotonic(), True
                    t0 = time.perf_counter()
                if time.monotonic() - last > limit:
                    if seen:
                        raise _Lost(f"no video frame for {limit:g} s (data comes, pictures do not)")
                    raise _Lost(f"no video frame within {self.open_timeout_s:g} s of connecting")
        except av.FFmpegError as exc:
            raise _Lost(self._reason(exc)) from scrubbed(exc)
        raise _Lost("the stream ended")

    def _produce(self, emit: Emit[_Received], stopping: threading.Event) -> None:
        """The reader thread: frames into the mailbox; reconnect when lost; give up in the end."""
        start, self._start = self._start, None
        if start is None:
            raise RuntimeError("the reader thread of a LiveSource runs once")
        connection: _Connection | None
        connection, frames, first = start
        pending: _Decoded | None = first
        orientation = orientation_of(first[0])
        last_frame = time.monotonic()
        lost: str | None = None  # why the feed is lost, while it is
        lost_at = 0.0
        error: BaseException | None = None
        attempts = 0
        try:
            while not stopping.is_set():
                if connection is None:  # lost: try again, or give up
                    remaining = self.give_up_s - (time.monotonic() - last_frame)
                    if remaining <= 0:
                        raise SourceError(
                            f"live source {self.name} lost for {self.give_up_s:g} s: {lost}"
                        ) from error
                    if attempts:
                        wait = min(self.backoff_s[0] * 2 ** (attempts - 1), self.backoff_s[1], remaining)
                        if stopping.wait(wait):
                            return
                    attempts += 1
                    open_s = max(min(self.open_timeout_s, remaining), 0.1)
                    try:
                        connection = self._connect(open_s)
                    except _Lost as exc:
                        lost, error = exc.reason, exc.__cause__ or exc
                        continue
                    frames = self._frames(connection, open_s)
                try:
                    for av_frame, t0 in _chain(pending, frames):
                        pending = None
                        if lost is not None:
                            orientation = orientation_of(av_frame)
                            self._reconnects += 1
                            self._event(
                                SOURCE_RESTORED,
                                f"after {time.monotonic() - lost_at:.1f} s, {attempts} attempt(s)",
                            )
                            lost, attempts = None, 0
                        last_frame = time.monotonic()
                        decode_s = time.perf_counter() - t0
                        frame = _Received(av_frame, self._next_index, orientation, decode_s, time.time())
                        self._next_index += 1
                        if not emit(frame):
                            return
                except _Lost as exc:
                    connection.close()
                    connection = None
                    if lost is None:
                        lost_at = time.monotonic()
                        self._event(SOURCE_LOST, exc.reason)
                    lost, error = exc.reason, exc.__cause__ or exc
        finally:
            if connection is not None:
                connection.close()

    def _event(self, kind: str, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(kind, detail)


def _chain(first: _Decoded | None, rest: Iterator[_Decoded]) -> Iterator[_Decoded]:
    if first is not None:
        yield first
    yield from rest


def _parse_live_uri(uri: str | os.PathLike[str]) -> tuple[str, bool]:
    """(URI, is_device); raises InvalidInputError for anything but a live URL or a camera."""
    allowed = (
        "expected an rtsp://, rtsps://, udp://, tcp://, http:// or https:// URL, or a camera /dev/videoN"
    )
    text = os.fspath(uri) if isinstance(uri, os.PathLike) else uri
    if not isinstance(text, str):
        raise InvalidInputError(f"live source must be a URL or a device path, got {type(uri).__name__}")
    if not text.strip():
        raise InvalidInputError(f"live source is empty; {allowed}")
    if _DEVICE.match(text):
        return text, True
    scheme = scheme_of(text)
    if scheme is None:
        raise InvalidInputError(
            f"live source {text!r} is not a URL or a camera device: {allowed} (files: VideoSource)"
        )
    if scheme not in LIVE_SCHEMES:
        raise InvalidInputError(f"unsupported live source scheme {scheme!r} in {redact(text)}: {allowed}")
    if scheme != "udp" and not urlsplit(text).hostname:  # udp://@:5000 listens on every address
        raise InvalidInputError(f"URL {redact(text)} has no host")
    return text, False


def _make_info(uri: str, stream: VideoStream, first: VideoFrame) -> SourceInfo:
    orientation = orientation_of(first)
    height, width = orientation.size((first.height, first.width))
    rate = stream.average_rate or stream.guessed_rate
    return SourceInfo(
        uri=uri,
        width=width,
        height=height,
        fps=float(rate) if rate else None,
        frame_count=None,
        codec=stream.codec_context.name,
        rotation=orientation.rotation,
    )
