"""Readers that hand out a source's frames without blocking: what a source host takes each tick.

A reader is opened once (which may block: it connects and probes), then :meth:`take` returns the
frames ready *now*, so that one host can serve many sources on one thread; each reader's decode
thread calls ``on_frame`` when it has something new, and the host waits on that.

Reads are addressed by the last frame the caller has (``after``), not by an implicit cursor: a
retried call, or a call to a restarted host, gets the right frames (a file reader reopens and
skips ahead; a live reader numbers the feed's present after ``after``).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pipeline.errors import InvalidInputError, SamstreamError, SourceError
from pipeline.frames import Frame
from pipeline.sources.limits import DEFAULT_MAX_FRAME_PIXELS, MediaLimits
from pipeline.sources.video import DEFAULT_READ_TIMEOUT_S, SourceInfo, VideoPass, VideoSource

if TYPE_CHECKING:
    from pipeline.sources.guard import NetworkGuard

Notify = Callable[[], None]


class Reader(Protocol):
    """What a source host reads from (a file or a live feed)."""

    @property
    def info(self) -> SourceInfo: ...

    def take(self, after: int | None, count: int) -> tuple[list[Frame], bool]:
        """Up to ``count`` frames after frame ``after`` that are ready now, and whether the source
        has ended after them.

        Raises:
            SourceError: reading failed (after the frames that were read before it).
        """
        ...

    def events(self) -> list[tuple[str, str, float]]:
        """``(kind, detail, epoch seconds)`` since the last call (live feeds: lost, restored)."""
        ...

    def dropped(self) -> int:
        """Frames dropped since the last call (live feeds: overwritten before they were taken)."""
        ...

    def close(self) -> None: ...


class FileReader:
    """A video file's (or URL's) frames ``start, start + stride, …`` by position, decoded ahead.

    Args:
        uri: file path or http(s) URL.
        image_size: encoder input size the frames are prepared for.
        stride: every n-th frame; frame numbers stay the source's own.
        queue_size: frames decoded ahead (bounds memory; the decode thread waits when full).
        on_frame: called on the decode thread when a frame is ready (or the pass ends).
        open_source: opens the source (a :class:`VideoSource` by default; tests give others).
        limits: pixels per frame, frames and duration the source may have (None: the defaults).
        stall_s: :meth:`take` fails (``no picture for … s``) once the source gave no frame for
            this long while asked for one (its decode thread is stopped by the same limit); None:
            wait as long as the source goes on.

    Raises:
        SourceError: the source cannot be opened, or goes past ``limits`` (raised by the constructor).
    """

    def __init__(
        self,
        uri: str,
        image_size: int,
        stride: int = 1,
        queue_size: int = 8,
        on_frame: Notify | None = None,
        open_source: Callable[..., VideoSource] = VideoSource,
        limits: MediaLimits | None = None,
        stall_s: float | None = None,
    ) -> None:
        self.image_size = image_size
        self.stride = stride
        self.stall_s = stall_s
        self._on_frame = on_frame
        if stall_s is None:
            self._source = open_source(uri, queue_size=queue_size, limits=limits)
        else:  # one blocked read is a stall too: it may not outlast the limit
            read_s = min(DEFAULT_READ_TIMEOUT_S, stall_s)
            self._source = open_source(
                uri, queue_size=queue_size, limits=limits, stall_s=stall_s, read_timeout_s=read_s
            )
        # Since when the buffer was found empty at every take (None: it held a frame at the last).
        # Only takes drain the buffer, so a decode thread that made any frame since then would show.
        self._empty_since: float | None = None
        self._pass: VideoPass | None = None
        self._next: int | None = None  # the number the pass yields next
        self._error: SamstreamError | None = None  # met after frames that were handed out first

    @property
    def info(self) -> SourceInfo:
        return self._source.info

    def take(self, after: int | None, count: int) -> tuple[list[Frame], bool]:
        start = 0 if after is None else after + self.stride
        if self._pass is None or self._next != start:
            self._restart(start)
        assert self._pass is not None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        frames: list[Frame] = []
        while len(frames) < count:
            try:
                frame = self._pass.get(timeout=0)
            except TimeoutError:
                if not frames:
                    self._watch()
                return frames, False
            except SamstreamError as exc:
                if not frames:
                    raise
                self._error = exc  # the frames before it first; the error at the next take
                return frames, False
            if frame is None:
                return frames, True
            frames.append(frame)
            self._next = frame.index + self.stride
            self._empty_since = None
        return frames, False

    def _watch(self) -> None:
        """The stall watchdog: raise once the buffer stayed empty for ``stall_s`` (non-blocking)."""
        if self.stall_s is None:
            return
        now = time.monotonic()
        if self._empty_since is None:
            self._empty_since = now
        elif now - self._empty_since > self.stall_s:
            raise SourceError(f"video {self._source.name}: no picture for {self.stall_s:g} s")

    def _restart(self, start: int) -> None:
        self._empty_since = None
        if self._pass is not None:
            self._pass.stop()
        self._pass = self._source.open_pass(start, self.stride, self.image_size, self._on_frame)
        self._next = start

    def events(self) -> list[tuple[str, str, float]]:
        return []

    def dropped(self) -> int:
        return 0

    def close(self) -> None:
        if self._pass is not None:
            self._pass.stop()
            self._pass = None
        self._source.close()


class LiveReader:
    """The newest frame of a live feed at each take; older ones are dropped (and counted).

    A take leaves a frame that is over half a frame interval old when the next one is due within
    the interval (``fresh``): it would be the oldest picture the feed has, and a read that waits
    for the next one (its host wakes when it comes) gives the encoder a picture up to a frame
    interval newer. Where frames are read as they come (the encoders keep up) nothing changes;
    where reads are paced to the encoders, a live frame is then at most about half an interval
    old when it is encoded, at the price of an encoder idle for at most as long.

    Args:
        uri: a live URI (rtsp, udp, tcp, http(s), /dev/videoN).
        image_size: encoder input size.
        give_up_s: fail when no frame came for this long, reconnecting meanwhile.
        after: the last frame the job has (a resumed job's last published one): the feed's
            frames are numbered after it, so that frame numbers keep increasing.
        on_frame: called on the reader thread when a new frame is in the mailbox.
        guard: a service's source: every connection checked (:mod:`pipeline.sources.guard`).
        max_frame_pixels: most pixels a frame may have (None: no limit); a larger one fails the source.
        fresh: leave a stale frame for the next one when it is due (above).

    Raises:
        SourceError: the first connection fails (raised by the constructor).
    """

    def __init__(
        self,
        uri: str,
        image_size: int,
        give_up_s: float = 30.0,
        after: int | None = None,
        on_frame: Notify | None = None,
        guard: NetworkGuard | None = None,
        max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS,
        fresh: bool = True,
    ) -> None:
        from pipeline.sources.live import LiveSource

        self.fresh = fresh
        self.interval: float | None = None  # seconds between the feed's frames (a moving average)
        self._seen: tuple[float, int] | None = None  # capture time and count of the last frame seen
        self._events: deque[tuple[str, str, float]] = deque(maxlen=1000)
        self._offset = 0 if after is None else after + 1
        self._dropped_seen = 0
        self.source = LiveSource(
            uri,
            image_size=image_size,
            give_up_s=give_up_s,
            on_event=self._on_event,
            on_frame=on_frame,
            guard=guard,
            max_frame_pixels=max_frame_pixels,
        )

    def _on_event(self, kind: str, detail: str) -> None:
        self._events.append((kind, detail, time.time()))

    @property
    def info(self) -> SourceInfo:
        return self.source.info

    @property
    def image_size(self) -> int | None:
        """The encoder size the frames taken from now on are prepared for."""
        return self.source.image_size

    def resize(self, image_size: int) -> None:
        """Prepare the frames taken from now on for ``image_size`` (an adaptive stream's new size:
        frames are converted when taken, so the next one already has it)."""
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise InvalidInputError(f"image_size must be an int >= 1, got {image_size!r}")
        self.source.image_size = image_size

    def take(self, after: int | None, count: int) -> tuple[list[Frame], bool]:
        """The newest frame not taken before, if one came and is fresh enough (``count`` and
        ``after`` do not apply)."""
        if self.fresh and self._stale():
            return [], False
        return self.wait(0.0), False

    def _stale(self) -> bool:
        """Whether the waiting frame is over half an interval old and the next is due within 1.2
        intervals of it (a late feed's frame is taken as it is)."""
        captured, received = self.source.waiting()
        if captured is None:
            return False
        if self._seen is not None and received > self._seen[1] and captured > self._seen[0]:
            sample = (captured - self._seen[0]) / (received - self._seen[1])
            self.interval = sample if self.interval is None else 0.8 * self.interval + 0.2 * sample
        self._seen = (captured, received)
        if self.interval is None:
            return False
        age = time.time() - captured
        return self.interval / 2 < age < 1.2 * self.interval

    def wait(self, timeout: float | None) -> list[Frame]:
        """The newest frame not taken before, waiting up to ``timeout`` seconds for one."""
        frame = self.source.latest(timeout_s=timeout)
        if frame is None:
            return []
        if self._offset:
            frame = dataclasses.replace(frame, index=frame.index + self._offset)
        return [frame]

    def events(self) -> list[tuple[str, str, float]]:
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def dropped(self) -> int:
        total = self.source.dropped
        delta, self._dropped_seen = total - self._dropped_seen, total
        return delta

    def close(self) -> None:
        self.source.close()
