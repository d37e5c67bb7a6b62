"""The source stage: hands out a video's frames in batches, by position (the plain class behind the source worker).

Reads are addressed by the last frame the caller has, not by an implicit cursor: a retried call,
or a call to a restarted worker, returns the right frames (the reader reopens and skips ahead).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pipeline.frames import Frame
from pipeline.sources.video import SourceInfo, VideoSource


@dataclass(frozen=True)
class Batch:
    """What a read returns besides the pixels: small, so the driver can fetch it cheaply.

    Attributes:
        indices: the frames' numbers.
        end: no frame comes after these.
        dropped: live sources: frames dropped so far (newer ones came before they were taken).
        events: live sources: ``(kind, detail, epoch seconds)`` since the last read
            (``source_lost``, ``source_restored``).
    """

    indices: tuple[int, ...]
    end: bool
    dropped: int = 0
    events: tuple[tuple[str, str, float], ...] = ()


class FrameReader:
    """Batches of frames ``start, start + stride, …`` from one source.

    Args:
        uri: file path or URL.
        image_size: encoder input size (frames are resized to it here, on the CPU).
        stride: process every n-th frame; frame numbers stay the source's own.
        open_source: opens the source (a :class:`VideoSource` by default; tests give others).
    """

    def __init__(
        self,
        uri: str,
        image_size: int,
        stride: int = 1,
        open_source: Callable[[str], VideoSource] = VideoSource,
    ) -> None:
        self.uri = uri
        self.image_size = image_size
        self.stride = stride
        self._open = open_source
        self._source: VideoSource | None = None
        self._frames: Iterator[Frame] | None = None
        self._next: int | None = None  # index the iterator yields next
        self._lookahead: Frame | None = None

    @property
    def info(self) -> SourceInfo:
        return self._ensure_source().info

    def _ensure_source(self) -> VideoSource:
        if self._source is None:
            self._source = self._open(self.uri)
        return self._source

    def read(self, after: int | None, count: int) -> tuple[Batch, list[Frame]]:
        """Up to ``count`` frames following frame ``after`` (None: from the first frame).

        Returns:
            The batch's indices and whether the source ended, and the frames.
        """
        start = 0 if after is None else after + self.stride
        if self._frames is None or self._next != start:
            self._restart(start)
        frames: list[Frame] = []
        end = False
        while len(frames) < count:
            frame = self._pull()
            if frame is None:
                end = True
                break
            frames.append(frame)
        if not end and self._peek() is None:
            end = True
        return Batch(tuple(f.index for f in frames), end), frames

    def _restart(self, start: int) -> None:
        source = self._ensure_source()
        if self._frames is not None:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
        self._frames = source.frames(start=start, stride=self.stride, image_size=self.image_size)
        self._next = start
        self._lookahead = None

    def _peek(self) -> Frame | None:
        if self._lookahead is None:
            self._lookahead = self._decode_next()
        return self._lookahead

    def _pull(self) -> Frame | None:
        frame = self._peek()
        self._lookahead = None
        if frame is not None:
            self._next = frame.index + self.stride
        return frame

    def _decode_next(self) -> Frame | None:
        assert self._frames is not None
        t0 = time.perf_counter()
        frame = next(self._frames, None)
        if frame is None:
            return None
        # Waiting on the decode thread: the decode time this frame cost the pipeline.
        timings = {**frame.timings, "decode": frame.timings.get("decode", time.perf_counter() - t0)}
        return Frame(frame.index, frame.pts, frame.capture_time, frame.image, frame.original_size, timings)

    def close(self) -> None:
        if self._frames is not None:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
            self._frames = None
        if self._source is not None:
            self._source.close()
            self._source = None


class LiveReader:
    """The newest frame of a live feed at each read; older ones are dropped (and counted).

    Args:
        uri: a live URI (rtsp, udp, tcp, http(s), /dev/videoN).
        image_size: encoder input size.
        give_up_s: fail when no frame came for this long, reconnecting meanwhile.
        wait_s: how long one read waits for a new frame before returning none.
    """

    def __init__(self, uri: str, image_size: int, give_up_s: float = 30.0, wait_s: float = 1.0) -> None:
        from collections import deque

        from pipeline.sources.live import LiveSource

        self._events: deque[tuple[str, str, float]] = deque(maxlen=1000)
        self.wait_s = wait_s
        self._offset: int | None = None  # a resumed job numbers its frames after the last published
        self.source = LiveSource(uri, image_size=image_size, give_up_s=give_up_s, on_event=self._on_event)

    def _on_event(self, kind: str, detail: str) -> None:
        self._events.append((kind, detail, time.time()))

    @property
    def info(self) -> SourceInfo:
        return self.source.info

    def read(self, after: int | None, count: int) -> tuple[Batch, list[Frame]]:
        """The newest frame not read before.

        ``count`` does not apply to a live feed; the first ``after`` (the last frame a resumed job
        published) shifts the numbering so that frame numbers keep increasing.
        """
        if self._offset is None:
            self._offset = 0 if after is None else after + 1
        frame = self.source.latest(timeout_s=self.wait_s)
        if frame is not None and self._offset:
            frame = dataclasses.replace(frame, index=frame.index + self._offset)
        events = []
        while self._events:
            events.append(self._events.popleft())
        frames = [] if frame is None else [frame]
        return Batch(tuple(f.index for f in frames), False, self.source.dropped, tuple(events)), frames

    def close(self) -> None:
        self.source.close()
