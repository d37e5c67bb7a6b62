"""Live feeds (RTSP, UDP, TCP, HTTP streams, local cameras), read by PyAV on a background thread.

A live source never makes the encoder wait for old pictures: its reader thread drains the feed
at the feed's own rate and keeps only the newest decoded frame, in a one-slot mailbox.
:meth:`LiveSource.latest` takes that frame; every frame overwritten before anyone took it is
counted as dropped. Memory stays flat whatever the consumer's speed. Frames are turned into
RGB and resized when taken, so dropped frames cost only their decoding.

The first connection is made by the constructor, which fails fast (about ``open_timeout_s``)
with a :class:`SourceError` when the feed cannot be reached or holds no video. After that, a
feed that ends, fails, or stalls (no frame for ``stall_timeout_s``) is reconnected with bounded
exponential backoff, reported through ``on_event("source_lost" | "source_restored", detail)``;
with no frame for ``give_up_s`` the source gives up and the next :meth:`LiveSource.latest`
raises ``SourceError`` (``… lost for 30 s: <last error>``). Each connection is a
:class:`~pipeline.sources.feed.Feed`.

Frame numbers (``Frame.index``) count the frames received, from 0, across reconnects; ``pts`` is
the stream's own and may restart when the source reconnects. ``capture_time`` is when the frame
was decoded here (wall clock), the start of the end-to-end latency.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import InvalidInputError, SourceError
from pipeline.frames import Frame
from pipeline.sources.decode_thread import DecodeThread, Emit
from pipeline.sources.feed import Decoded, Feed, FeedLost, FeedSettings
from pipeline.sources.limits import DEFAULT_MAX_FRAME_PIXELS, MediaLimits
from pipeline.sources.orientation import Orientation, orientation_of
from pipeline.sources.video import SourceInfo, to_frame

if TYPE_CHECKING:
    from av.video.frame import VideoFrame

    from pipeline.sources.guard import NetworkGuard

SOURCE_LOST = "source_lost"
SOURCE_RESTORED = "source_restored"
DEFAULT_OPEN_TIMEOUT_S = 5.0
DEFAULT_STALL_TIMEOUT_S = 5.0
DEFAULT_GIVE_UP_S = 30.0
DEFAULT_BACKOFF_S = (0.5, 5.0)  # first wait between reconnect attempts, and the most

EventCallback = Callable[[str, str], None]


@dataclass(frozen=True)
class _Received:
    """A decoded frame waiting in the mailbox, not yet converted to RGB."""

    av_frame: VideoFrame
    index: int
    orientation: Orientation
    decode_s: float  # time the decoder took for it
    capture_time: float  # wall clock when it came out of the decoder


_Start = tuple[Feed, Iterator[Decoded], Decoded]  # the first connection, handed to the thread


class LiveSource:
    """The newest frame of a live feed, read on a background thread; reconnects by itself.

    Args:
        uri: ``rtsp://``, ``rtsps://``, ``udp://``, ``tcp://``, ``http(s)://`` URL (MJPEG, HLS,
            MPEG-TS, … as FFmpeg reads them) or a V4L2 camera ``/dev/videoN``.
        image_size: resize so that the long side is this (SAM's resize, by
            :func:`~pipeline.model.transforms.resize_longest_fast`); None keeps the size.
        open_timeout_s: most time to connect and to get the first frame (each reconnect too).
        stall_timeout_s: a connection that gives no frame for this long is dropped and made anew.
        give_up_s: with no frame for this long, stop reconnecting; :meth:`latest` then raises.
        backoff_s: (first, most) seconds between reconnect attempts; the wait doubles.
        on_event: ``on_event(kind, detail)`` with kind ``source_lost`` or ``source_restored``,
            called on the reader thread (keep it quick; an exception it raises ends the source
            and is re-raised by :meth:`latest`).
        options: FFmpeg options, over this module's defaults (``rtsp_transport``, …).
        on_frame: called on the reader thread after each frame reaches the mailbox (and when the
            thread ends), so that a host reading many feeds waits on one event.
        guard: a service's source: every connection checked (:mod:`pipeline.sources.guard`).
        max_frame_pixels: most pixels (width × height) a frame may have (None: no limit); the
            decoder refuses larger ones, and the source fails (it does not reconnect).

    Example::

        with LiveSource("rtsp://cam.local/stream", image_size=1024) as src:
            while True:
                frame = src.latest(timeout_s=1.0)  # the newest frame, or None
                ...

    Raises:
        InvalidInputError: another scheme or path, or a bad option value.
        SourceError: the first connection fails (unreachable, refused, timed out, not a video),
            or its frames have more pixels than ``max_frame_pixels``.
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
        on_frame: Callable[[], None] | None = None,
        guard: NetworkGuard | None = None,
        max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS,
    ) -> None:
        self.settings = FeedSettings.from_uri(
            uri, open_timeout_s, stall_timeout_s, options, MediaLimits(max_frame_pixels=max_frame_pixels)
        )
        self.uri, self.name = self.settings.uri, self.settings.name
        if not isinstance(give_up_s, (int, float)) or isinstance(give_up_s, bool) or not give_up_s > 0:
            raise InvalidInputError(f"give_up_s must be > 0 seconds, got {give_up_s!r}")
        if image_size is not None and (
            not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1
        ):
            raise InvalidInputError(f"image_size must be None or an int >= 1, got {image_size!r}")
        if len(backoff_s) != 2 or not 0 < backoff_s[0] <= backoff_s[1]:
            raise InvalidInputError(
                f"backoff_s must be (first, most) with 0 < first <= most, got {backoff_s!r}"
            )
        self.image_size = image_size
        self.give_up_s = float(give_up_s)
        self.backoff_s = (float(backoff_s[0]), float(backoff_s[1]))
        self._on_event = on_event
        self._reconnects = 0
        self._next_index = 0

        open_s = self.settings.open_timeout_s
        self._guard = (
            guard.session(open_s, self.settings.stall_timeout_s)
            if guard is not None and not self.settings.is_device
            else None
        )
        started = time.monotonic()
        try:
            feed = Feed.open(self.settings, open_s, self._guard)
        except FeedLost as exc:
            self._close_guard()
            raise SourceError(f"cannot open live source {self.name}: {exc.reason}") from exc.__cause__
        frames = feed.frames(open_s - (time.monotonic() - started))
        try:
            first = next(frames)
        except FeedLost as exc:
            feed.close()
            self._close_guard()
            raise SourceError(f"cannot read live source {self.name}: {exc.reason}") from exc.__cause__ or exc
        except BaseException:
            feed.close()
            self._close_guard()
            raise
        self._info = feed.info(first[0])
        self._start: _Start | None = (feed, frames, first)  # the thread takes it
        # Most time the thread may need to notice a stop: a blocking open or read ends only by
        # its own timeout (PyAV offers no way to interrupt one).
        join_s = max(2 * open_s, self.settings.stall_timeout_s) + 1.0
        self._thread: DecodeThread[_Received] = DecodeThread(
            self._produce,
            name=f"live {self.name}",
            label=f"live source {self.name}",
            capacity=1,
            drop_oldest=True,
            join_timeout_s=join_s,
            on_item=on_frame,
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

    def waiting(self) -> tuple[float | None, int]:
        """When the frame in the mailbox was captured (None: none waits), and the frames received."""
        received, count = self._thread.peek()
        return (None if received is None else received.capture_time), count

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
        # Converted here, not on the reader thread: RGB and resize (a few ms for 1080p → 1024) are
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
        self._close_guard()
        # Callbacks into the owner make reference cycles that would keep the decoder (its frames
        # and threads) alive until Python's next full collection: drop them.
        self._on_event = None

    def _close_guard(self) -> None:
        if self._guard is not None:
            self._guard.close()

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LiveSource({self.name!r})"

    # -- the reader thread --

    def _produce(self, emit: Emit[_Received], stopping: threading.Event) -> None:
        """The reader thread: frames into the mailbox; reconnect when lost; give up in the end."""
        start, self._start = self._start, None
        if start is None:
            raise RuntimeError("the reader thread of a LiveSource runs once")
        feed: Feed | None
        feed, frames, first = start
        pending: Decoded | None = first
        orientation = orientation_of(first[0])
        last_frame = time.monotonic()
        lost: str | None = None  # why the feed is lost, while it is
        lost_at = 0.0
        error: BaseException | None = None
        attempts = 0
        try:
            while not stopping.is_set():
                if feed is None:  # lost: try again, or give up
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
                    open_s = max(min(self.settings.open_timeout_s, remaining), 0.1)
                    try:
                        feed = Feed.open(self.settings, open_s, self._guard)
                    except FeedLost as exc:
                        lost, error = exc.reason, exc.__cause__ or exc
                        continue
                    frames = feed.frames(open_s)
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
                except FeedLost as exc:
                    feed.close()
                    feed = None
                    if lost is None:
                        lost_at = time.monotonic()
                        self._event(SOURCE_LOST, exc.reason)
                    lost, error = exc.reason, exc.__cause__ or exc
        finally:
            if feed is not None:
                feed.close()

    def _event(self, kind: str, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(kind, detail)


def _chain(first: Decoded | None, rest: Iterator[Decoded]) -> Iterator[Decoded]:
    if first is not None:
        yield first
    yield from rest
