"""``samstream serve`` on Ray: the job driver every job runs in, and the backend the REST API submits to.

Every job of the service runs in one :class:`~pipeline.jobs.driver.JobDriver` loop, in a *detached*
named actor (:class:`DriverService`): it belongs to the Ray cluster, not to the API process, so
jobs go on when the API restarts, and an API that starts finds it by name. The driver owns the
source hosts and tracker hosts (placed by Ray by their declared CPUs and memory; started as jobs
need them) and sends every tick's frames to the shared, autoscaled encoder pool
(:mod:`workers.pool`). A driver that dies is restarted by Ray, with new hosts, and resumes every
unfinished job from Redis. Everything a client sees is in Redis: the job hash, masks and events.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import ray

from pipeline.config import ModelConfig
from pipeline.errors import SamstreamError
from pipeline.jobs.driver import DriverOptions, JobDriver
from pipeline.ledger import JobStore
from pipeline.ledger.lifecycle import Lifecycle, resume_unfinished
from pipeline.sources.guard import NetworkGuard
from pipeline.streams import Keys, Publisher, connect
from pipeline.streams.connection import DEFAULT_RETRY_S
from workers.pool import PoolConfig
from workers.transport import HostResources

NAMESPACE = "samstream"
DRIVER = "samstream-driver"
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
        driver: the driver's pacing and placement (streams per source host, tracks per tracker host).
        resources: what each source host and tracker host asks Ray for.
        hosts: source hosts started with the driver (more are started as jobs need them).
        decoders: tracker hosts started with the driver.
        driver_cpus: CPUs the driver actor asks for.
        guard: where the sources' connections may go (the API checks the URLs given; the
            source hosts check every connection FFmpeg makes for them).
        redis_retry_s: how long the driver and tracker hosts retry Redis while it is unreachable
            or refuses writes, before the jobs concerned fail.
        reconcile_s: how often ``serve`` looks for unfinished jobs that no driver runs.
    """

    model: ModelConfig
    redis_url: str
    prefix: str = "samstream:"
    pool: PoolConfig = field(default_factory=PoolConfig)
    driver: DriverOptions = field(default_factory=lambda: DriverOptions(batch_frames=4, file_window=16))
    resources: HostResources = field(default_factory=HostResources)
    hosts: int = 1
    decoders: int = 1
    driver_cpus: float = 0.25
    guard: NetworkGuard = field(default_factory=NetworkGuard)
    redis_retry_s: float = DEFAULT_RETRY_S
    reconcile_s: float = 5.0


class DriverService:
    """The driver of every job of the service, turning its loop on a thread of its own.

    Made by Ray (again, after a crash): it starts its hosts and takes up every job that has not
    ended. The API calls :meth:`submit` for new jobs.
    """

    def __init__(self, config: ServiceConfig) -> None:
        from pipeline.streams.control import ControlBus
        from workers.metrics import RayMetrics
        from workers.pool import PoolEncoders
        from workers.transport import RayTransport

        self.config = config
        client = connect(config.redis_url, retry_s=config.redis_retry_s)
        keys = Keys(config.prefix)
        self.store = JobStore(client, keys)
        transport = RayTransport(
            config.model,
            config.redis_url,
            config.prefix,
            PoolEncoders(max_replicas=config.pool.max_replicas),
            config.resources,
            hosts=config.hosts,
            decoders=config.decoders,
            guard=config.guard,
            redis_retry_s=config.redis_retry_s,
        )

        def event(job_id: str, kind: str, detail: str | None) -> None:
            Publisher(client, keys, job_id).event(kind, detail=detail)

        self.driver = JobDriver(
            transport,
            Lifecycle(self.store, stop_reason="cancelled on request"),
            ControlBus(client, keys),
            event,
            config.driver,
            RayMetrics(),
        )
        # After a restart: every job that had not ended (this driver holds none yet).
        resume_unfinished(self.store, set, self.submit)
        self._thread = threading.Thread(target=self._loop, name="samstream-driver", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self.driver.run(until_idle=False)
                return
            except Exception:  # a bug in one turn must not end every job: log it, go on
                log.exception("the driver's loop failed; going on")

    def submit(self, job_id: str) -> None:
        """Run (or resume) a queued job."""
        self.driver.submit(job_id)

    def holds(self, job_id: str) -> bool:
        """Whether this driver runs the job (or is about to)."""
        return self.driver.holds(job_id)

    def held(self) -> set[str]:
        """Every job this driver runs or is about to (see :meth:`JobDriver.held`)."""
        return self.driver.held()

    def stats(self) -> dict[str, int]:
        t = self.driver.transport
        return {"jobs": len(self.driver.jobs), "source_hosts": len(t.hosts), "tracker_hosts": len(t.decoders)}


def driver_actor(config: ServiceConfig) -> Any:
    """The service's driver actor: found by name, or made (detached, restarted whenever it dies)."""
    actor_class: Any = ray.remote(DriverService)
    return actor_class.options(
        name=DRIVER,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        max_concurrency=8,
        num_cpus=config.driver_cpus,
        enable_task_events=False,
    ).remote(config)


class RayBackend:
    """Hands the API's jobs to the driver on the connected Ray cluster (see :class:`pipeline.api.Backend`)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.driver = driver_actor(config)

    def submit(self, job_id: str) -> None:
        try:
            ray.get(self.driver.submit.remote(job_id), timeout=30)
        except ray.exceptions.RayActorError:  # dead for good (killed): a new driver takes over
            log.warning("the driver actor is gone; starting another")
            self.driver = driver_actor(self.config)
            ray.get(self.driver.submit.remote(job_id), timeout=30)

    def running(self, job_id: str) -> bool:
        try:
            return bool(ray.get(self.driver.holds.remote(job_id), timeout=30))
        except (ray.exceptions.RayError, SamstreamError):
            return False

    def held(self) -> set[str]:
        """Every job the driver runs or is about to (empty when it does not answer)."""
        try:
            return set(ray.get(self.driver.held.remote(), timeout=30))
        except (ray.exceptions.RayError, SamstreamError):
            return set()


def connect_ray(address: str | None) -> None:
    """Join the cluster at ``address`` ("auto": the one this node belongs to), else start Ray here."""
    if ray.is_initialized():
        return
    from workers.actors import ray_start_env

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray_start_env()  # Ray started here passes it on; a cluster's workers set OpenMP's themselves
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
