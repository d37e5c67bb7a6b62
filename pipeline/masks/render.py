"""Draw tracked masks over the source video and write the result as a playable video file.

:func:`overlay` tints each mask in its track's colour and outlines it; :func:`render_video` does
that for every frame of a source, with the per-frame results of a job, and encodes an MP4 (or
MKV/MOV) with PyAV; :func:`render_previews` does it over a live job's previews (its frames are
not kept), at their resolution.

Encoder: H.264 (``libx264``, else ``libopenh264``) when this FFmpeg build has one, else MPEG-4
part 2 (``mpeg4``); see :func:`pick_encoder`. Pixels are 4:2:0 (``yuv420p``), which needs an even
width and height: a frame with an odd side gets one more row or column, a copy of its last one,
so no source pixel is lost (a 161x121 source gives a 162x122 video).
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from pipeline.errors import InvalidInputError
from pipeline.frames import FrameResult
from pipeline.masks.rle import decode_rle

if TYPE_CHECKING:
    from av.container import OutputContainer
    from av.video.stream import VideoStream

    from pipeline.streams.previews import PreviewEntry

# Ten well-separated colours, RGB (the first ten of Sasha Trubetskoy's "20 simple, distinct colours").
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (255, 225, 25),  # yellow
    (0, 130, 200),  # blue
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (250, 190, 212),  # pink
)
OUTLINE_PX = 2
DEFAULT_FPS = 30
VIDEO_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}  # suffix -> FFmpeg muxer
ENCODERS = ("libx264", "libopenh264", "mpeg4")  # in order of preference
_CRF = "20"  # x264 constant rate factor: visually close to the source
_MPEG4_QSCALE = 3


def track_colour(track_id: int | np.integer[Any]) -> tuple[int, int, int]:
    """The RGB colour of a track: track 1 gets ``PALETTE[0]``, and so on, cycling every 10 ids."""
    if not isinstance(track_id, int | np.integer) or isinstance(track_id, bool):
        raise InvalidInputError(f"track_id must be an int, got {type(track_id).__name__}")
    return PALETTE[(int(track_id) - 1) % len(PALETTE)]


def overlay(
    image: npt.NDArray[np.uint8], masks: Sequence[tuple[int, npt.NDArray[np.bool_]]], alpha: float = 0.5
) -> npt.NDArray[np.uint8]:
    """Tint each mask in its track's colour and outline it.

    Args:
        image: (H, W, 3) uint8 RGB. Not modified.
        masks: (track_id, mask) pairs, mask (H, W) bool (nonzero is foreground). Later masks are
            drawn over earlier ones.
        alpha: weight of the colour in the tint, 0 (no tint) to 1 (solid colour).

    Returns:
        A new (H, W, 3) uint8 RGB image: ``(1 - alpha) * pixel + alpha * colour`` inside each mask,
        and the full colour on the mask's inner boundary, ``OUTLINE_PX`` pixels wide (pixels
        within that many 4-connected steps of a pixel outside the mask or outside the image).
        Pixels outside every mask are unchanged.

    Raises:
        InvalidInputError: the image is not (H, W, 3) uint8, a mask is not (H, W), or alpha is
            not in [0, 1].
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidInputError(
            f"expected an (H, W, 3) uint8 RGB image, got {getattr(image, 'dtype', type(image).__name__)} "
            f"of shape {getattr(image, 'shape', None)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must be in [0, 1], got {alpha!r}")
    h, w = image.shape[:2]
    bool_masks = []
    for track_id, mask in masks:
        if not isinstance(mask, np.ndarray) or mask.shape != (h, w):
            raise InvalidInputError(
                f"mask of track {track_id} has shape {getattr(mask, 'shape', None)}, expected {(h, w)}"
            )
        bool_masks.append((track_colour(track_id), mask.astype(bool, copy=False)))

    out = image.copy()
    for colour, mask in bool_masks:
        tinted = out[mask].astype(np.float32) * (1.0 - alpha) + np.float32(alpha) * np.asarray(colour)
        out[mask] = np.round(tinted).astype(np.uint8)
    for colour, mask in bool_masks:  # after all tints, so no tint covers an outline
        out[mask & ~_erode(mask, OUTLINE_PX)] = colour
    return out


def _erode(mask: npt.NDArray[np.bool_], steps: int) -> npt.NDArray[np.bool_]:
    """Binary erosion by a 3x3 cross, ``steps`` times; outside the image counts as background."""
    m = mask
    for _ in range(steps):
        p = np.pad(m, 1, constant_values=False)
        m = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m


@functools.cache
def pick_encoder() -> str:
    """The first of ``ENCODERS`` that this FFmpeg build can encode with."""
    import av

    for name in ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except ValueError:  # av.codec.codec.UnknownCodecError: not in this build
            continue
        return name
    raise RuntimeError(f"this FFmpeg build has none of the video encoders {', '.join(ENCODERS)}")


def render_video(
    source: str | os.PathLike[str],
    results: Iterable[FrameResult],
    out: str | os.PathLike[str],
    *,
    stride: int = 1,
    alpha: float = 0.5,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Draw each frame's active track masks over the source video and encode the result.

    The frames are ``VideoSource(source).frames(stride=stride)`` at the source's resolution,
    after display rotation. ``results`` must come in frame order; a frame without a result is
    written unchanged, and a result for a frame not read (another stride, past the end) is
    skipped. Only tracks in state ``active`` are drawn. A mask whose size differs from the
    frame's is scaled to it (nearest neighbour).

    The video plays at the source's frame rate divided by ``stride`` (so it lasts as long as the
    source), ``DEFAULT_FPS`` / stride when the source does not say. It is written to a hidden
    temporary file beside ``out`` and renamed to ``out`` once complete: a failure leaves no
    partial file. An existing ``out`` is replaced.

    Args:
        source: file path or http(s) URL of the video the results belong to.
        results: per-frame results, in increasing ``frame_index``.
        out: output file, suffix ``.mp4``, ``.mkv`` or ``.mov``; its folder must exist.
        stride: draw every ``stride``-th source frame (as the job that made ``results`` did).
        alpha: tint weight, as in :func:`overlay`.
        progress: called with the number of frames written so far, after each frame.

    Returns:
        The number of frames written.

    Raises:
        InvalidInputError: bad output path, bad ``stride`` or ``alpha``, or a malformed mask.
        SourceError: the source cannot be opened or read.
    """
    import av

    from pipeline.sources.video import VideoSource

    out_path = _check_output(out)
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must be in [0, 1], got {alpha!r}")
    fmt = VIDEO_FORMATS[out_path.suffix.lower()]
    tmp = out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.part")
    written = 0
    with VideoSource(source) as src:
        frames = src.frames(stride=stride, image_size=None)  # checks stride before anything is written
        width, height = src.info.width + src.info.width % 2, src.info.height + src.info.height % 2
        rate = Fraction(src.info.fps or DEFAULT_FPS).limit_denominator(1001) / stride
        encoder = pick_encoder()
        pending = _ResultCursor(results)
        try:
            options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
            with av.open(str(tmp), "w", format=fmt, options=options) as container:
                stream = _add_stream(container, encoder, rate, width, height)
                for frame in frames:
                    result = pending.take(frame.index)
                    image = frame.rgb()  # RGB at the frame's own size (no encoder size asked)
                    _mux_overlaid(container, stream, image, result, alpha, written)
                    written += 1
                    if progress is not None:
                        progress(written)
                container.mux(stream.encode(None))
            os.replace(tmp, out_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            frames.close()
    return written


def render_previews(
    previews: Sequence[PreviewEntry],
    results: Iterable[FrameResult],
    out: str | os.PathLike[str],
    *,
    alpha: float = 0.5,
) -> tuple[int, tuple[int, int]]:
    """Draw each preview's active track masks over it and encode the result (a live job, whose
    frames are not kept: its previews are, the newest ``--preview-keep`` of them).

    The video is at the previews' size (the masks scaled to it, nearest neighbour) and plays at
    their mean rate of capture (at least 1 a second). A preview without its masks entry (trimmed)
    is written unchanged. Written beside ``out`` first, then renamed, as :func:`render_video`.

    Args:
        previews: the previews, in frame order (:class:`~pipeline.streams.previews.PreviewReader`).
        results: per-frame results in increasing ``frame_index`` (those of other frames are skipped).
        out: output file, suffix ``.mp4``, ``.mkv`` or ``.mov``; its folder must exist.
        alpha: tint weight, as in :func:`overlay`.

    Returns:
        The number of frames written and the video's (width, height).

    Raises:
        InvalidInputError: bad output path, no previews, or a malformed mask or JPEG.
    """
    import io

    import av
    from PIL import Image, UnidentifiedImageError

    out_path = _check_output(out)
    if not previews:
        raise InvalidInputError(
            "the job has no previews to render (none kept: was it run with --no-preview?)"
        )
    first = previews[0]
    width, height = first.width + first.width % 2, first.height + first.height % 2
    span = previews[-1].capture_time - first.capture_time
    fps = (len(previews) - 1) / span if len(previews) > 1 and span > 0 else 1.0
    rate = Fraction(max(1.0, fps)).limit_denominator(1000)
    fmt = VIDEO_FORMATS[out_path.suffix.lower()]
    tmp = out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.part")
    pending = _ResultCursor(results)
    written = 0
    try:
        options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
        with av.open(str(tmp), "w", format=fmt, options=options) as container:
            stream = _add_stream(container, pick_encoder(), rate, width, height)
            for preview in previews:
                try:
                    picture = Image.open(io.BytesIO(preview.jpeg)).convert("RGB")
                except (UnidentifiedImageError, OSError) as exc:
                    raise InvalidInputError(
                        f"the preview of frame {preview.frame} is not a JPEG: {exc}"
                    ) from None
                image = np.asarray(picture.resize((first.width, first.height)), dtype=np.uint8)
                result = pending.take(preview.frame)
                _mux_overlaid(container, stream, image, result, alpha, written)
                written += 1
            container.mux(stream.encode(None))
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written, (width, height)


def _check_output(out: str | os.PathLike[str]) -> Path:
    path = Path(out)
    if path.suffix.lower() not in VIDEO_FORMATS:
        raise InvalidInputError(
            f"output {str(path)!r} must end in {', '.join(VIDEO_FORMATS)}, got {path.suffix or 'no suffix'!r}"
        )
    if not path.parent.is_dir():
        raise InvalidInputError(f"output folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise InvalidInputError(f"output {str(path)!r} is a folder, expected a file name")
    return path


def _add_stream(
    container: OutputContainer, encoder: str, rate: Fraction, width: int, height: int
) -> VideoStream:
    stream = cast("VideoStream", container.add_stream(encoder, rate=rate))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = 1 / rate
    if encoder == "libx264":
        stream.options = {"crf": _CRF, "preset": "veryfast"}
    elif encoder == "mpeg4":
        stream.codec_context.qscale = True  # constant quantiser, as ffmpeg -qscale:v
        stream.codec_context.global_quality = _MPEG4_QSCALE * 118  # FF_QP2LAMBDA
    return stream


class _ResultCursor:
    """Walks results in frame order alongside the frames read, with a one-result look-ahead."""

    def __init__(self, results: Iterable[FrameResult]) -> None:
        self._it = iter(results)
        self._head = next(self._it, None)

    def take(self, index: int) -> FrameResult | None:
        """The result for frame ``index``, dropping the results before it; None if there is none."""
        while self._head is not None and self._head.frame_index < index:
            self._head = next(self._it, None)
        if self._head is None or self._head.frame_index != index:
            return None
        found, self._head = self._head, next(self._it, None)
        return found


def _fit(mask: npt.NDArray[np.bool_], size: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """An (h, w) mask scaled to ``size`` = (H, W) by nearest neighbour (itself if already that size)."""
    h, w = size
    if mask.shape == (h, w):
        return mask
    if mask.size == 0:
        return np.zeros((h, w), dtype=bool)
    rows = ((np.arange(h) + 0.5) * mask.shape[0] / h).astype(np.intp)
    cols = ((np.arange(w) + 0.5) * mask.shape[1] / w).astype(np.intp)
    return mask[rows[:, None], cols[None, :]]


def _pad_even(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """(H, W, 3) padded to even H and W by repeating the last row / column (4:2:0 needs even sides)."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _mux_overlaid(
    container: Any, stream: Any, image: np.ndarray, result: Any, alpha: float, pts: int
) -> None:
    """Write ``image`` (HxWx3 uint8 RGB) with ``result``'s active tracks drawn over it (None: as it is)."""
    import av

    if result is not None:
        masks = [
            (t.track_id, _fit(decode_rle(t.rle), image.shape[:2]))
            for t in result.tracks
            if t.state == "active"
        ]
        image = overlay(image, masks, alpha)
    video_frame = av.VideoFrame.from_ndarray(_pad_even(image), format="rgb24")
    video_frame.pts = pts
    container.mux(stream.encode(video_frame))
