"""The job graph: source → encoder pool → track decoder, with a bounded window of frames in flight.

The driver only moves object references and small summaries: frames go from the source worker to
an encoder, embeddings from the encoder to the decoder, without passing through the driver. Calls
to the decoder are submitted in frame order, and Ray runs one caller's calls to an actor in the
order they were submitted, so the decoder sees frames in order however the encoders finish.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import ray
from ray.exceptions import RayActorError, RayTaskError

from pipeline.config import ModelConfig
from pipeline.decoding import FrameSummary
from pipeline.errors import JobError, SamstreamError
from pipeline.metrics import Metrics, NullMetrics
from pipeline.spec import JobSpec
from workers.actors import DecoderActor, EncoderActor, SourceActor

GPU_BATCH = 8  # frames per encoder call on a GPU (and for the benchmark's null model)


@dataclass(frozen=True)
class GraphOptions:
    """How a job is laid out on Ray.

    Attributes:
        batch_size: frames per encoder call.
        in_flight: batches submitted and not yet published (bounds memory; backpressure).
        encoders: encoder workers for this job.
        encoder_gpus: GPUs per encoder worker (fractions allowed); 0 runs on the CPU.
        encoder_threads: torch threads per CPU encoder (None: torch's default, all cores).
    """

    batch_size: int = 1
    in_flight: int = 3
    encoders: int = 1
    encoder_gpus: float = 0.0
    encoder_threads: int | None = None

    @staticmethod
    def auto(null_model: bool = False) -> GraphOptions:
        """GPU encoders when the cluster has GPUs, else one CPU encoder.

        The benchmark's null model stands in for a GPU encoder, and is laid out like one.
        """
        gpus = float(ray.cluster_resources().get("GPU", 0))
        # Every batch costs the source, the decoder and the driver a Ray call each (about 1 ms of
        # CPU apiece): batches of 8 leave more of the CPU to the frames than batches of 4.
        if null_model:
            return GraphOptions(batch_size=GPU_BATCH, in_flight=4)
        if gpus >= 1:
            return GraphOptions(batch_size=GPU_BATCH, in_flight=4, encoders=int(gpus), encoder_gpus=1.0)
        # Ray limits a worker to one thread by default; the CPU encoder is the heavy stage: all cores.
        return GraphOptions(encoder_threads=os.cpu_count())


class Encoders(Protocol):
    """Where a job's frames are encoded: its own encoder actors, or the service's shared pool."""

    def submit(self, frames: Any) -> Any:
        """Encode a batch (an object reference to a list of frames); an object reference to the result."""
        ...


class _OwnEncoders:
    """A job's own encoder actors, taking batches in turn."""

    def __init__(self, actors: list[Any]) -> None:
        self.actors = actors
        self.turn = 0

    def submit(self, frames: Any) -> Any:
        actor = self.actors[self.turn % len(self.actors)]
        self.turn += 1
        return actor.encode.remote(frames)


def probe(spec: JobSpec) -> tuple[Any, int | None]:
    """Open a file job's video once, to fail fast and clearly on bad input: its SourceInfo and the
    frames the job will process (None: unknown).

    Raises:
        SamstreamError: the video cannot be read, or a prompt lies outside its frames (the user's
            mistake, said before any worker starts).
    """
    from pipeline.sources.video import VideoSource

    with VideoSource(spec.source) as video:
        info = video.info
    for track in spec.tracks:
        track.prompt.check_inside(info.width, info.height)
    total = (info.frame_count + spec.stride - 1) // spec.stride if info.frame_count else None
    return info, total


def unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray error (a :class:`SamstreamError` raised in a worker)."""
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return unwrap(cause)
    return exc


class JobGraph:
    """Runs one job's frames through the actors and reports progress.

    Args:
        job_id: the job.
        spec: what to run.
        model: model config for the encoder and decoder workers (weights resolved already).
        redis_url: where the decoder publishes.
        prefix: Redis key prefix.
        options: layout on Ray.
        metrics: where per-stage timings go (measured in the workers, recorded here).
        on_frames: called with each published batch's summaries (progress bars).
        encoders: a shared encoder pool; None starts ``options.encoders`` encoder actors for this job.
        first_run: the job starts for the first time: commands sent while it was queued apply.

    After :meth:`run`, ``stopped`` tells whether a ``stop`` command ended the job early.
    """

    def __init__(
        self,
        job_id: str,
        spec: JobSpec,
        model: ModelConfig,
        redis_url: str,
        prefix: str,
        options: GraphOptions,
        metrics: Metrics | None = None,
        on_frames: Callable[[Sequence[FrameSummary]], None] | None = None,
        encoders: Encoders | None = None,
        first_run: bool = False,
    ) -> None:
        self.job_id = job_id
        self.spec = spec
        self.model = model
        self.redis_url = redis_url
        self.prefix = prefix
        self.options = options
        self.metrics = metrics or NullMetrics()
        self.on_frames = on_frames
        self.actors: list[Any] = []
        self.pool = encoders
        self.stopped = False
        self.first_run = first_run

    def run(self, after: int | None) -> int:
        """Process every frame after frame ``after`` (None: from the start). Returns frames published.

        Raises:
            SamstreamError: a worker raised one (a bad source, Redis gone, …), unwrapped.
            JobError: a worker died more often than it may be restarted.
        """
        opts = self.options
        source = SourceActor.options(name=f"samstream-source-{self.job_id}").remote(
            self.spec.source, self.spec.image_size, self.spec.stride, self.spec.live, self.spec.give_up_s
        )
        own = (
            []
            if self.pool is not None
            else [
                EncoderActor.options(
                    num_gpus=opts.encoder_gpus, name=f"samstream-encoder-{self.job_id}-{i}"
                ).remote(self.model, opts.encoder_threads)
                for i in range(opts.encoders)
            ]
        )
        encoders = self.pool if self.pool is not None else _OwnEncoders(own)
        decoder = DecoderActor.options(name=f"samstream-decoder-{self.job_id}").remote(
            self.job_id,
            self.spec.tracks,
            self.model,
            self.redis_url,
            self.prefix,
            self.spec.tracking_config(),
            self.spec.maxlen,
        )
        self.actors = [source, *own, decoder]
        try:
            if self.spec.live:  # a live feed is opened once, here (a file was probed by the driver)
                info = ray.get(source.info.remote())
                for track in self.spec.tracks:
                    track.prompt.check_inside(info.width, info.height)
            return self._loop(source, encoders, decoder, after)
        except (RayTaskError, RayActorError) as exc:
            inner = unwrap(exc)
            if isinstance(inner, SamstreamError):
                raise inner from None
            if isinstance(inner, RayActorError):
                raise JobError(f"a worker of job {self.job_id!r} died and could not be restarted") from None
            raise
        finally:
            self.shutdown()

    def _loop(self, source: Any, encoders: Encoders, decoder: Any, after: int | None) -> int:
        opts = self.options
        # A live job keeps one frame in flight: the next frame taken is the newest when the pipeline
        # has room, so capture-to-publish latency stays about one service time.
        in_flight = 1 if self.spec.live else opts.in_flight
        control = _Control(self.job_id, self.redis_url, self.prefix, self.metrics, self.first_run)
        window: deque[Any] = deque()
        published = 0
        last = after
        end = stopping = False
        while (not end and not stopping) or window:
            if not stopping:
                stopping = self.stopped = control.apply_commands(decoder)
            if not end and not stopping and len(window) < in_flight:
                batch_ref, frames_ref = source.read.remote(last, opts.batch_size)
                batch = ray.get(batch_ref)
                end = batch.end
                control.record(batch)
                if batch.indices:
                    last = batch.indices[-1]
                    window.append(decoder.process.remote(encoders.submit(frames_ref)))
                    self.metrics.encoder_batch(len(batch.indices))
                self.metrics.set_queue_depth("frames_in_flight", len(window))
                continue
            if window:
                summaries: list[FrameSummary] = ray.get(window.popleft())
                self.metrics.set_queue_depth("frames_in_flight", len(window))
                published += self._record(summaries)
        return published

    def _record(self, summaries: Sequence[FrameSummary]) -> int:
        count = 0
        for s in summaries:
            if not s.published:
                continue
            count += 1
            self.metrics.frame_published()
            for stage, seconds in s.timings.items():
                self.metrics.observe_stage(stage, seconds)
            self.metrics.observe_end_to_end(s.publish_time - s.capture_time)
        if summaries:
            self.metrics.set_active(1, summaries[-1].active_tracks)
        if self.on_frames is not None:
            self.on_frames(summaries)
        return count

    def shutdown(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor, no_restart=True)
        self.actors = []


POLL_S = 0.05  # how often a job reads its control stream


class _Control:
    """The driver's side of a job: control commands in; a live job's source events and drops out."""

    def __init__(self, job_id: str, redis_url: str, prefix: str, metrics: Metrics, everything: bool) -> None:
        from pipeline.streams import JobStore, Keys, Publisher, connect
        from pipeline.streams.control import ControlReader

        client = connect(redis_url)
        keys = Keys(prefix)
        self.job_id = job_id
        self.commands = ControlReader(client, keys, job_id, everything)
        self.publisher = Publisher(client, keys, job_id)
        self.store = JobStore(client, keys)
        self.metrics = metrics
        self.dropped = 0
        self.polled = -POLL_S

    def apply_commands(self, decoder: Any) -> bool:
        """Forward new track commands to the decoder (ordered before the next frame); True on stop.

        The stream is read at most every :data:`POLL_S` seconds: a command waits that long at most.
        """
        from pipeline.errors import InvalidInputError

        now = time.monotonic()
        if now - self.polled < POLL_S:
            return False
        self.polled = now
        for command in self.commands.poll():
            if isinstance(command, InvalidInputError):
                self.publisher.event("error", detail=str(command))
            elif command.cmd == "stop":
                self.publisher.event("stop_requested")
                return True
            else:
                decoder.control.remote(command.cmd, command.track, command.prompt)
        return False

    def record(self, batch: Any) -> None:
        for kind, detail, _ in batch.events:
            self.publisher.event(kind, detail=detail)
        if batch.dropped > self.dropped:
            self.metrics.frames_dropped(batch.dropped - self.dropped)
            self.dropped = batch.dropped
            self.store.record_dropped(self.job_id, self.dropped)
