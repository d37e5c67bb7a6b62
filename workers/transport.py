"""The driver's :class:`~pipeline.jobs.transport.Transport` on Ray: hosts are actors, handles are refs.

A read is one call to a source-host actor returning ``1 + groups`` objects (the replies, then each
group's frames), so each group's frames go to the encoders, and their embeddings to a tracker
host, as object references: they move between worker processes (through the node's shared object
store) and never through the driver. :meth:`RayTransport.wait` asks Ray which references are ready
without fetching them.

Every actor declares its CPUs (fractions allowed) and memory, so Ray packs them onto nodes and the
autoscaler sees the demand of hosts that do not fit: a new source host that finds no room asks
for a CPU node, an encoder replica for a GPU node.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import ray
from ray.exceptions import RayActorError, RayTaskError

from pipeline.config import ModelConfig
from pipeline.errors import InvalidInputError, JobError, SamstreamError
from pipeline.jobs.transport import Numbered
from pipeline.prompts import Prompt
from pipeline.sources.guard import NetworkGuard
from pipeline.sources.host import ReadRequest
from pipeline.streams.connection import DEFAULT_RETRY_S
from pipeline.tracking.host import TrackSetup
from workers.actors import EncoderActor, SourceHostActor, TrackerHostActor

MB = 2**20


@dataclass(frozen=True)
class HostResources:
    """What each source host and tracker host asks Ray for.

    Attributes:
        host_cpus: CPUs of a source host (its decode threads; fractions allowed).
        host_memory_mb: memory of a source host (its sources' buffers, torch for resizing).
        tracker_cpus: CPUs of a tracker host (prompt encoder, mask decoder, RLE, publishing).
        tracker_gpus: GPUs of a tracker host (a fraction beside the encoder on GPU nodes; 0: CPU).
        tracker_memory_mb: memory of a tracker host (one model per image size, tracker state).
    """

    host_cpus: float = 0.5
    host_memory_mb: int = 600
    tracker_cpus: float = 0.5
    tracker_gpus: float = 0.0
    tracker_memory_mb: int = 900

    def __post_init__(self) -> None:
        if min(self.host_cpus, self.tracker_cpus, self.tracker_gpus) < 0:
            raise InvalidInputError("host CPUs and GPUs must be >= 0")
        if min(self.host_memory_mb, self.tracker_memory_mb) < 0:
            raise InvalidInputError("host memory must be >= 0 MB")


class Encoders(Protocol):
    """Where frames are encoded: a run's own encoder actors, or the service's shared pool."""

    def submit(self, frames: Any) -> Any:
        """Encode a batch (an object reference to a list of frames); an object reference to the result."""
        ...

    def slots(self) -> tuple[int, bool]:
        """Encoders working at once now, and whether there may be more (an autoscaled pool)."""
        ...

    def demand(self, replicas: int) -> None:
        """The encoders the driver's live streams need (an autoscaled pool grows or shrinks to it)."""
        ...


class OwnEncoders:
    """Encoder actors of this driver's own (``samstream run``), taking batches in turn.

    Args:
        model: the model.
        count: encoder actors.
        gpus: GPUs per actor (0: the CPU).
        threads: torch threads of a CPU encoder (None: torch's default).
    """

    def __init__(
        self, model: ModelConfig, count: int = 1, gpus: float = 0.0, threads: int | None = None
    ) -> None:
        self.actors = [
            EncoderActor.options(num_gpus=gpus, num_cpus=1, name=None).remote(model, threads)
            for _ in range(count)
        ]
        self.turn = 0

    def submit(self, frames: Any) -> Any:
        actor = self.actors[self.turn % len(self.actors)]
        self.turn += 1
        return actor.encode.remote(frames)

    def slots(self) -> tuple[int, bool]:
        return len(self.actors), False

    def demand(self, replicas: int) -> None:
        """A run's own encoders are as many as it was given."""

    def shutdown(self) -> None:
        for actor in self.actors:
            _kill(actor)


class RayTransport:
    """Source hosts and tracker hosts as Ray actors owned by the driver's process.

    Args:
        model: the model (tracker hosts load its prompt encoder and mask decoder).
        redis_url: where tracker hosts publish.
        prefix: Redis key prefix.
        encoders: where frames are encoded.
        resources: what each host asks Ray for.
        hosts: source hosts to start at once.
        decoders: tracker hosts to start at once.
        guard: what every connection of the source hosts' sources is checked against (a
            service's; None: ``run``, which reads whatever its own user names).
        redis_retry_s: how long tracker hosts retry Redis while it is unreachable or refuses writes.
    """

    def __init__(
        self,
        model: ModelConfig,
        redis_url: str,
        prefix: str,
        encoders: Encoders,
        resources: HostResources | None = None,
        hosts: int = 1,
        decoders: int = 1,
        guard: NetworkGuard | None = None,
        redis_retry_s: float = DEFAULT_RETRY_S,
    ) -> None:
        self.model = model
        self.guard = guard
        self.redis_retry_s = redis_retry_s
        self.redis_url = redis_url
        self.prefix = prefix
        self.encoders = encoders
        self.resources = resources or HostResources()
        self._hosts: Numbered[Any] = Numbered()
        self._decoders: Numbered[Any] = Numbered()
        self._unanswered: list[Any] = []  # calls nobody waits for (commands, closes)
        for _ in range(hosts):
            self.add_host()
        for _ in range(decoders):
            self.add_decoder()

    @property
    def hosts(self) -> list[int]:
        return list(self._hosts)

    @property
    def decoders(self) -> list[int]:
        return list(self._decoders)

    def add_host(self) -> int:
        r = self.resources
        return self._hosts.add(
            SourceHostActor.options(num_cpus=r.host_cpus, **_memory(r.host_memory_mb)).remote(self.guard)
        )

    def add_decoder(self) -> int:
        r = self.resources
        return self._decoders.add(
            TrackerHostActor.options(
                num_cpus=r.tracker_cpus, num_gpus=r.tracker_gpus, **_memory(r.tracker_memory_mb)
            ).remote(self.model, self.redis_url, self.prefix, redis_retry_s=self.redis_retry_s)
        )

    def remove_host(self, host: int) -> None:
        _kill(self._hosts.pop(host))

    def remove_decoder(self, decoder: int) -> None:
        _kill(self._decoders.pop(decoder))

    def read(
        self, host: int, groups: Sequence[Sequence[ReadRequest]], wait_s: float
    ) -> tuple[Any, list[Any]]:
        refs = self._hosts[host].read.options(num_returns=1 + len(groups)).remote(list(groups), wait_s)
        return refs[0], list(refs[1:])

    def encode(self, frames: Any) -> Any:
        return self.encoders.submit(frames)

    def encoder_slots(self) -> tuple[int, bool]:
        return self.encoders.slots()

    def encoder_demand(self, replicas: int) -> None:
        self.encoders.demand(replicas)

    def decode(
        self,
        decoder: int,
        setups: Mapping[str, TrackSetup],
        embeddings: Any,
        parts: Mapping[str, Sequence[Any]] | None = None,
    ) -> Any:
        # The parts' replies go as arguments of their own: Ray hands the values to the call.
        names = [j for j, refs in (parts or {}).items() for _ in refs]
        refs = [r for rs in (parts or {}).values() for r in rs]
        return self._decoders[decoder].process.remote(dict(setups), embeddings, names, *refs)

    def prepare(self, image_size: int, tracks: int) -> None:
        """Every tracker host loads its model of ``image_size`` now, while sources open."""
        for decoder in self._decoders.values():
            self._remember(decoder.prepare.remote(image_size, tracks))

    def forget(self, decoder: int, job_id: str) -> None:
        self._remember(self._decoders[decoder].close.remote([job_id]))

    def control(self, decoder: int, job_id: str, cmd: str, track: int, prompt: Prompt | None) -> None:
        self._remember(self._decoders[decoder].control.remote(job_id, cmd, track, prompt))

    def release(self, job_id: str, host: int, decoder: int) -> None:
        self._remember(self._hosts[host].close.remote([job_id]))
        self._remember(self._decoders[decoder].close.remote([job_id]))

    def _remember(self, ref: Any) -> None:
        if len(self._unanswered) > 64:
            _, self._unanswered = ray.wait(self._unanswered, num_returns=len(self._unanswered), timeout=0)
        self._unanswered.append(ref)

    def wait(self, handles: Sequence[Any], timeout: float) -> set[Any]:
        refs = list(handles)
        if not refs:
            return set()
        # What is ready now (one call when the stages keep the driver busy), else the first to be.
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        if not ready:
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
        return set(ready)

    def get(self, handle: Any) -> Any:
        try:
            return ray.get(handle)
        except (RayTaskError, RayActorError) as exc:
            inner = unwrap(exc)
            if isinstance(inner, SamstreamError):
                raise inner from None
            if isinstance(inner, RayActorError):
                raise JobError("a worker died and could not be restarted") from None
            raise

    def settle(self, timeout_s: float = 2.0) -> None:
        """Wait up to ``timeout_s`` for the calls nobody waits for (commands, closes) to run."""
        if self._unanswered:
            ray.wait(
                self._unanswered, num_returns=len(self._unanswered), timeout=timeout_s, fetch_local=False
            )
            self._unanswered = []

    def shutdown(self) -> None:
        self.settle()  # let the last closes run, rather than fail them by killing
        for actor in [*self._hosts.values(), *self._decoders.values()]:
            _kill(actor)
        shutdown = getattr(self.encoders, "shutdown", None)
        if shutdown is not None:
            shutdown()


def _memory(mb: int) -> dict[str, int]:
    """Ray's ``memory`` option for ``mb`` MB (none for 0: a node type that declares no memory, as
    Ray's simulated autoscaling nodes cannot, is then not ruled out)."""
    return {"memory": mb * MB} if mb else {}


def _kill(actor: Any) -> None:
    with contextlib.suppress(Exception):  # already gone
        ray.kill(actor, no_restart=True)


def unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray error (a :class:`SamstreamError` raised in a worker)."""
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return unwrap(cause)
    return exc
