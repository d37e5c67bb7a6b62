"""The source stage: hands out a video's frames in batches, by position (the plain class behind the source worker).

Reads are addressed by the last frame the caller has, not by an implicit cursor: a retried call,
or a call to a restarted worker, returns the right frames (the reader reopens and skips ahead).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pipeline.frames import Frame
from pipeline.sources.video import SourceInfo, VideoSource


@dataclass(frozen=True)
class Batch:
    """What a read returns besides the pixels: small, so the driver can fetch it cheaply."""

    indices: tuple[int, ...]
    end: bool  # no frame after these


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
