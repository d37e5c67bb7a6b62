"""The shared encoder pool of ``samstream serve``: one Ray Serve deployment for every job.

Each replica holds MobileSAM's image encoder (one per image size it is asked for, the
``max_sizes`` most recently used) and asks Ray for ``gpus`` GPUs (fractions allowed). Requests are
a tick's frames (of many jobs); Serve's dynamic batching joins several requests into one encoder
call. When that call fails, the replica encodes each request's jobs one by one: a job whose frames
cannot be encoded gets them back marked with the error (its tracker host fails that job alone),
and every other job of the batch goes on. Serve's autoscaler keeps between
``min_replicas`` and ``max_replicas`` replicas, following the requests in flight and, while live
streams run, the replicas their drivers say they need (:mod:`workers.demand`); a replica that
cannot be placed is a pending resource demand, which the Ray autoscaler (cluster launcher or
KubeRay) answers by adding a GPU node, and removes again once idle.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ray import serve

from pipeline.config import ModelConfig
from pipeline.errors import InvalidInputError, SamstreamError
from pipeline.frames import EncodedFrame, Frame

APP = "samstream-encoders"
DEFAULT_MAX_SIZES = 4
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolConfig:
    """Size and behaviour of the encoder pool.

    Attributes:
        min_replicas: replicas kept when idle (0: no GPU held while there is no work).
        max_replicas: the most replicas (the most GPU nodes the pool will make the cluster add).
        gpus: GPUs per replica; fractions share a GPU between replicas.
        cpus: CPUs per replica (its torch threads on a CPU-only node).
        max_batch: most requests (job batches) joined into one encoder call.
        batch_wait_s: how long a replica waits for more requests to fill a batch (0: it joins
            what is queued when it starts; the driver's pacing sends what an encoder can take
            at once, so waiting would only add latency).
        target_ongoing: requests in flight per replica the autoscaler aims at.
        downscale_delay_s: idle time before a replica is removed.
        max_sizes: image sizes whose model a replica keeps loaded (least recently used dropped).
    """

    min_replicas: int = 0
    max_replicas: int = 4
    gpus: float = 1.0
    cpus: float = 1.0
    max_batch: int = 8
    batch_wait_s: float = 0.0
    target_ongoing: float = 2.0
    downscale_delay_s: float = 30.0
    max_sizes: int = DEFAULT_MAX_SIZES

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            raise InvalidInputError(
                f"encoder replicas: need 0 <= min <= max and max >= 1, got min {self.min_replicas}, "
                f"max {self.max_replicas}"
            )
        if self.gpus < 0 or self.cpus < 0:
            raise InvalidInputError(f"GPUs and CPUs per encoder must be >= 0, got {self.gpus}, {self.cpus}")
        if self.max_batch < 1 or self.batch_wait_s < 0 or self.target_ongoing <= 0:
            raise InvalidInputError("encoder batching: max_batch >= 1, batch_wait_s >= 0, target_ongoing > 0")
        if self.max_sizes < 1:
            raise InvalidInputError(f"image sizes kept per encoder must be >= 1, got {self.max_sizes}")

    def deployment_options(self) -> dict[str, Any]:
        """The Serve deployment options that carry this config."""
        return {
            "name": "encoder",
            "max_ongoing_requests": max(2 * self.max_batch, 4),
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "initial_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing,
                "upscale_delay_s": 0.0,
                "downscale_delay_s": self.downscale_delay_s,
                "metrics_interval_s": 1.0,
                "look_back_period_s": 5.0,
                # the larger of the requests in flight and the live streams' demand (workers.demand)
                "policy": {"policy_function": "workers.demand:EncoderDemandPolicy"},
            },
            "ray_actor_options": {"num_gpus": self.gpus, "num_cpus": self.cpus},
        }


class EncoderReplica:
    """One replica: encodes batches of frames from any job, at whatever image size each job uses."""

    def __init__(
        self,
        model: ModelConfig,
        max_batch: int = 8,
        batch_wait_s: float = 0.0,
        max_sizes: int = DEFAULT_MAX_SIZES,
    ) -> None:
        from pipeline.encoding.stage import SizedEncoders
        from pipeline.model.segmenter import load_model
        from workers.actors import worker_env

        worker_env()
        self.model = model
        self.encoders = SizedEncoders(lambda size: load_model(replace(model, image_size=size)), max_sizes)
        # Torch threads: Ray sets OMP_NUM_THREADS to the replica's CPUs, and torch follows it.
        batcher: Any = self.encode_batch  # serve.batch's wrapper (typed as the plain method)
        batcher.set_max_batch_size(max_batch)
        batcher.set_batch_wait_timeout_s(batch_wait_s)

    async def encode(self, frames: list[Frame]) -> list[EncodedFrame]:
        """One tick's frames (of many jobs); joined with other requests into one encoder call."""
        result: list[EncodedFrame] = await self.encode_batch(frames)
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def encode_batch(self, requests: list[list[Frame]]) -> list[list[EncodedFrame]]:
        return await asyncio.to_thread(self._encode_requests, requests)

    def _encode_requests(self, requests: Sequence[Sequence[Frame]]) -> list[list[EncodedFrame]]:
        """Each request's frames encoded, in request order; never raises for a frame's sake."""
        frames = [f for request in requests for f in request]
        try:
            encoded = self.encoders.encode(frames)  # one call per image size among them
        except Exception:
            log.warning("encoding a batch of %d requests failed; encoding its jobs one by one", len(requests))
            return [self._encode_by_job(request) for request in requests]
        out, at = [], 0
        for request in requests:  # in request order
            out.append(encoded[at : at + len(request)])
            at += len(request)
        return out

    def _encode_by_job(self, request: Sequence[Frame]) -> list[EncodedFrame]:
        """A request's frames encoded one job at a time; a job whose frames fail gets them back
        marked with the error (``EncodedFrame.error``), in place."""
        by_job: dict[str, list[int]] = {}
        for i, f in enumerate(request):
            by_job.setdefault(f.job_id, []).append(i)
        out: list[EncodedFrame | None] = [None] * len(request)
        for job_id, idx in by_job.items():
            frames = [request[i] for i in idx]
            try:
                encoded = self.encoders.encode(frames)
            except Exception as exc:
                error = _failure(exc, job_id)
                encoded = [
                    EncodedFrame(
                        f.index,
                        f.pts,
                        f.capture_time,
                        f.original_size,
                        None,
                        dict(f.timings),
                        f.job_id,
                        error,
                        image_size=f.image_size,
                    )
                    for f in frames
                ]
            for i, e in zip(idx, encoded, strict=True):
                out[i] = e
        return [e for e in out if e is not None]


def _failure(exc: Exception, job_id: str) -> str:
    """What a job is told when its frames cannot be encoded (one line; a bug is logged whole)."""
    if isinstance(exc, SamstreamError):
        return f"the encoder cannot encode this job's frames: {exc}"
    log.error("encoding the frames of job %s failed", job_id, exc_info=exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"internal error in the encoder: {type(exc).__name__}: {first}"


EncoderDeployment: Any = serve.deployment(EncoderReplica)


def start_pool(model: ModelConfig, config: PoolConfig) -> tuple[Any, bool]:
    """Deploy the pool on the connected Ray cluster, unless it runs already; (its handle, deployed).

    A running pool is kept as it is (a restarted API must not replace the replicas its jobs use);
    ``serve.delete("samstream-encoders")`` first to change its settings. Serve's own HTTP proxy is
    not started: the API is samstream's, and Serve's proxy would take port 8000.
    """
    serve.start(proxy_location="Disabled")
    if APP in serve.status().applications:
        return serve.get_app_handle(APP), False
    app = EncoderDeployment.options(**config.deployment_options()).bind(
        model, config.max_batch, config.batch_wait_s, config.max_sizes
    )
    return serve.run(app, name=APP, route_prefix=None, blocking=False), True


def pool_handle() -> Any:
    """The running pool's handle (from any process connected to the cluster)."""
    return serve.get_app_handle(APP)


def replicas_running(states: dict[Any, int]) -> int:
    """Running replicas in a deployment's ``replica_states`` (Serve's status gives the states as
    their plain names, ``"RUNNING"``; older versions gave ``ReplicaState`` members)."""
    return sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")


class PoolEncoders:
    """:class:`~workers.transport.Encoders` over the pool: each tick's frames become a pool request."""

    def __init__(self, handle: Any | None = None, max_replicas: int = 1, every_s: float = 5.0) -> None:
        from workers.demand import DemandBoard

        self.handle = handle if handle is not None else pool_handle()
        self.max_replicas = max_replicas
        self.every_s = every_s
        self._slots = (1, max_replicas > 1)
        self._asked = -math.inf
        self.board = DemandBoard()

    def demand(self, replicas: int) -> None:
        """The replicas this driver's live streams need, for the pool's autoscaling policy."""
        self.board.publish(replicas)

    def shutdown(self) -> None:
        self.board.withdraw()

    def submit(self, frames: Any) -> Any:
        return self.handle.encode.remote(frames)._to_object_ref_sync()

    def slots(self) -> tuple[int, bool]:
        """Replicas running now (at least 1: a pool at zero starts one for the next call), asked of
        Serve at most every ``every_s``; and whether the pool may grow."""
        now = time.monotonic()
        if now - self._asked >= self.every_s:
            self._asked = now
            try:
                app = serve.status().applications[APP]
                states = app.deployments["encoder"].replica_states
                running = replicas_running(states)
            except Exception as exc:  # the last answer stands
                log.debug("asking Serve for the encoder replicas: %s", exc)
            else:
                self._slots = (max(1, running), running < self.max_replicas)
        return self._slots
