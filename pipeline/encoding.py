"""The encoder stage: batches of frames in, image embeddings out (the plain class behind the encoder worker)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from pipeline.frames import EncodedFrame, Frame, Yuv420
from pipeline.model.types import Embedding, Size


class ImageEncoder(Protocol):
    """What the encoder stage needs of a model (``MobileSam``, or the benchmark's null model)."""

    def encode(
        self, frames: Sequence[np.ndarray | Yuv420], original_sizes: Sequence[Size] | None = None
    ) -> list[Embedding]: ...


class FrameEncoder:
    """Encodes batches of :class:`Frame` (RGB at encoder size, or the decoder's YUV planes) with MobileSAM.

    Args:
        model: the model; only its image encoder is used.
    """

    def __init__(self, model: ImageEncoder) -> None:
        self.model = model

    def encode(self, frames: Sequence[Frame]) -> list[EncodedFrame]:
        """One encoder call for the whole batch; each frame's ``encode`` timing is the batch's time."""
        if not frames:
            return []
        start = time.perf_counter()
        embeddings = self.model.encode([f.image for f in frames], [f.original_size for f in frames])
        took = time.perf_counter() - start
        return [
            EncodedFrame(f.index, f.pts, f.capture_time, f.original_size, emb, {**f.timings, "encode": took})
            for f, emb in zip(frames, embeddings, strict=True)
        ]
