"""Thin ``@ray.remote`` shells: each builds a plain pipeline class in ``__init__`` and forwards calls.

Restart policy: the encoder is stateless and the others rebuild their state on restart (the source
reopens by position, the decoder restores the tracker from Redis), so Ray may restart any of them
and retry the call that was in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray

from pipeline.config import ModelConfig
from pipeline.frames import EncodedFrame, Frame
from pipeline.prompts import TrackSpec
from pipeline.tracking import TrackingConfig

RESTARTS = 3


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


class SourceWorker:
    """Decodes one job's video (CPU)."""

    def __init__(
        self, uri: str, image_size: int, stride: int, live: bool = False, give_up_s: float = 30.0
    ) -> None:
        self.uri, self.image_size, self.stride, self.live, self.give_up_s = (
            uri,
            image_size,
            stride,
            live,
            give_up_s,
        )
        self._reader: Any = None  # opened by the first call, so that a bad source fails that call clearly

    @property
    def reader(self) -> Any:
        if self._reader is None:
            from pipeline.sources.reader import FrameReader, LiveReader

            if self.live:
                self._reader = LiveReader(self.uri, self.image_size, self.give_up_s)
            else:
                self._reader = FrameReader(self.uri, self.image_size, self.stride)
        return self._reader

    def info(self) -> Any:
        return self.reader.info

    @ray.method(num_returns=2)
    def read(self, after: int | None, count: int) -> tuple[Any, list[Frame]]:
        return self.reader.read(after, count)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class EncoderWorker:
    """Runs MobileSAM's image encoder on batches of frames (GPU when the actor was given one)."""

    def __init__(self, model: ModelConfig, threads: int | None = None) -> None:
        from pipeline.encoding import FrameEncoder
        from pipeline.model.segmenter import load_model

        _threads(threads)
        self.encoder = FrameEncoder(load_model(model))

    def encode(self, frames: Sequence[Frame]) -> list[EncodedFrame]:
        return self.encoder.encode(frames)


class DecoderWorker:
    """Follows one job's tracks and publishes its masks to Redis (light: prompt encoder + mask decoder)."""

    def __init__(
        self,
        job_id: str,
        tracks: Sequence[TrackSpec],
        model: ModelConfig,
        redis_url: str,
        prefix: str,
        tracking: TrackingConfig | None = None,
        maxlen: int | None = None,
        threads: int | None = 1,
    ) -> None:
        from pipeline.decoding import TrackDecoder
        from pipeline.model.segmenter import load_model
        from pipeline.streams import Keys, connect
        from pipeline.streams.sink import RedisSink

        _threads(threads)
        segmenter = load_model(model, tracks=len(tracks))
        sink = RedisSink(connect(redis_url), Keys(prefix), job_id, maxlen, segmenter.notice)
        self.decoder = TrackDecoder(tracks, segmenter, sink, tracking)

    def process(self, frames: Sequence[EncodedFrame]) -> list[Any]:
        return self.decoder.process(frames)

    def control(self, cmd: str, track: int, prompt: Any = None) -> None:
        self.decoder.control(cmd, track, prompt)


# The Ray actors (typed Any: Ray's decorators are opaque to type checkers). A worker process is
# titled after its class (``ray::EncoderWorker.encode``).
SourceActor: Any = ray.remote(max_restarts=RESTARTS, max_task_retries=RESTARTS)(SourceWorker)
EncoderActor: Any = ray.remote(max_restarts=RESTARTS, max_task_retries=RESTARTS)(EncoderWorker)
DecoderActor: Any = ray.remote(max_restarts=RESTARTS, max_task_retries=RESTARTS)(DecoderWorker)
