"""Metrics on a Ray cluster: the same series as local mode, exported by every node's metrics agent.

A job on a cluster runs in a Ray worker process, not in a process that serves ``/metrics``; Ray's
``ray.util.metrics`` hands observations to the node's agent, which serves them on the node's metrics
export port with a ``ray_`` prefix (``ray_samstream_stage_seconds_bucket{stage="encode"}``).
"""

from __future__ import annotations

from typing import Any

from pipeline.metrics import Recorded, Series


class RayMetrics(Recorded):
    """:class:`~pipeline.metrics.Metrics` recorded through ``ray.util.metrics`` (names as local mode).
    Jobs are counted by the API process on a cluster (``samstream_active_jobs``, ``samstream_jobs``),
    not by each driver."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        def make(series: Series) -> Any:
            if series.kind == "histogram":
                return Histogram(series.name, series.help, list(series.buckets), tag_keys=series.labels)
            kind = Counter if series.kind == "counter" else Gauge
            return kind(series.name, series.help, tag_keys=series.labels)

        self._declare(make, skip=("jobs",))

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.observe(seconds, tags={"stage": stage})

    def observe_end_to_end(self, seconds: float) -> None:
        self.e2e.observe(seconds)

    def frame_published(self) -> None:
        self.published.inc()

    def frame_failed(self, count: int = 1) -> None:
        if count > 0:
            self.failed.inc(count)

    def frames_dropped(self, count: int = 1) -> None:
        if count > 0:
            self.dropped.inc(count)

    def encoder_batch(self, size: int) -> None:
        self.batch.observe(size)

    def set_queue_depth(self, queue: str, depth: int) -> None:
        self.queue.set(depth, tags={"queue": queue})

    def set_active(self, jobs: int, tracks: int) -> None:
        self.tracks.set(tracks)

    def stream_rates(self, stream: str, requested: float | None, delivered: float, bound: bool) -> None:
        tags = {"stream": stream}
        if requested is not None:
            self.requested.set(requested, tags=tags)
        self.delivered.set(delivered, tags=tags)
        self.bound.set(1 if bound else 0, tags=tags)

    def stream_ended(self, stream: str) -> None:
        # Ray's gauges cannot drop a series: an ended stream reads 0 until the agent forgets it.
        tags = {"stream": stream}
        for gauge in (self.requested, self.delivered, self.bound):
            gauge.set(0, tags=tags)

    def encoder_capacity(self, size: int, fps: float) -> None:
        self.capacity.set(fps, tags={"size": str(size)})
