"""The encoder stage: batches of frames in, image embeddings out (the plain class behind the encoder worker)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from pipeline.errors import InvalidInputError
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
        """One encoder call for the whole batch; each frame's ``encode`` timing is the batch's time,
        its ``encode_batch`` the batch's frames (the driver's pacing learns a frame's cost from them)."""
        if not frames:
            return []
        start = time.perf_counter()
        embeddings = self.model.encode([f.image for f in frames], [f.original_size for f in frames])
        took = time.perf_counter() - start
        return [
            EncodedFrame(
                f.index,
                f.pts,
                f.capture_time,
                f.original_size,
                emb,
                {**f.timings, "encode": took, "encode_batch": float(len(frames))},
                f.job_id,
                preview=f.preview,
                image_size=f.image_size,
                detections=f.detections,
            )
            for f, emb in zip(frames, embeddings, strict=True)
        ]


class SizedEncoders:
    """Encodes frames of any image sizes (many jobs' frames in one call): one model per size.

    Args:
        load: builds the model of an image size (called when a size is first needed, and again
            after it was dropped).
        max_sizes: most models kept (each holds its weights, and its compiled code, on the
            device); the least recently used is dropped for a new size. None: no limit.
    """

    def __init__(self, load: Callable[[int], ImageEncoder], max_sizes: int | None = None) -> None:
        if max_sizes is not None and max_sizes < 1:
            raise InvalidInputError(f"max_sizes must be None or >= 1, got {max_sizes}")
        self._load = load
        self.max_sizes = max_sizes
        self.encoders: OrderedDict[int, FrameEncoder] = OrderedDict()  # least recently used first

    def encoder(self, size: int) -> FrameEncoder:
        if size in self.encoders:
            self.encoders.move_to_end(size)
            return self.encoders[size]
        if self.max_sizes is not None:
            # Dropped before the new one loads: the device never holds more than max_sizes models.
            while len(self.encoders) >= self.max_sizes:
                self.encoders.popitem(last=False)
        encoder = self.encoders[size] = FrameEncoder(self._load(size))
        return encoder

    def encode(self, frames: Sequence[Frame]) -> list[EncodedFrame]:
        """Every frame's embedding, in order; one encoder call per image size among them."""
        by_size: dict[int, list[int]] = {}
        for i, f in enumerate(frames):
            by_size.setdefault(f.image_size, []).append(i)
        out: list[EncodedFrame | None] = [None] * len(frames)
        for size, idx in by_size.items():
            for i, e in zip(idx, self.encoder(size).encode([frames[i] for i in idx]), strict=True):
                out[i] = e
        return [e for e in out if e is not None]
