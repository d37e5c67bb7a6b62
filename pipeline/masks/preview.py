"""Small JPEG previews of the frames a job processes, for the viewer and for rendering live jobs.

A source host makes them (it holds the pixels; the stages after it hold only embeddings), at most
:attr:`PreviewOptions.rate` a second per job; the frame carries its preview through the encoder to
its tracker host, which publishes it with the frame's masks entry, in the same atomic script, to
the job's bounded ``:preview`` stream (see ``docs/wire-format.md``). So a preview exists only for a
published frame, and its masks entry is in Redis before it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from pipeline.errors import InvalidInputError
from pipeline.frames import Preview, Yuv420

# Video range (16-235 luma, 16-240 chroma) to JPEG's full range, as lookup tables for PIL's point().
_LUMA = [min(255, max(0, round((v - 16) * 255 / 219))) for v in range(256)]
_CHROMA = [min(255, max(0, round((v - 128) * 255 / 224 + 128))) for v in range(256)]


# How long a viewer's look keeps a live job's previews coming (its page asks every few hundred ms).
WATCH_TTL_S = 10


@dataclass(frozen=True)
class PreviewOptions:
    """How a deployment (``run``, ``serve``) previews its jobs' frames.

    Attributes:
        enabled: make previews at all.
        max_side: the preview's long side in pixels (a smaller frame keeps its size).
        rate: most previews a second per job (wall-clock time).
        keep: the ``:preview`` stream keeps about this many entries (``XADD MAXLEN ~``).
        quality: JPEG quality, 1-95.
        live_always: make a live job's previews all the time; False (the default): only while a
            viewer shows the job (``Keys.watched``), since a live feed's previews cost every frame
            a JPEG for as long as it runs (and `render` of a live job then has what was watched).
    """

    enabled: bool = True
    max_side: int = 640
    rate: float = 10.0
    keep: int = 64
    quality: int = 70
    live_always: bool = False

    def __post_init__(self) -> None:
        if not 16 <= self.max_side <= 4096:
            raise InvalidInputError(f"--preview-side must be 16 to 4096 pixels, got {self.max_side}")
        if not 0 < self.rate <= 120:
            raise InvalidInputError(f"--preview-rate must be > 0 and <= 120 a second, got {self.rate}")
        if not 1 <= self.keep <= 100_000:
            raise InvalidInputError(f"--preview-keep must be 1 to 100000 entries, got {self.keep}")
        if not 1 <= self.quality <= 95:
            raise InvalidInputError(f"preview quality must be 1 to 95, got {self.quality}")


OFF = PreviewOptions(enabled=False)


def preview_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) of the preview of a ``height`` × ``width`` frame: long side at most ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def make_preview(
    image: np.ndarray | Yuv420, original_size: tuple[int, int], options: PreviewOptions
) -> Preview:
    """A frame's JPEG preview, shaped as the frame as decoded (``original_size``, (H, W)).

    Args:
        image: (h, w, 3) uint8 RGB (at the encoder size: same aspect as the frame), or the
            decoder's 4:2:0 planes at the frame's own size. Planes go to the JPEG encoder as YCbCr,
            range-expanded but not converted (JPEG stores YCbCr): a BT.709 source's hues come out a
            little off, which a preview can afford.
        original_size: (H, W) of the frame.
        options: size and quality.
    """
    from PIL import Image

    height, width = preview_size(*original_size, options.max_side)
    if isinstance(image, Yuv420):
        planes = [Image.fromarray(image.y), Image.fromarray(image.u), Image.fromarray(image.v)]
        if not image.full_range:
            planes = [p.point(lut) for p, lut in zip(planes, (_LUMA, _CHROMA, _CHROMA), strict=True)]
        # reducing_gap: PIL first shrinks by an integer factor (box filter), then resamples: fast.
        planes = [p.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0) for p in planes]
        picture = Image.merge("YCbCr", planes)
    else:
        picture = Image.fromarray(np.ascontiguousarray(image))
        if picture.size != (width, height):
            picture = picture.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=options.quality)
    return Preview(out.getvalue(), width, height)


class PreviewPacer:
    """Says which of a job's frames get a preview: at most ``rate`` a second of wall-clock time."""

    def __init__(self, rate: float) -> None:
        self.every_s = 1.0 / rate
        self._last: float | None = None

    def due(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.every_s:
            return False
        self._last = now
        return True
