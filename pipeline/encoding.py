"""The encoder stage: batches of frames in, image embeddings out (the plain class behind the encoder worker)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pipeline.frames import EncodedFrame, Frame
from pipeline.model.segmenter import MobileSam


class FrameEncoder:
    """Encodes batches of :class:`Frame` (uint8 pixels already at encoder size) with MobileSAM.

    Args:
        model: the model; only its image encoder is used.
    """

    def __init__(self, model: MobileSam) -> None:
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
