"""Values that flow between the stages of a job: frames in, per-frame results out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Size = tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class Frame:
    """One decoded video frame, ready for the encoder.

    Attributes:
        index: 0-based number of the frame in the source's decode order (with a stride, the
            source's own number: 0, n, 2n, …).
        pts: presentation time in seconds from the stream's start, or None if unknown.
        capture_time: wall-clock epoch seconds when the frame was decoded (live: received).
        image: (h, w, 3) uint8 RGB, resized so that max(h, w) is the encoder size.
        original_size: (H, W) of the frame as decoded, after display rotation.
        timings: seconds spent per stage so far (``decode``, ``preprocess``).
    """

    index: int
    pts: float | None
    capture_time: float
    image: np.ndarray
    original_size: Size
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodedFrame:
    """A frame after the encoder: its metadata and image embedding (no pixels).

    Attributes:
        index, pts, capture_time, original_size: as in :class:`Frame`.
        embedding: the frame's :class:`~pipeline.model.types.Embedding`.
        timings: seconds spent per stage so far (``decode``, ``preprocess``, ``encode``).
    """

    index: int
    pts: float | None
    capture_time: float
    original_size: Size
    embedding: Any
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackMask:
    """One track's result on one frame.

    Attributes:
        track_id: the track's id (1, 2, …).
        state: ``active`` (mask valid), ``lost`` (the object is not followed any more).
        score: predicted IoU of the mask (0 when lost).
        bbox: (x0, y0, x1, y1) pixel box of the mask, x1/y1 exclusive, or None if empty.
        rle: the mask as COCO RLE ``{"size": [H, W], "counts": str}`` at the frame's resolution.
    """

    track_id: int
    state: str
    score: float
    bbox: tuple[int, int, int, int] | None
    rle: dict[str, Any]


@dataclass(frozen=True)
class FrameResult:
    """Everything published for one processed frame (one entry of the masks stream)."""

    frame_index: int
    pts: float | None
    capture_time: float
    width: int
    height: int
    tracks: tuple[TrackMask, ...] = field(default_factory=tuple)
    timings: dict[str, float] = field(default_factory=dict)
