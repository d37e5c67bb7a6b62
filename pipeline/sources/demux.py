"""Reading an opened PyAV input frame by frame, and telling a cut file from a complete one."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pipeline.sources.limits import LimitExceeded, MediaLimits
from pipeline.sources.opening import error_reason

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream


class DecodeFailure(Exception):
    """Reading stopped before the end of the video; ``reason`` says why (the source words the error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OpenedVideo:
    """An open container, its video stream and decode iterator; owned by one thread at a time.

    Args:
        container, stream: the input and its video stream.
        timeouts: (open, read) seconds the input was opened with, None for a local file.
        path: the local file read (for the truncation check), None for a URL.
        limits: checked on every decoded frame (the decoder is told the pixel limit too).
        stall_s: fail (``no picture for … s``) when no video frame came for this long while the
            input goes on (a URL that sends only audio, or data that never decodes); None: never.
    """

    def __init__(
        self,
        container: InputContainer,
        stream: VideoStream,
        timeouts: tuple[float, float] | None,
        path: str | None,
        limits: MediaLimits | None = None,
        stall_s: float | None = None,
    ) -> None:
        self.timeouts = timeouts
        self.path = path
        self.limits = limits or MediaLimits()
        self.stall_s = stall_s
        # Set by the thread's owner to end reading between two packets (see _decode).
        self.stopping: threading.Event | None = None
        self.container = container
        self.stream = stream
        self.first: VideoFrame | None = None  # decoded at open, not yet handed out
        self._decoded = self._decode()

    def next_frame(self) -> VideoFrame | None:
        """The next decoded frame, or None at the end.

        Raises:
            DecodeFailure: reading failed.
            LimitExceeded: the frame lies past a limit (too many pixels, frames or seconds).
        """
        import av

        if self.first is not None:
            frame, self.first = self.first, None
            return frame
        try:
            return next(self._decoded)
        except StopIteration:
            return None
        except av.FFmpegError as exc:
            reason = error_reason(exc, self.timeouts)
            if isinstance(exc, av.error.InvalidDataError):
                reason = "truncated or corrupt data (FFmpeg: invalid data)"
            raise DecodeFailure(reason) from exc

    def _decode(self) -> Iterator[VideoFrame]:
        """Every frame of the stream, then a check that the data did not end early.

        A cut file shows in one of three ways: the demuxer raises (a sample lies past the end),
        the last packet comes back short and flagged corrupt, or the index lists data past the
        end of the file. The decoder's own reaction to a short packet depends on its threading
        (frame threads swallow the error), so it is not relied on.
        """
        import av

        last_corrupt = False
        count, first_time = 0, None
        index = self.stream.index
        waiting_since = time.monotonic()
        # Every stream's packets come back here (PyAV's demux(stream) skips the others inside one
        # call, which a source that sends only audio never leaves): a stop or a stall ends it.
        for packet in self.container.demux():
            if self.stopping is not None and self.stopping.is_set():
                return
            if self.stall_s is not None and time.monotonic() - waiting_since > self.stall_s:
                raise DecodeFailure(f"no picture for {self.stall_s:g} s")
            if packet.stream.index != index:  # (a flush packet's stream_index is always 0)
                continue
            if packet.size:  # the final empty packet only flushes the decoder
                last_corrupt = packet.is_corrupt
            try:
                frames = self.stream.decode(packet)
            except av.error.InvalidDataError:
                if not (packet.is_corrupt or last_corrupt):
                    raise
                continue  # a partial packet (or the flush after it): the check below reports it
            except av.error.ArgumentError as exc:
                if self.limits.max_frame_pixels is None:
                    raise
                # EINVAL from the decoder: a picture size it refused (``max_pixels``, or its own bounds).
                raise LimitExceeded(self.limits.refused_size()) from exc
            for frame in frames:
                self.limits.check_size(frame.width, frame.height)
                shown = frame.time
                if first_time is None:
                    first_time = shown
                seconds = None if shown is None or first_time is None else shown - first_time
                self.limits.check_position(count, seconds)
                count += 1
                yield frame
                waiting_since = time.monotonic()  # the wait for the next one starts when it is asked for
        if last_corrupt:
            raise DecodeFailure("truncated: the data ends inside a frame (file cut short?)")
        missing = self._missing_bytes()
        if missing:
            raise DecodeFailure(
                f"truncated: {missing} bytes of indexed video data are missing (file cut short?)"
            )

    def _missing_bytes(self) -> int:
        """For a local file: how far its index points past the end of the file (0 if not)."""
        if self.path is None:
            return 0
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return 0
        end = max((e.pos + e.size for e in self.stream.index_entries if e.pos >= 0), default=0)
        return max(end - size, 0)

    def close(self) -> None:
        close = getattr(self._decoded, "close", None)
        if close is not None:
            close()
        self.container.close()
