"""Values that flow between the stages of a job: frames in, per-frame results out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Size = tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class Yuv420:
    """A frame's pixels as the video decoder gave them: 4:2:0 planes at the frame's own size.

    A source hands these on instead of RGB at the encoder's size when it can: converting to RGB
    and resizing then happen on the encoder's device (:func:`pipeline.model.transforms.to_model_input`),
    which on a GPU costs microseconds and on the source's CPU cost three times the decoding.

    Attributes:
        y: (H, W) uint8 luma.
        u, v: (ceil(H/2), ceil(W/2)) uint8 chroma.
        matrix: ``bt601`` or ``bt709``: the colour matrix (as FFmpeg reads the stream's tags).
        full_range: 0-255 levels (JPEG range); else 16-235/240 (video range).
        image_size: the encoder size S the frame is meant for (long side resized to S).
    """

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    matrix: str
    full_range: bool
    image_size: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, 3): the RGB picture's shape, at the frame's own size."""
        return (int(self.y.shape[0]), int(self.y.shape[1]), 3)


@dataclass(frozen=True)
class Preview:
    """A small JPEG of a frame, for the viewer (see :mod:`pipeline.masks.preview`).

    Attributes:
        jpeg: the JPEG file's bytes (baseline, YCbCr).
        width, height: its size in pixels (the frame's aspect; long side at most the preview size).
    """

    jpeg: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Frame:
    """One decoded video frame, ready for the encoder.

    Attributes:
        index: 0-based number of the frame in the source's decode order (with a stride, the
            source's own number: 0, n, 2n, …).
        pts: presentation time in seconds from the stream's start, or None if unknown.
        capture_time: wall-clock epoch seconds when the frame was decoded (live: received).
        image: (h, w, 3) uint8 RGB, resized so that max(h, w) is the encoder size; or the
            decoder's :class:`Yuv420` planes at the frame's own size, converted and resized on
            the encoder's device. :meth:`rgb` gives RGB at the encoder size either way.
        original_size: (H, W) of the frame as decoded, after display rotation.
        timings: seconds spent per stage so far (``decode``, ``preprocess``).
        job_id: the job the frame belongs to, where stages carry many jobs' frames in one call.
        preview: its JPEG preview, when its source host made one (published with its masks).
        detections: what the job's detector found on it, on a detection frame (see
            :mod:`pipeline.model.detector`); None on the others.
    """

    index: int
    pts: float | None
    capture_time: float
    image: np.ndarray | Yuv420
    original_size: Size
    timings: dict[str, float] = field(default_factory=dict)
    job_id: str = ""
    preview: Preview | None = None
    detections: tuple[Any, ...] | None = None

    @property
    def image_size(self) -> int:
        """The encoder size S this frame is for."""
        if isinstance(self.image, Yuv420):
            return self.image.image_size
        return int(max(self.image.shape[:2]))

    def rgb(self) -> np.ndarray:
        """(h, w, 3) uint8 RGB: at the encoder size (converted here, on the CPU, from YUV planes), or
        as decoded when the source was asked for no encoder size."""
        if isinstance(self.image, Yuv420):
            from pipeline.model.transforms import yuv420_resized

            return yuv420_resized(self.image)
        return self.image


@dataclass(frozen=True)
class EncodedFrame:
    """A frame after the encoder: its metadata and image embedding (no pixels).

    Attributes:
        index, pts, capture_time, original_size, job_id, preview, detections: as in :class:`Frame`.
        embedding: the frame's :class:`~pipeline.model.types.Embedding`.
        timings: seconds spent per stage so far (``decode``, ``preprocess``, ``encode``).
        error: why the encoder could not encode the frame (``embedding`` is None then): the
            frame's job fails with it, the other jobs of the same call go on.
        image_size: the encoder size S it was encoded at (0: not said; the job's).
    """

    index: int
    pts: float | None
    capture_time: float
    original_size: Size
    embedding: Any
    timings: dict[str, float] = field(default_factory=dict)
    job_id: str = ""
    error: str | None = None
    preview: Preview | None = None
    image_size: int = 0
    detections: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class TrackMask:
    """One track's result on one frame.

    Attributes:
        track_id: the track's id (1, 2, …).
        state: ``active`` (mask valid), ``lost`` (the object is not followed any more).
        score: predicted IoU of the mask (0 when lost).
        bbox: (x0, y0, x1, y1) pixel box of the mask, x1/y1 exclusive, or None if empty.
        rle: the mask as COCO RLE ``{"size": [H, W], "counts": str}`` at the frame's resolution.
        label: what the track follows, where a detector named it (its class); else None.
    """

    track_id: int
    state: str
    score: float
    bbox: tuple[int, int, int, int] | None
    rle: dict[str, Any]
    label: str | None = None


@dataclass(frozen=True)
class FrameResult:
    """Everything published for one processed frame (one entry of the masks stream, and its
    preview's entry when it has one); ``image_size`` is the encoder size its masks were made at
    (None: not said)."""

    frame_index: int
    pts: float | None
    capture_time: float
    width: int
    height: int
    tracks: tuple[TrackMask, ...] = field(default_factory=tuple)
    timings: dict[str, float] = field(default_factory=dict)
    preview: Preview | None = None
    image_size: int | None = None
