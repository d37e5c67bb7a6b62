"""Prometheus metrics behind a small interface with a no-op default.

Library code records through :class:`Metrics`; :class:`NullMetrics` is the default, so nothing
needs a registry to run. Stage timings are measured where the work happens (in whichever process)
and travel back with the results; the driver records them into one Prometheus registry and serves
``/metrics``. No label takes unbounded values (no per-frame or per-track labels; a live stream's
rates are labelled by its id, which ``--max-jobs`` bounds, and go when the stream ends).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

STAGES = ("decode", "preprocess", "preview", "encode", "mask_decode", "postprocess", "publish")
# Latency buckets from 1 ms to 30 s: a GPU stage takes milliseconds, a CPU encoder seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The no-op base: every method accepts the observation and does nothing."""

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One stage's latency for one frame (or one batch, for ``encode``)."""

    def observe_end_to_end(self, seconds: float) -> None:
        """Capture (decode) time to published, for one frame."""

    def frame_published(self) -> None: ...

    def frame_failed(self, count: int = 1) -> None:
        """Frames read that could not be published: their encode or tracking failed (their job fails)."""

    def frames_dropped(self, count: int = 1) -> None: ...

    def encoder_batch(self, size: int) -> None: ...

    def set_queue_depth(self, queue: str, depth: int) -> None: ...

    def set_active(self, jobs: int, tracks: int) -> None: ...

    def stream_rates(self, stream: str, requested: float | None, delivered: float, bound: bool) -> None:
        """A live stream's rate asked for (its feed's, up to its max_fps), the rate it got, and
        whether the encoders' capacity held it back."""

    def stream_ended(self, stream: str) -> None:
        """A live stream ended: its rate series go."""

    def encoder_capacity(self, size: int, fps: float) -> None:
        """Frames a second the encoders can take at ``size``, as the driver measured them."""


NullMetrics = Metrics


@dataclass(frozen=True)
class Series:
    """One metric, declared once (:data:`SERIES`): local mode's Prometheus registry and Ray's
    metrics agent on a cluster (``workers.metrics``) both make theirs from it."""

    kind: str  # histogram, counter or gauge
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


SERIES: dict[str, Series] = {
    "stage": Series("histogram", "samstream_stage_seconds", "Latency of one pipeline stage", ("stage",), BUCKETS),
    "e2e": Series("histogram", "samstream_end_to_end_seconds", "Capture to published latency of a frame", (), BUCKETS),
    "published": Series("counter", "samstream_frames_published", "Frames published"),
    "failed": Series("counter", "samstream_frames_failed", "Frames that failed"),
    "dropped": Series("counter", "samstream_frames_dropped", "Live frames dropped to keep latency bounded"),
    "batch": Series("histogram", "samstream_encoder_batch_size", "Frames per encoder call", (), (1, 2, 4, 8, 16, 32, 64)),
    "queue": Series("gauge", "samstream_queue_depth", "Items waiting in a bounded queue", ("queue",)),
    "jobs": Series("gauge", "samstream_active_jobs", "Jobs running"),
    "tracks": Series("gauge", "samstream_active_tracks", "Tracks followed"),
    "requested": Series("gauge", "samstream_stream_requested_fps", "A live stream's frame rate asked for", ("stream",)),
    "delivered": Series("gauge", "samstream_stream_delivered_fps", "A live stream's frames published a second", ("stream",)),
    "bound": Series(
        "gauge",
        "samstream_stream_capacity_bound",
        "1 while the encoders' capacity holds a live stream below its rate",
        ("stream",),
    ),
    "capacity": Series("gauge", "samstream_encoder_capacity_fps", "Frames a second the encoders can take", ("size",)),
}  # fmt: skip


class Recorded(Metrics):
    """Metrics kept in some backend: one attribute per :data:`SERIES` entry, made by ``make``."""

    stage: Any
    e2e: Any
    published: Any
    failed: Any
    dropped: Any
    batch: Any
    queue: Any
    jobs: Any
    tracks: Any
    requested: Any
    delivered: Any
    bound: Any
    capacity: Any

    def _declare(self, make: Callable[[Series], Any], skip: tuple[str, ...] = ()) -> None:
        for attr, series in SERIES.items():
            if attr not in skip:
                setattr(self, attr, make(series))


class PrometheusMetrics(Recorded):
    """Metrics in a ``prometheus_client`` registry (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry or CollectorRegistry()
        kinds = {"histogram": Histogram, "counter": Counter, "gauge": Gauge}

        def make(series: Series) -> Any:
            extra = {"buckets": series.buckets} if series.kind == "histogram" else {}
            return kinds[series.kind](
                series.name, series.help, list(series.labels), registry=self.registry, **extra
            )

        self._declare(make)
        for s in STAGES:
            self.stage.labels(stage=s)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage=stage).observe(seconds)

    def observe_end_to_end(self, seconds: float) -> None:
        self.e2e.observe(seconds)

    def frame_published(self) -> None:
        self.published.inc()

    def frame_failed(self, count: int = 1) -> None:
        if count > 0:
            self.failed.inc(count)

    def frames_dropped(self, count: int = 1) -> None:
        self.dropped.inc(count)

    def encoder_batch(self, size: int) -> None:
        self.batch.observe(size)

    def set_queue_depth(self, queue: str, depth: int) -> None:
        self.queue.labels(queue=queue).set(depth)

    def set_active(self, jobs: int, tracks: int) -> None:
        self.jobs.set(jobs)
        self.tracks.set(tracks)

    def stream_rates(self, stream: str, requested: float | None, delivered: float, bound: bool) -> None:
        if requested is not None:
            self.requested.labels(stream=stream).set(requested)
        self.delivered.labels(stream=stream).set(delivered)
        self.bound.labels(stream=stream).set(1 if bound else 0)

    def stream_ended(self, stream: str) -> None:
        for gauge in (self.requested, self.delivered, self.bound):
            with contextlib.suppress(KeyError):
                gauge.remove(stream)

    def encoder_capacity(self, size: int, fps: float) -> None:
        self.capacity.labels(size=str(size)).set(fps)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` over HTTP in a daemon thread."""
        from prometheus_client import start_http_server

        start_http_server(port, addr=addr, registry=self.registry)
