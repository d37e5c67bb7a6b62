"""Metrics on a Ray cluster: the same series as local mode, exported by every node's metrics agent.

A job on a cluster runs in a Ray worker process, not in a process that serves ``/metrics``; Ray's
``ray.util.metrics`` hands observations to the node's agent, which serves them on the node's metrics
export port with a ``ray_`` prefix (``ray_samstream_stage_seconds_bucket{stage="encode"}``).
"""

from __future__ import annotations

from pipeline.metrics import BUCKETS, Metrics


class RayMetrics(Metrics):
    """:class:`~pipeline.metrics.Metrics` recorded through ``ray.util.metrics`` (names as local mode)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.stage = Histogram(
            "samstream_stage_seconds", "Latency of one pipeline stage", list(BUCKETS), tag_keys=("stage",)
        )
        self.e2e = Histogram("samstream_end_to_end_seconds", "Capture to published latency", list(BUCKETS))
        self.published = Counter("samstream_frames_published", "Frames published")
        self.failed = Counter("samstream_frames_failed", "Frames that failed")
        self.dropped = Counter("samstream_frames_dropped", "Live frames dropped to keep latency bounded")
        self.batch = Histogram(
            "samstream_encoder_batch_size", "Frames per encoder call", [1, 2, 4, 8, 16, 32, 64]
        )
        self.queue = Gauge("samstream_queue_depth", "Items waiting in a bounded queue", tag_keys=("queue",))
        self.tracks = Gauge("samstream_active_tracks", "Tracks followed (by one job)")
        self.requested = Gauge(
            "samstream_stream_requested_fps", "A live stream's frame rate asked for", tag_keys=("stream",)
        )
        self.delivered = Gauge(
            "samstream_stream_delivered_fps",
            "A live stream's frames published a second",
            tag_keys=("stream",),
        )
        self.bound = Gauge(
            "samstream_stream_capacity_bound",
            "1 while the encoders' capacity holds a live stream below its rate",
            tag_keys=("stream",),
        )
        self.capacity = Gauge(
            "samstream_encoder_capacity_fps", "Frames a second the encoders can take", tag_keys=("size",)
        )

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
