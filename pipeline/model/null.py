"""A model that costs nothing: for measuring everything around the model (``samstream bench``).

It answers the model layer's calls with a fixed, realistic mask per request — an ellipse over
about 10 % of the frame, centred on the request's prompt — so sources, workers, tracking, RLE and
Redis do their real work while the model does none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.frames import Yuv420
from pipeline.model.transforms import input_size
from pipeline.model.types import DecodeRequest, Embedding, MaskBatch, Size

NULL_NOTICE = "null model (benchmark): the masks are fixed ellipses"


class NullModel:
    """Same interface as :class:`~pipeline.model.segmenter.MobileSam`, no computation."""

    random_weights = True

    def __init__(self, image_size: int) -> None:
        import torch

        self.image_size = image_size
        self._features = torch.zeros(1, 1, 1)
        self._masks: dict[tuple[Size, int, int], np.ndarray] = {}
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

    def _ellipse(self, size: Size, cx: int, cy: int) -> np.ndarray:
        key = (size, cx, cy)
        if key not in self._masks:
            h, w = size
            yy, xx = np.ogrid[:h, :w]
            # Semi-axes a, b with pi*a*b = 10 % of the frame, aspect as the frame's.
            a, b = np.sqrt(0.1 * w * w / np.pi), np.sqrt(0.1 * h * h / np.pi)
            self._masks[key] = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0
        return self._masks[key]

    def decode(self, embedding: Embedding, requests: Sequence[DecodeRequest]) -> MaskBatch:
        h, w = embedding.original_size
        centres = []
        for r in requests:
            p = r.prompt
            if p.box is not None:
                cx, cy = (p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2
            else:
                cx, cy = p.points[0]
            centres.append((int(cx), int(cy)))
        key = ((h, w), tuple(centres))
        if key not in self._batches:  # the same prompts give the same (read-only) arrays
            if len(self._batches) > 64:
                self._batches.clear()
            masks = np.zeros((len(requests), h, w), bool)
            for i, (cx, cy) in enumerate(centres):
                masks[i] = self._ellipse((h, w), cx, cy)
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
