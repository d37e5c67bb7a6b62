"""``samstream serve`` on Ray: the job runners and the backend the REST API submits to.

Each submitted job runs in a :class:`JobRunner`, a *detached* named actor: it belongs to the Ray
cluster, not to the API process, so jobs go on when the API restarts (and an API that starts finds
them by name). The runner lays the job out like ``samstream run`` does — a source worker and a
decoder worker of its own — but sends its frames to the shared, autoscaled encoder pool
(:mod:`workers.pool`). Everything a client sees is in Redis: the job hash, its masks and events.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import ray

from pipeline.config import ModelConfig
from pipeline.errors import SamstreamError
from pipeline.spec import JobSpec
from pipeline.streams import JobStatus, JobStore, Keys, connect
from pipeline.streams.sink import resume_after
from workers.pool import PoolConfig

NAMESPACE = "samstream"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceConfig:
    """What every job of a service shares.

    Attributes:
        model: the model; with official weights and no checkpoint, each node resolves (downloads
            once, caches) the release itself.
        redis_url: the Redis every worker publishes to.
        prefix: Redis key prefix.
        pool: the encoder pool.
        batch_size: frames per encoder request of one job (the pool joins requests of several jobs).
        in_flight: requests of one job in flight at once.
    """

    model: ModelConfig
    redis_url: str
    prefix: str = "samstream:"
    pool: PoolConfig = field(default_factory=PoolConfig)
    batch_size: int = 2
    in_flight: int = 4


def runner_name(job_id: str) -> str:
    return f"samstream-job-{job_id}"


class JobRunner:
    """Runs one job from the API to its end: status, source probe, the graph over the pool."""

    def __init__(self, job_id: str, config: ServiceConfig) -> None:
        self.job_id = job_id
        self.config = config

    def run(self) -> str:
        """Run (or resume) the job; the final status. The actor ends itself afterwards."""
        try:
            return self._run()
        finally:
            ray.actor.exit_actor()

    def _run(self) -> str:
        from workers.graph import GraphOptions, JobGraph, probe
        from workers.metrics import RayMetrics
        from workers.pool import PoolEncoders

        cfg = self.config
        store = JobStore(connect(cfg.redis_url), Keys(cfg.prefix))
        info = store.get(self.job_id)
        if info.status.terminal:
            return info.status.value  # cancelled while queued, or ended before a restart
        try:
            spec = JobSpec.from_dict(info.spec)
            if not spec.live:
                store.set_total(self.job_id, probe(spec)[1])
            store.set_status(self.job_id, JobStatus.RUNNING)
            last = resume_after(store.client, Keys(cfg.prefix), self.job_id, spec.live)
            graph = JobGraph(
                self.job_id,
                spec,
                cfg.model,
                cfg.redis_url,
                cfg.prefix,
                GraphOptions(batch_size=cfg.batch_size, in_flight=cfg.in_flight),
                metrics=RayMetrics(),
                encoders=PoolEncoders(),
                first_run=info.status is JobStatus.QUEUED,
            )
            graph.run(last)
        except SamstreamError as exc:
            store.set_status(self.job_id, JobStatus.FAILED, str(exc))
            return JobStatus.FAILED.value
        except Exception as exc:  # a bug: the job says so, the worker log keeps the traceback
            log.exception("job %s failed", self.job_id)
            store.set_status(self.job_id, JobStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}")
            return JobStatus.FAILED.value
        if graph.stopped and not spec.live:
            store.set_status(self.job_id, JobStatus.CANCELLED, "cancelled on request")
            return JobStatus.CANCELLED.value
        store.set_status(self.job_id, JobStatus.SUCCEEDED)
        return JobStatus.SUCCEEDED.value


# Detached and restartable: a runner that dies with its node is restarted and resumes its job
# after the last published frame (the decoder restores the tracker state stored with it).
JobRunnerActor: Any = ray.remote(num_cpus=0, max_restarts=3, max_task_retries=3)(JobRunner)


class RayBackend:
    """Starts and finds job runners on the connected Ray cluster (see :class:`pipeline.api.Backend`)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config

    def submit(self, job_id: str) -> None:
        runner = JobRunnerActor.options(
            name=runner_name(job_id), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote(job_id, self.config)
        runner.run.remote()

    def running(self, job_id: str) -> bool:
        try:
            ray.get_actor(runner_name(job_id), namespace=NAMESPACE)
        except ValueError:
            return False
        return True


def connect_ray(address: str | None) -> None:
    """Join the cluster at ``address`` ("auto": the one this node belongs to), else start Ray here."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
    else:
        ray.init(
            address="local",
            namespace=NAMESPACE,
            num_cpus=max(os.cpu_count() or 1, 4),
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
