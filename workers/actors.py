"""Thin ``@ray.remote`` shells: each builds a plain pipeline class in ``__init__`` and forwards calls.

* :class:`SourceHostWorker` — many jobs' sources (:class:`~pipeline.sources.host.SourceHost`).
* :class:`EncoderWorker` — MobileSAM's image encoder on batches of many jobs' frames (``run``; the
  service shares the Ray Serve pool of :mod:`workers.pool` instead).
* :class:`TrackerHostWorker` — many jobs' tracks (:class:`~pipeline.tracking.host.TrackerHost`).

Restart policy: a host rebuilds its state from the calls it gets (a source host reopens the
sources named in the next read, by position or at the feed's present; a tracker host restores each
job's tracker from its checkpoint in Redis and asks for a rewind), and the encoder is stateless, so
Ray restarts any of them and retries the call that was in flight. The calls that run every tick
keep no task events (Ray would otherwise record each one for its dashboard: memory that grows
with the calls).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import ray

if TYPE_CHECKING:  # a worker imports what its own class uses (an encoder: no Redis client)
    from pipeline.config import ModelConfig
    from pipeline.frames import EncodedFrame, Frame
    from pipeline.prompts import Prompt
    from pipeline.sources.guard import NetworkGuard
    from pipeline.sources.host import ReadRequest
    from pipeline.tracking.host import TrackReply, TrackSetup

RESTARTS = -1  # a host is the home of many jobs: always bring it back
RETRIES = 3
# OpenMP's idle threads sleep at once instead of spinning for a while. The encoder's threads
# spin between its parallel steps; on a box where the tracker host and the source host share
# the cores, that spinning takes their CPU (``samstream bench --suite pipeline`` measured whole
# runs about a tenth faster with it, the first mask sooner).
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


# Ray's processes connect to their raylet and its object store over a Unix socket, retried while
# it does not listen yet: 10 tries a second apart by default, so a raylet whose store comes up a
# moment after its first try starts a whole second late (a third of starts here, seen in
# raylet.out as exactly 1.0 s between mapping the store and starting the object manager).
# 50 ms apart, with the same 10 s in all.
#
# A raylet frees the objects nobody holds any more in batches: once a second, or once 100 are
# waiting. Until then the object store places new objects on memory never written before, and
# each first write of a 4 KiB page is a page fault (on this machine's VM about 2.5 us: 14 ms to
# store 22 MB, against 2 ms on memory freed and reused). A stream's frames and embeddings are
# freed a few ms after use, so every 10 ms.
START_ENV = {
    "RAY_raylet_client_connect_timeout_milliseconds": "50",
    "RAY_raylet_client_num_connect_attempts": "200",
    "RAY_free_objects_period_milliseconds": "10",
}
# ``samstream run`` only (one node):
# * the raylet starts its worker processes as it starts, not once the driver has connected, so the
#   run's actors find them ready (its first mask about 0.4 s sooner); a service starts once and
#   keeps its workers;
# * each object is freed as soon as nobody holds it (on a cluster each free is a message to
#   every node: a service keeps the batches, every 10 ms).
RUN_ENV = {"RAY_enable_worker_prestart": "1", "RAY_free_objects_batch_size": "1"}


# glibc's malloc hands large freed blocks back to the kernel: a block over its mmap threshold at
# once, and the top of its heap once more than twice that threshold is free there. A model's
# forward pass frees tens of MB of activations, and the next one faults every 4 KiB page back in
# (on this machine's VM, about 30 ms of each 200 ms encode). A model's worker keeps them: blocks
# up to 32 MiB come from the heap, and up to 256 MiB of free memory stays at its top. Values of
# mallopt(3); the user's own MALLOC_*_ settings win.
MALLOC_OPTIONS = {
    "MALLOC_MMAP_THRESHOLD_": (-3, 32 << 20),  # M_MMAP_THRESHOLD (its largest allowed value)
    "MALLOC_TRIM_THRESHOLD_": (-1, 256 << 20),  # M_TRIM_THRESHOLD
}


def worker_env() -> None:
    """Set :data:`WORKER_ENV` in this process's environment, where the user has not set it, and
    keep the memory a model's forward pass frees (:data:`MALLOC_OPTIONS`).

    Called before a worker first imports torch (OpenMP reads it once, when loaded).
    """
    _set_default(WORKER_ENV)
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """Apply :data:`MALLOC_OPTIONS` to this process's malloc; False where it has no ``mallopt``
    (not glibc), where the user set either option, or where malloc refuses one."""
    import ctypes
    import os

    if any(name in os.environ for name in MALLOC_OPTIONS):
        return False  # glibc read the user's own at start; setting one here would drop the other
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all([mallopt(param, value) == 1 for param, value in MALLOC_OPTIONS.values()])


def ray_start_env(run: bool = False) -> None:
    """Set :data:`WORKER_ENV` and :data:`START_ENV` (and, for ``samstream run``, :data:`RUN_ENV`)
    where the user has not: called before Ray is started in this process (every Ray process
    inherits them)."""
    _set_default({**WORKER_ENV, **START_ENV, **(RUN_ENV if run else {})})


def _set_default(env: Mapping[str, str]) -> None:
    import os

    for name, value in env.items():
        os.environ.setdefault(name, value)


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


class SourceHostWorker:
    """Decodes many jobs' sources (CPU); with a ``guard`` (a service's), every connection is checked."""

    def __init__(self, guard: NetworkGuard | None = None) -> None:
        from pipeline.sources.host import SourceHost, guarded_opener

        self.host = SourceHost(guarded_opener(guard))

    def read(self, groups: Sequence[Sequence[ReadRequest]], wait_s: float) -> tuple[Any, ...]:
        """The replies, then one list of frames per group (Ray returns them as separate objects)."""
        replies, frames = self.host.read(groups, wait_s)
        return (replies, *frames)

    def close(self, job_ids: Sequence[str]) -> None:
        self.host.close(job_ids)

    def jobs(self) -> int:
        return self.host.jobs


class EncoderWorker:
    """Runs MobileSAM's image encoder on batches of frames (GPU when the actor was given one)."""

    def __init__(self, model: ModelConfig, threads: int | None = None) -> None:
        worker_env()
        from pipeline.encoding.stage import SizedEncoders
        from pipeline.model.segmenter import load_model

        _threads(threads)
        self.encoders = SizedEncoders(lambda size: load_model(replace(model, image_size=size)))
        # Loaded now, its encoder prepared: the first frames do not wait for it.
        warm = getattr(self.encoders.encoder(model.image_size).model, "warm", None)
        if warm is not None:
            warm(encoder=True)

    def encode(self, frames: Sequence[Frame]) -> list[EncodedFrame]:
        return self.encoders.encode(frames)


class TrackerHostWorker:
    """Follows many jobs' tracks and publishes their masks (prompt encoder + mask decoder)."""

    def __init__(
        self,
        model: ModelConfig,
        redis_url: str,
        prefix: str,
        threads: int | None = 1,
        redis_retry_s: float = 30.0,
    ) -> None:
        worker_env()
        from pipeline.model.segmenter import load_model
        from pipeline.streams import Keys, connect
        from pipeline.tracking.host import TrackerHost

        _threads(threads)
        self.host = TrackerHost(
            lambda size, tracks: load_model(replace(model, image_size=size), tracks=tracks),
            connect(redis_url, retry_s=redis_retry_s),  # a Redis restart does not fail its jobs
            Keys(prefix),
        )

    def process(
        self,
        setups: Mapping[str, TrackSetup],
        frames: Sequence[EncodedFrame],
        part_jobs: Sequence[str] = (),
        *parts: list[TrackReply],
    ) -> list[TrackReply]:
        """``part_jobs[i]`` names the job of ``parts[i]``, a part's replies to the same frames."""
        from pipeline.jobs.transport import part_replies

        return self.host.process(setups, frames, part_replies(part_jobs, parts))

    def control(self, job_id: str, cmd: str, track: int, prompt: Prompt | None = None) -> None:
        self.host.control(job_id, cmd, track, prompt)

    def prepare(self, image_size: int, tracks: int) -> None:
        self.host.prepare(image_size, tracks)

    def close(self, job_ids: Sequence[str]) -> None:
        self.host.close(job_ids)


# The Ray actors (typed Any: Ray's decorators are opaque to type checkers). A worker process is
# titled after its class (``ray::EncoderWorker.encode``). Resources are set per use by
# :mod:`workers.transport`. The source host takes a close while a read waits (two threads).
_OPTIONS: dict[str, Any] = {
    "max_restarts": RESTARTS,
    "max_task_retries": RETRIES,
    "enable_task_events": False,
}
_remote: Any = ray.remote  # its typed overloads know neither max_concurrency nor enable_task_events
SourceHostActor: Any = _remote(max_concurrency=2, **_OPTIONS)(SourceHostWorker)
EncoderActor: Any = _remote(**_OPTIONS)(EncoderWorker)
TrackerHostActor: Any = _remote(**_OPTIONS)(TrackerHostWorker)
