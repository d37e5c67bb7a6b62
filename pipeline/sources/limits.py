"""What a source may make its process hold: pixels per frame, and a file's frames and duration.

A small file can describe huge frames: one 16384×8192 H.264 frame fits in 400 KB and costs
hundreds of MB to decode (FFmpeg's probe decodes it once more while opening). The pixel limit
therefore bites before any full frame exists: FFmpeg's decoders get it as their ``max_pixels``
option (they refuse a larger picture before allocating it, while probing too), the stream's
coded size is checked as soon as the container is open, and every decoded frame is checked
again (a stream may change size mid-way). Frame and duration limits apply to files (a live feed
has no end): a file whose container declares more fails at open, and one that turns out longer
fails at the first frame past the limit, never silently cut short.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import InvalidInputError

# DCI 8K (8192×4320), the largest standard video frame: every camera and film format fits.
DEFAULT_MAX_FRAME_PIXELS = 8192 * 4320
# What ``samstream serve`` accepts of a file by default: six hours (as stored-video APIs of cloud
# services do), and six hours' frames at 60 fps for files whose frames carry no timestamps.
SERVICE_MAX_DURATION_S = 6 * 3600.0
SERVICE_MAX_FRAMES = 6 * 3600 * 60


class LimitExceeded(Exception):
    """A source goes past a :class:`MediaLimits` limit; ``reason`` says how (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _megapixels(pixels: int) -> str:
    """``134 Mpx``, ``35.4 Mpx``, ``0.0768 Mpx``: three significant digits."""
    return f"{pixels / 1e6:.3g} Mpx"


@dataclass(frozen=True)
class MediaLimits:
    """Limits on a source's frames, checked while it is opened and read.

    Attributes:
        max_frame_pixels: most pixels (width × height) a decoded frame may have; None: no limit.
        max_frames: files: most frames the video may have (counted from its first frame, not
            after ``stride``); None: no limit.
        max_duration_s: files: longest the video may last, in seconds; None: no limit.
    """

    max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS
    max_frames: int | None = None
    max_duration_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_frame_pixels", "max_frames"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidInputError(f"{name} must be None (no limit) or an int >= 1, got {value!r}")
        duration = self.max_duration_s
        if duration is not None and (
            not isinstance(duration, (int, float)) or isinstance(duration, bool) or not duration > 0
        ):
            raise InvalidInputError(
                f"max_duration_s must be None (no limit) or > 0 seconds, got {duration!r}"
            )

    @classmethod
    def from_options(cls, max_frame_pixels: int, max_frames: int, max_duration_s: float) -> MediaLimits:
        """From command-line values, where 0 means no limit.

        Raises:
            InvalidInputError: a negative value, naming its option.
        """
        for flag, value in (
            ("--max-frame-pixels", max_frame_pixels),
            ("--max-frames", max_frames),
            ("--max-duration-s", max_duration_s),
        ):
            if value < 0:
                raise InvalidInputError(f"{flag} must be >= 0 (0: no limit), got {value}")
        return cls(
            max_frame_pixels=max_frame_pixels or None,
            max_frames=max_frames or None,
            max_duration_s=float(max_duration_s) if max_duration_s else None,
        )

    def decoder_options(self) -> dict[str, str]:
        """FFmpeg codec options that make a decoder refuse larger pictures (``max_pixels``)."""
        return {} if self.max_frame_pixels is None else {"max_pixels": str(self.max_frame_pixels)}

    def check_size(self, width: int, height: int) -> None:
        """Raises LimitExceeded when a ``width`` × ``height`` frame has too many pixels."""
        limit = self.max_frame_pixels
        if limit is not None and width * height > limit:
            raise LimitExceeded(
                f"frames of {width}×{height} ({_megapixels(width * height)}) exceed the limit of "
                f"{_megapixels(limit)} per frame (--max-frame-pixels)"
            )

    def refused_size(self) -> str:
        """The reason for a decoder that refused a picture by its size (``max_pixels``: EINVAL).

        FFmpeg says nothing more, and its probe could not tell the size either: the message
        cannot give it.
        """
        return (
            f"the decoder refused a frame larger than the limit of {_megapixels(self.max_frame_pixels or 0)} "
            "per frame (--max-frame-pixels), or of an invalid size"
        )

    def check_declared(self, frames: int | None, seconds: float | None) -> None:
        """Raises LimitExceeded when a file's container declares too many frames or seconds.

        Args:
            frames: the frame count its index gives (exact), None when it has none.
            seconds: the duration it declares, None when it does not.
        """
        if self.max_frames is not None and frames is not None and frames > self.max_frames:
            raise LimitExceeded(
                f"it has {frames:,} frames, more than the limit of {self.max_frames:,} (--max-frames)"
            )
        if self.max_duration_s is not None and seconds is not None and seconds > self.max_duration_s:
            raise LimitExceeded(
                f"it lasts {seconds:.1f} s, longer than the limit of {self.max_duration_s:g} s (--max-duration-s)"
            )

    def check_position(self, number: int, seconds: float | None) -> None:
        """Raises LimitExceeded when a file's frame ``number`` (from 0), shown ``seconds`` after its
        first frame (None: unknown), lies past the limits.

        A frame shown at ``max_duration_s`` or later is past it: the video lasts longer.
        """
        if self.max_frames is not None and number >= self.max_frames:
            raise LimitExceeded(f"it has more than {self.max_frames:,} frames, the limit (--max-frames)")
        if self.max_duration_s is not None and seconds is not None and seconds >= self.max_duration_s:
            raise LimitExceeded(
                f"it lasts longer than {self.max_duration_s:g} s, the limit (--max-duration-s)"
            )
