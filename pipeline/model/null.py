"""A model that costs nothing: for measuring everything around the model (``samstream bench``).

It answers the model layer's calls with a fixed, realistic mask per request — an ellipse over
about 10 % of the frame, centred on the object the prompt names — so sources, workers, tracking, RLE and
Redis do their real work while the model does none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.frames import Yuv420
from pipeline.model.transforms import input_size
from pipeline.model.types import DecodeRequest, Embedding, MaskBatch, Size

NULL_NOTICE = "null model (benchmark): the masks are fixed ellipses"
MAX_OBJECTS = 256  # objects the null world remembers per frame size


class NullModel:
    """Same interface as :class:`~pipeline.model.segmenter.MobileSam`, no computation."""

    random_weights = True

    def __init__(self, image_size: int) -> None:
        import torch

        self.image_size = image_size
        self._features = torch.zeros(1, 1, 1)
        self._masks: dict[Size, np.ndarray] = {}  # the ellipse's stamp per frame size
        self._objects: dict[Size, list[tuple[int, int]]] = {}  # the null world's objects
        self._batches: dict[tuple[Size, tuple[tuple[int, int], ...]], MaskBatch] = {}

    @property
    def notice(self) -> str:
        return NULL_NOTICE

    @property
    def low_res_size(self) -> int:
        return self.image_size // 4

    def prepare(self, image: np.ndarray) -> np.ndarray:
        from pipeline.model.transforms import resize_longest

        return resize_longest(image, self.image_size)

    def encode(
        self, frames: Sequence[np.ndarray | Yuv420], original_sizes: Sequence[Size] | None = None
    ) -> list[Embedding]:
        # The device's work (conversion, resize, normalisation) is the model's, and is skipped too.
        sizes = original_sizes or [(int(f.shape[0]), int(f.shape[1])) for f in frames]
        return [
            Embedding(self._features, (int(h), int(w)), input_size((h, w), self.image_size)) for h, w in sizes
        ]

    def _object(self, size: Size, x: float, y: float) -> tuple[int, int]:
        """The centre of the object a prompt at (x, y) names: the null world's objects stay where
        the first prompts put them (a prompt within an ellipse's long radius of one names it; one
        further away puts a new object there). A tracker moves its prompts a little every frame; in
        a world where the object went wherever it was prompted, a motion model would carry it off."""
        objects = self._objects.setdefault(size, [])
        h, w = size
        near = np.sqrt(0.1 * max(h, w) ** 2 / np.pi)  # the ellipse's long radius
        for cx, cy in objects:
            if (cx - x) ** 2 + (cy - y) ** 2 <= near * near:
                return cx, cy
        if len(objects) >= MAX_OBJECTS:
            objects.pop(0)
        objects.append((int(x), int(y)))
        return objects[-1]

    def _paste(self, out: np.ndarray, cx: int, cy: int) -> None:
        """Draw the ellipse centred at (cx, cy) into the zeroed (H, W) mask ``out``: one stamp per
        frame size, pasted (trackers move their prompts: a mask per place would not stay cheap)."""
        h, w = out.shape
        if (h, w) not in self._masks:
            # Semi-axes a, b with pi*a*b = 10 % of the frame, aspect as the frame's.
            a, b = np.sqrt(0.1 * w * w / np.pi), np.sqrt(0.1 * h * h / np.pi)
            ra, rb = int(np.ceil(a)), int(np.ceil(b))
            yy, xx = np.ogrid[-rb : rb + 1, -ra : ra + 1]
            self._masks[(h, w)] = (xx / a) ** 2 + (yy / b) ** 2 <= 1.0
        stamp = self._masks[(h, w)]
        rb, ra = stamp.shape[0] // 2, stamp.shape[1] // 2
        y0, y1, x0, x1 = max(cy - rb, 0), min(cy + rb + 1, h), max(cx - ra, 0), min(cx + ra + 1, w)
        if y0 < y1 and x0 < x1:
            out[y0:y1, x0:x1] = stamp[y0 - (cy - rb) : y1 - (cy - rb), x0 - (cx - ra) : x1 - (cx - ra)]

    def decode(self, embedding: Embedding, requests: Sequence[DecodeRequest]) -> MaskBatch:
        h, w = embedding.original_size
        centres = []
        for r in requests:
            p = r.prompt
            if p.box is not None:
                cx, cy = (p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2
            else:
                cx, cy = p.points[0]
            centres.append(self._object((h, w), cx, cy))
        key = ((h, w), tuple(centres))
        if key not in self._batches:  # the same prompts give the same (read-only) arrays
            if len(self._batches) > 64:
                self._batches.clear()
            masks = np.zeros((len(centres), h, w), bool)
            for mask, (cx, cy) in zip(masks, centres, strict=True):
                self._paste(mask, cx, cy)
            low = self.low_res_size
            batch = MaskBatch(
                masks,
                np.full(len(requests), 0.9, np.float32),
                np.full((len(requests), low, low), 5.0, np.float32),
            )
            for a in (batch.masks, batch.scores, batch.logits):
                a.setflags(write=False)
            self._batches[key] = batch
        return self._batches[key]
