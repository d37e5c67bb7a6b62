"""Synthetic, deterministic test media: a few coloured shapes moving over a textured background.

Used by tests, the demo and benchmarks, so that no video file has to be shipped. Everything is a
pure function of (frame index, width, height, number of objects): :func:`render_frame` draws the
picture that :func:`write_clip` encodes, and :func:`object_masks` gives each object's exact
visible pixels in that picture.

The objects, in drawing order (a later one hides an earlier one where they overlap):

1. a red disc, moving in the left third of the frame,
2. a blue square, moving in the right third,
3. a green triangle (pointing up), moving in the middle third.

Each stays in its own third, so they do not overlap unless the frame is very small.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pipeline.errors import InvalidInputError

if TYPE_CHECKING:
    from av.video.stream import VideoStream

MAX_OBJECTS = 3
OBJECT_NAMES = ("red disc", "blue square", "green triangle")
OBJECT_COLOURS = ((220, 40, 40), (40, 70, 220), (40, 190, 70))  # RGB

# Encoder name in this FFmpeg build for each codec name a caller may give.
_ENCODERS = {
    "h264": "libx264",
    "libx264": "libx264",
    "hevc": "libx265",
    "h265": "libx265",
    "libx265": "libx265",
    "mpeg4": "mpeg4",
    "vp9": "libvpx-vp9",
    "libvpx-vp9": "libvpx-vp9",
}


@dataclass(frozen=True)
class _Motion:
    lane: int  # 0 left, 1 middle, 2 right third of the frame
    phase_x: float
    phase_y: float
    period_x: float  # frames per horizontal swing
    period_y: float


# Periods are in frames and not tied to the clip length, so any frame is known without the clip.
_MOTIONS = (
    _Motion(lane=0, phase_x=0.0, phase_y=0.5, period_x=90.0, period_y=70.0),
    _Motion(lane=2, phase_x=1.8, phase_y=2.6, period_x=80.0, period_y=100.0),
    _Motion(lane=1, phase_x=3.1, phase_y=4.0, period_x=110.0, period_y=60.0),
)


def _check_size(width: int, height: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 16:
            raise InvalidInputError(f"{name} must be an int >= 16, got {v!r}")


def _check_objects(objects: int) -> None:
    if not isinstance(objects, int) or isinstance(objects, bool) or not 0 <= objects <= MAX_OBJECTS:
        raise InvalidInputError(f"objects must be an int from 0 to {MAX_OBJECTS}, got {objects!r}")


@functools.lru_cache(maxsize=4)
def _background(width: int, height: int) -> np.ndarray:
    """HxWx3 uint8: a diagonal colour gradient with a soft sine texture (gives the encoder work).

    Cached and read-only: callers copy it.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    texture = 12.0 * np.sin(x * 0.35) * np.sin(y * 0.27) + 6.0 * np.sin((x + 2 * y) * 0.11)
    r = 150 + 40 * u - 20 * v + texture
    g = 140 + 30 * v + texture
    b = 110 + 30 * (1 - u) + texture
    image = np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)
    image.flags.writeable = False
    return image


def _object_size(width: int, height: int) -> float:
    """Disc radius, and half the side of the square and triangle, in pixels."""
    return min(0.1 * min(width, height), 0.3 * width / 3)


def _shape_masks(index: int, width: int, height: int, objects: int) -> list[np.ndarray]:
    """Full (not occlusion-cut) HxW bool mask of each object on frame ``index``."""
    size = _object_size(width, height)
    out = []
    for k in range(objects):
        cx, cy = _motion_centre(_MOTIONS[k], index, width, height, size)
        # Evaluate only the object's bounding box; pixel centres are at +0.5.
        x0, x1 = max(int(cx - size) - 1, 0), min(int(cx + size) + 2, width)
        y0, y1 = max(int(cy - size) - 1, 0), min(int(cy + size) + 2, height)
        y, x = np.ogrid[y0:y1, x0:x1]
        x, y = x + 0.5, y + 0.5
        if k == 0:
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= size**2
        elif k == 1:
            inside = (np.abs(x - cx) <= size) & (np.abs(y - cy) <= size)
        else:
            # Upward triangle: apex at (cx, cy - size), base from cx ± size at cy + size.
            top, bottom = cy - size, cy + size
            inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= (y - top) / 2)
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = inside
        out.append(mask)
    return out


def _motion_centre(m: _Motion, index: int, width: int, height: int, size: float) -> tuple[float, float]:
    lane_w = width / 3
    amp_x = max(lane_w / 2 - size - 1, 0.0)
    amp_y = max(height / 2 - size - 2, 0.0)
    cx = lane_w * (m.lane + 0.5) + amp_x * math.sin(2 * math.pi * index / m.period_x + m.phase_x)
    cy = height / 2 + amp_y * math.sin(2 * math.pi * index / m.period_y + m.phase_y)
    return cx, cy


def object_centres(index: int, width: int = 320, height: int = 240, objects: int = 2) -> np.ndarray:
    """(K, 2) float32 x, y pixel centre of each object on frame ``index`` (a good point prompt)."""
    _check_size(width, height)
    _check_objects(objects)
    size = _object_size(width, height)
    pts = [_motion_centre(_MOTIONS[k], index, width, height, size) for k in range(objects)]
    return np.asarray(pts, dtype=np.float32).reshape(objects, 2)


def object_masks(index: int, width: int = 320, height: int = 240, objects: int = 2) -> np.ndarray:
    """Ground truth of frame ``index``: (K, H, W) bool, the visible pixels of each object.

    K is ``objects``; object k is the k-th of the module docstring's list. Masks are at the
    clip's own resolution, in the picture as encoded (before any display rotation).
    """
    _check_size(width, height)
    _check_objects(objects)
    masks = _shape_masks(index, width, height, objects)
    visible = np.zeros((objects, height, width), dtype=bool)
    covered = np.zeros((height, width), dtype=bool)
    for k in reversed(range(objects)):  # the last drawn is on top
        visible[k] = masks[k] & ~covered
        covered |= masks[k]
    return visible


def object_boxes(index: int, width: int = 320, height: int = 240, objects: int = 2) -> np.ndarray:
    """(K, 4) int XYXY box of each object's visible pixels on frame ``index`` (x1, y1 exclusive)."""
    masks = object_masks(index, width, height, objects)
    boxes = np.zeros((objects, 4), dtype=np.int64)
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs):
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def render_frame(index: int, width: int = 320, height: int = 240, objects: int = 2) -> np.ndarray:
    """The picture of frame ``index``: (height, width, 3) uint8 RGB."""
    _check_size(width, height)
    _check_objects(objects)
    image = _background(width, height).copy()
    for k, mask in enumerate(_shape_masks(index, width, height, objects)):
        image[mask] = OBJECT_COLOURS[k]
    return image


def sample_image(width: int = 640, height: int = 480) -> np.ndarray:
    """A still (height, width, 3) uint8 RGB image with all three objects (frame 0 of a clip)."""
    return render_frame(0, width, height, objects=MAX_OBJECTS)


def write_clip(
    path: str | os.PathLike[str],
    frames: int = 60,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    codec: str = "h264",
    objects: int = 2,
    rotation: int = 0,
    faststart: bool = True,
    quality: int = 18,
) -> Path:
    """Encode frames 0 … ``frames``-1 of :func:`render_frame` into a video file with PyAV.

    Args:
        path: output file; its suffix picks the container (``.mp4``, ``.mkv``, ``.webm``, ...).
        frames: number of frames.
        width, height: frame size in pixels; both even (4:2:0 chroma).
        fps: frame rate; frame i has pts i / fps seconds.
        codec: ``h264``, ``hevc``, ``mpeg4`` or ``vp9``.
        objects: how many objects (0-3) to draw.
        rotation: display rotation written to the container (0, 90, 180, 270), counterclockwise
            degrees as PyAV's ``VideoFrame.rotation`` reads it back; a player shows the picture
            turned by this much.
        faststart: for MP4/MOV, put the index (``moov``) before the data, so the file streams.
        quality: the codec's quality scale (x264/x265 CRF, MPEG-4 qscale×6); lower is better.

    Returns:
        the path written.
    """
    import av

    _check_size(width, height)
    _check_objects(objects)
    if width % 2 or height % 2:
        raise InvalidInputError(f"width and height must be even for 4:2:0 video, got {width}x{height}")
    if not isinstance(frames, int) or frames < 1:
        raise InvalidInputError(f"frames must be an int >= 1, got {frames!r}")
    if not isinstance(fps, int) or fps < 1:
        raise InvalidInputError(f"fps must be an int >= 1, got {fps!r}")
    if rotation % 90:
        raise InvalidInputError(f"rotation must be a multiple of 90 degrees, got {rotation!r}")
    encoder = _ENCODERS.get(codec)
    if encoder is None:
        raise InvalidInputError(f"codec must be one of {sorted(set(_ENCODERS))}, got {codec!r}")

    path = Path(path)
    options = {"movflags": "+faststart"} if faststart and path.suffix.lower() in (".mp4", ".mov") else {}
    with av.open(str(path), "w", options=options) as container:
        stream = cast("VideoStream", container.add_stream(encoder, rate=fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if encoder in ("libx264", "libx265"):
            stream.options = {"crf": str(quality), "preset": "veryfast"}
            if encoder == "libx265":
                stream.options["x265-params"] = "log-level=error"
        elif encoder == "mpeg4":
            stream.codec_context.qscale = True  # constant quantiser, as -qscale:v
            stream.codec_context.global_quality = max(1, quality // 6) * 118  # FF_QP2LAMBDA
        else:
            stream.options = {"crf": str(quality * 2), "b": "0", "deadline": "realtime", "cpu-used": "8"}
        if rotation % 360:
            stream.set_display_rotation(rotation)
        encode_pictures(container, stream, (render_frame(i, width, height, objects) for i in range(frames)))
    return path


def encode_pictures(container: Any, stream: Any, pictures: Iterable[np.ndarray]) -> None:
    """Encode (H, W, 3) uint8 RGB pictures into an open PyAV ``stream``, picture ``i`` at pts
    ``i``, and flush it."""
    import av

    for i, picture in enumerate(pictures):
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
