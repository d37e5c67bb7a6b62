"""One connection to a live feed: which URIs are feeds, the FFmpeg options that suit them, opening
a feed with timeouts, and reading its frames until the connection is lost (:class:`FeedLost`).

:class:`~pipeline.sources.live.LiveSource` makes one :class:`Feed` after another (reconnecting);
a feed never retries by itself.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pipeline.errors import InvalidInputError, SourceError
from pipeline.sources.limits import LimitExceeded, MediaLimits
from pipeline.sources.opening import (
    LIVE_SCHEMES,
    error_reason,
    protocol_options,
    redact,
    scheme_of,
    scrubbed,
    stream_kinds,
    video_stream,
)
from pipeline.sources.orientation import orientation_of
from pipeline.sources.video import SourceInfo

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

    from pipeline.sources.guard import GuardSession

ALLOWED = "expected an rtsp://, rtsps://, udp://, tcp://, http:// or https:// URL, or a camera /dev/videoN"

_DEVICE = re.compile(r"^/dev/(video\d+|v4l/by-[a-z]+/[^/]+)$")
# FFmpeg options per kind of input. Measured on loopback MPEG-TS: a 0.5 s analysis opens in about
# 0.6 s (FFmpeg's default 5 s: 0.75 s here, longer on real cameras); ``fflags nobuffer`` made the
# first frame later (it drops the packets read while probing, so decoding waits for the next
# keyframe) and is not used.
_NETWORK_OPTIONS = {"analyzeduration": "500000"}
_SCHEME_OPTIONS: dict[str, dict[str, str]] = {
    "rtsp": {"rtsp_transport": "tcp"},  # no lost RTP packets, and it passes NAT and firewalls
    "rtsps": {"rtsp_transport": "tcp"},
    "udp": {"overrun_nonfatal": "1"},  # a slow reader loses datagrams, not the connection
}


Decoded = tuple["VideoFrame", float]  # a decoded frame, and perf_counter before its decoding


class FeedLost(Exception):
    """The connection could not be made, or stopped giving frames; ``reason`` says why (one line).

    PyAV's error, with any password in its URL hidden, is the ``__cause__`` where there is one.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FeedSettings:
    """Where a feed is and how to open it; validated by :meth:`from_uri`.

    Attributes:
        uri: the URL or device path as given.
        is_device: a V4L2 camera (``/dev/videoN``), opened with PyAV's ``v4l2`` format.
        open_timeout_s: most time to connect (each of FFmpeg's open and probe steps), and to get
            the first frame.
        stall_timeout_s: most time without a frame (and for one blocking read) once connected.
        options: FFmpeg options, this module's defaults overridden by the caller's.
        limits: the pixel limit of a frame (a feed has no frame or duration limit).
    """

    uri: str
    is_device: bool
    open_timeout_s: float
    stall_timeout_s: float
    options: Mapping[str, str] = field(default_factory=dict)
    limits: MediaLimits = field(default_factory=MediaLimits)

    @classmethod
    def from_uri(
        cls,
        uri: str | os.PathLike[str],
        open_timeout_s: float,
        stall_timeout_s: float,
        options: Mapping[str, str] | None = None,
        limits: MediaLimits | None = None,
    ) -> FeedSettings:
        """Check the URI and timeouts; raises InvalidInputError naming what is wrong."""
        text, is_device = _parse_feed_uri(uri)
        for label, value in (("open_timeout_s", open_timeout_s), ("stall_timeout_s", stall_timeout_s)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise InvalidInputError(f"{label} must be > 0 seconds, got {value!r}")
        scheme = scheme_of(text) or ""
        defaults = (
            {}
            if is_device
            else {**_NETWORK_OPTIONS, **_SCHEME_OPTIONS.get(scheme, {}), **protocol_options(scheme)}
        )
        limits = limits if limits is not None else MediaLimits()
        # The pixel limit reaches the decoders FFmpeg's probe runs while opening, too.
        merged = {**defaults, **limits.decoder_options(), **(dict(options) if options else {})}
        return cls(text, is_device, float(open_timeout_s), float(stall_timeout_s), merged, limits)

    @property
    def name(self) -> str:
        """The URI for messages (password and query hidden)."""
        return redact(self.uri)


class Feed:
    """One open connection: its container, video stream and packets; one thread at a time."""

    def __init__(
        self,
        settings: FeedSettings,
        container: InputContainer,
        stream: VideoStream,
        guard: GuardSession | None = None,
    ) -> None:
        self.settings = settings
        self.container = container
        self.stream = stream
        self.guard = guard
        self._packets = container.demux(stream)

    @classmethod
    def open(cls, settings: FeedSettings, open_s: float, guard: GuardSession | None = None) -> Feed:
        """Connect, probe, and find the video stream, each step within ``open_s``.

        ``guard``: a service's source, every connection checked (:mod:`pipeline.sources.guard`).

        Raises:
            FeedLost: unreachable, refused, timed out, not a stream FFmpeg reads, or no video in it.
            SourceError: its frames have more pixels than the limit (no use trying again).
        """
        import av

        uri, options = settings.uri, dict(settings.options)
        if guard is not None and not settings.is_device:
            try:
                uri, guarded = guard.prepare(uri)
            except (SourceError, InvalidInputError) as exc:
                raise FeedLost(str(exc)) from None
            options.update(guarded)
        try:
            container = av.open(
                uri,
                mode="r",
                format="v4l2" if settings.is_device else None,
                options=options,
                timeout=(open_s, settings.stall_timeout_s),
            )
        except av.FFmpegError as exc:
            reason = _reason(exc, settings, open_s)
            raise FeedLost(guard.reason(exc, reason) if guard else reason) from scrubbed(exc)
        stream = video_stream(container)
        if stream is None:
            kinds = stream_kinds(container)
            container.close()
            raise FeedLost(f"it has no video stream (streams: {kinds})")
        context = stream.codec_context
        try:
            settings.limits.check_size(context.width, context.height)  # 0 x 0 when the probe refused
        except LimitExceeded as exc:
            container.close()
            raise SourceError(f"cannot open live source {settings.name}: {exc.reason}") from None
        context.options = {**context.options, **settings.limits.decoder_options()}
        # Frame threads would add a frame of latency each: slice threads only.
        stream.thread_type = "SLICE"
        return cls(settings, container, stream, guard)

    def frames(self, first_within_s: float) -> Iterator[Decoded]:
        """(decoded frame, perf_counter before its decoding), while the connection lasts.

        Raises:
            FeedLost: the stream ended, failed, or gave no frame for ``stall_timeout_s`` (the
                first one: within ``first_within_s``).
            SourceError: a frame has more pixels than the limit (no use trying again).
        """
        import av

        limits = self.settings.limits
        stall_s = self.settings.stall_timeout_s
        limit, last, seen = first_within_s, time.monotonic(), False
        try:
            for packet in self._packets:
                t0 = time.perf_counter()
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError:
                    decoded = []  # a damaged packet (datagrams lost): the decoder resyncs later
                except av.error.ArgumentError:
                    if limits.max_frame_pixels is None:
                        raise
                    # EINVAL from the decoder: a picture size it refused (``max_pixels``, or its own
                    # bounds); not a loss that reconnecting mends.
                    raise SourceError(f"live source {self.settings.name}: {limits.refused_size()}") from None
                self._check_guard()
                for av_frame in decoded:
                    try:
                        limits.check_size(av_frame.width, av_frame.height)
                    except LimitExceeded as exc:
                        raise SourceError(f"live source {self.settings.name}: {exc.reason}") from None
                    yield av_frame, t0
                    limit, last, seen = stall_s, time.monotonic(), True
                    t0 = time.perf_counter()
                if time.monotonic() - last > limit:
                    if seen:
                        raise FeedLost(f"no video frame for {limit:g} s (data comes, pictures do not)")
                    raise FeedLost(f"no video frame within {self.settings.open_timeout_s:g} s of connecting")
        except av.FFmpegError as exc:
            reason = _reason(exc, self.settings)
            raise FeedLost(self.guard.reason(exc, reason) if self.guard else reason) from scrubbed(exc)
        self._check_guard()
        raise FeedLost("the stream ended")

    def _check_guard(self) -> None:
        """A refused connection (an HLS segment, a redirect) ends the feed, whatever FFmpeg made of it."""
        if self.guard is not None and self.guard.blocked:
            from pipeline.sources.addresses import BLOCKED

            raise FeedLost(BLOCKED)

    def info(self, first: VideoFrame) -> SourceInfo:
        """What the feed holds, from its stream and its first decoded frame."""
        orientation = orientation_of(first)
        height, width = orientation.size((first.height, first.width))
        rate = self.stream.average_rate or self.stream.guessed_rate
        return SourceInfo(
            uri=self.settings.uri,
            width=width,
            height=height,
            fps=float(rate) if rate else None,
            frame_count=None,
            codec=self.stream.codec_context.name,
            rotation=orientation.rotation,
        )

    def close(self) -> None:
        close = getattr(self._packets, "close", None)  # a generator: closing it frees its packet
        if close is not None:
            close()
        self.container.close()


def _reason(exc: BaseException, settings: FeedSettings, open_s: float | None = None) -> str:
    """One phrase for an FFmpeg error while opening (``open_s`` given) or reading."""
    import av

    if isinstance(exc, av.error.ExitError):
        if open_s is not None:
            return f"timed out: nothing received within {open_s:.3g} s (is the sender running, and the address right?)"
        return f"timed out: nothing received for {settings.stall_timeout_s:g} s"
    if isinstance(exc, av.error.InvalidDataError):
        if scheme_of(settings.uri) in ("rtsp", "rtsps"):
            return "no RTSP answer (the server closed the connection, or does not speak RTSP)"
        return "not a video stream, or corrupt (FFmpeg cannot read its format)"
    if settings.is_device and isinstance(exc, av.error.FileNotFoundError):
        return "no such camera device"
    return error_reason(exc, (open_s or settings.open_timeout_s, settings.stall_timeout_s))


def _parse_feed_uri(uri: str | os.PathLike[str]) -> tuple[str, bool]:
    """(URI, is_device); raises InvalidInputError for anything but a live URL or a camera."""
    text = os.fspath(uri) if isinstance(uri, os.PathLike) else uri
    if not isinstance(text, str):
        raise InvalidInputError(f"live source must be a URL or a device path, got {type(uri).__name__}")
    if not text.strip():
        raise InvalidInputError(f"live source is empty; {ALLOWED}")
    if _DEVICE.match(text):
        return text, True
    scheme = scheme_of(text)
    if scheme is None:
        raise InvalidInputError(
            f"live source {text!r} is not a URL or a camera device: {ALLOWED} (files: VideoSource)"
        )
    if scheme not in LIVE_SCHEMES:
        raise InvalidInputError(f"unsupported live source scheme {scheme!r} in {redact(text)}: {ALLOWED}")
    if scheme != "udp" and not urlsplit(text).hostname:  # udp://@:5000 listens on every address
        raise InvalidInputError(f"URL {redact(text)} has no host")
    return text, False
